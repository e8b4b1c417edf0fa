"""`%naq SUBCOMMAND` in a real InteractiveShell against a real nats-server."""

from __future__ import annotations

import re
from typing import Any

import pytest
from IPython.core.error import UsageError
from magic_shell import RaisingShell, pid_gone, schedules, stream_messages

from naq_ipy.local.processes import PROCESSES
from naq_ipy.wire.server import free_port

# --- %naq ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "message"), [
    ("", "a subcommand is needed; use one of status, server"),
    ("launch", "unknown subcommand 'launch'"),
    ("worker jump", "invalid choice: 'jump'"),
    ("pause nosuch", "no scheduled job named 'nosuch'"),
    ("run nosuch", "no scheduled job named 'nosuch'"),
    ("wait x", "'x' must hold a Job or a list of Jobs"),
    ("cancel nosuch", "no job or schedule named 'nosuch'"),
])
def test_naq_subcommand_mistakes(ip: RaisingShell, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("naq", line)


def test_pause_resume_cancel_list(ip: RaisingShell, nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell_magic("naq_schedule", "--interval 1h --paused nightly", "x")
    ip.run_line_magic("naq", "resume nightly")
    assert not schedules(nats_url)[0].paused
    ip.run_line_magic("naq", "pause nightly")
    assert schedules(nats_url)[0].paused
    table = ip.run_line_magic("naq", "list")
    assert "nightly" in repr(table) and "every 1 h" in repr(table) and "<table" in table._repr_html_()
    ip.run_line_magic("naq", "cancel nightly")
    assert schedules(nats_url) == []
    assert "no scheduled jobs" in repr(ip.run_line_magic("naq", "list"))
    out = capsys.readouterr().out
    assert "resumed schedule 'nightly'" in out and "paused schedule 'nightly'" in out
    assert "cancelled schedule 'nightly'" in out


def test_cancel_jobs_by_variable_and_by_id(ip: RaisingShell, nats_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`%naq cancel VAR` takes a Job or a list of Jobs, `%naq cancel ID` an id; each says what happened (no worker
    runs: the cancels are requested, and the statuses show them)."""
    ip.run_cell("one = %naq_enqueue add(1)\ntwo = %naq_enqueue add(2)\nthree = %naq_enqueue add(3)\n"
                "many = [two, three]")
    ip.run_line_magic("naq", "cancel one")
    ip.run_line_magic("naq", "cancel many")
    ip.run_line_magic("naq", f"cancel {ip.user_ns['one'].job_id}")
    out = capsys.readouterr().out
    jobs = [ip.user_ns["one"], *ip.user_ns["many"]]
    assert out.count(f"{jobs[0].job_id}: cancel requested") == 2
    assert f"{jobs[1].job_id}: cancel requested" in out and f"{jobs[2].job_id}: cancel requested" in out
    assert {job.status_sync().status for job in jobs} == {"cancelled"}
    ip.user_ns["n"] = 5
    with pytest.raises(UsageError, match="'n' must hold a Job or a list of Jobs"):
        ip.run_line_magic("naq", "cancel n")


def test_cli_cancel_prints_each_job_and_exits_by_outcome(ip: RaisingShell, nats_url: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`naq cancel ID...`: 0 when all were cancelled (or requested: no worker runs), 2 when an id is unknown."""
    from naq_ipy.cli import main as cli

    job = ip.run_line_magic("naq_enqueue", "add(1)")
    assert cli.main(["cancel", "--url", nats_url, job.job_id]) == 0
    assert cli.main(["cancel", "--url", nats_url, job.job_id, "nosuch"]) == 2
    out = capsys.readouterr().out
    assert out.count(f"{job.job_id}: cancel requested") == 2 and "nosuch: not found" in out


def test_run_now_fires_once(ip: RaisingShell, nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell_magic("naq_schedule", "--interval 1h --run-now hourly", "x")
    assert re.search(r"fired 'hourly' now as job hourly\.now-\d+", capsys.readouterr().out)
    ip.run_line_magic("naq", "run hourly")
    assert stream_messages(nats_url) == 2
    assert schedules(nats_url)[0].run_count == 0


def test_status(ip: RaisingShell, nats_url: str) -> None:
    ip.run_line_magic("naq_enqueue", "add(1)")
    text = repr(ip.run_line_magic("naq", "status"))
    assert f"url               {nats_url}" in text
    assert "server            reachable" in text and "jobs waiting      1" in text
    assert "workers alive     0" in text
    ip.run_line_magic("config", f"NaqMagics.url = 'nats://127.0.0.1:{free_port()}'")
    assert "not reachable" in repr(ip.run_line_magic("naq", "status"))
    assert PROCESSES.server is None


@pytest.mark.slow
def test_workers_run_jobs_and_stop_without_leftovers(ip: RaisingShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("def boom():\n    raise ValueError('kaput')")
    ip.run_line_magic("naq", "worker start -q default other -c 2")
    ip.run_line_magic("naq", "scheduler start")
    assert ip.run_line_magic("naq_enqueue", "--wait 20 add(x, b=2)") == 7
    assert ip.run_line_magic("naq_enqueue", "-q other --wait add(1)") == 2
    with pytest.raises(Exception, match="kaput") as failure:
        ip.run_line_magic("naq_enqueue", "--wait 20 boom()")
    assert type(failure.value).__name__ == "JobExecutionError" and "Remote traceback" in str(failure.value)
    ip.run_line_magic("naq_enqueue", "-o j1 add(1)")
    ip.run_line_magic("naq_enqueue", "-o j2 add(2)")
    ip.run_cell("both = [j1, j2]")
    assert ip.run_line_magic("naq", "wait both") == [2, 3]
    assert ip.run_line_magic("naq", "result j2") == 3
    assert ip.run_line_magic("naq", f"result {ip.user_ns['j1'].job_id} --wait 5") == 2
    status = repr(ip.run_line_magic("naq", "status"))
    assert "workers alive     1" in status and "this kernel       1 worker(s), 1 scheduler(s)" in status
    assert "-c 2 -- default other" in repr(ip.run_line_magic("naq", "worker status"))  # names after --
    pids = [c.pid for c in PROCESSES.children]
    ip.run_line_magic("naq", "worker stop")
    ip.run_line_magic("naq", "scheduler stop")
    assert all(pid_gone(pid) for pid in pids) and PROCESSES.children == []
    out = capsys.readouterr().out
    assert re.search(r"started worker pid \d+ on default, other \(log .*worker-\d+\.log\)", out)
    assert "stopped 1 worker process(es)" in out and "stopped 1 scheduler process(es)" in out


def test_panels_are_closed_at_unload(ip: RaisingShell) -> None:
    panels = [ip.run_line_magic("naq", "jobs"), ip.run_line_magic("naq", "monitor")]
    assert [type(p).__name__ for p in panels] == ["ScheduledJobsPanel", "QueueMonitor"]
    ip.run_line_magic("unload_ext", "naq_ipy")
    assert all(p.closed for p in panels)
    ip.run_line_magic("load_ext", "naq_ipy")


def test_server_start_status_stop(bare_shell: Any, nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    shell = bare_shell(url=url, auto_start=False)
    assert "reachable  no" in repr(shell.run_line_magic("naq", "server status"))
    shell.run_line_magic("naq", "server start")
    shell.run_line_magic("naq", "server start")
    server = PROCESSES.server
    assert server is not None and server.url == url
    status = repr(shell.run_line_magic("naq", "server status"))
    assert "reachable   yes" in status and f"this kernel (pid {server.pid})" in status
    shell.run_cell("def add(a):\n    return a")
    shell.run_line_magic("naq_enqueue", "add(1)")
    assert stream_messages(url) == 1
    shell.run_line_magic("naq", "server stop")
    shell.run_line_magic("naq", "server stop")
    assert pid_gone(server.pid or 0)
    shell.run_line_magic("config", f"NaqMagics.url = {nats_url!r}")
    shell.run_line_magic("naq", "server start")
    out = capsys.readouterr().out
    assert out.count("started a local NATS server") == 1 and "this kernel already runs a NATS server" in out
    assert f"stopped the NATS server at {url}" in out and "this kernel runs no NATS server" in out
    assert f"a NATS server already answers at {nats_url}; not starting another" in out
    assert "this kernel started no worker" in repr(shell.run_line_magic("naq", "worker status"))

