"""The magics in a real InteractiveShell (history off) against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from magic_shell import SCHEDULE_LINE, RaisingShell, pid_gone, schedules, stream_messages

import naq_ipy.client.bridge
from naq_ipy import Job, Queue
from naq_ipy.client.cells import CellFunction
from naq_ipy.ipython import register_closable
from naq_ipy.ipython.commands import split_words
from naq_ipy.local.processes import PROCESSES
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.server import free_port

# --- loading ---------------------------------------------------------------------------------

def test_load_twice_says_already_loaded(ip: RaisingShell, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"naq_enqueue", "naq"} <= set(ip.magics_manager.magics["line"])
    assert "naq_schedule" in ip.magics_manager.magics["cell"]
    ip.run_line_magic("load_ext", "naq_ipy")
    from naq_ipy.ipython import load_ipython_extension

    load_ipython_extension(ip)
    assert capsys.readouterr().out.count("already loaded") == 2
    assert sum(type(c).__name__ == "NaqMagics" for c in ip.configurables) == 1


def test_unload_removes_magics_closes_panels_and_stops_bridge(ip: RaisingShell) -> None:
    ip.run_line_magic("naq_enqueue", "add(1)")
    assert naq_ipy.client.bridge._bridge.thread is not None
    closed: list[str] = []

    class Watch:
        def close(self) -> None:
            closed.append("watch")

    watch = Watch()  # the registry is weak: a live panel is referenced by its display
    register_closable(watch)
    ip.run_line_magic("unload_ext", "naq_ipy")
    assert not {"naq_enqueue", "naq"} & set(ip.magics_manager.magics["line"])
    assert "naq_schedule" not in ip.magics_manager.magics["cell"]
    assert closed == ["watch"]
    assert naq_ipy.client.bridge._bridge.thread is None
    assert not any(type(c).__name__ == "NaqMagics" for c in ip.configurables)
    with pytest.raises(UsageError, match="not found"):
        ip.run_line_magic("naq_enqueue", "add(1)")
    ip.run_line_magic("load_ext", "naq_ipy")  # the fixture unloads once more


def test_reload_ext_keeps_one_working_instance(ip: RaisingShell, nats_url: str) -> None:
    ip.run_line_magic("reload_ext", "naq_ipy")
    assert sum(type(c).__name__ == "NaqMagics" for c in ip.configurables) == 1
    assert isinstance(ip.run_line_magic("naq_enqueue", "add(1)"), Job)
    assert stream_messages(nats_url) == 1


def test_config_traits(ip: RaisingShell, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    magics = ip.magics_manager.registry["NaqMagics"]
    ip.run_line_magic("config", "NaqMagics.timezone = 'Europe/Berlin'")
    assert magics.timezone == "Europe/Berlin"
    ip.run_line_magic("config", "NaqMagics.loop_mode = 'nest'")
    assert naq_ipy.client.bridge.get_loop_mode() == "nest"
    ip.run_line_magic("config", "NaqMagics.loop_mode = 'thread'")
    assert naq_ipy.client.bridge.get_loop_mode() == "thread"
    with pytest.raises(Exception, match="unknown time zone"):
        magics.timezone = "Mars/Olympus"
    with pytest.raises(Exception, match="invalid queue name"):
        magics.default_queue = "a.b"
    monkeypatch.setenv("NAQ_URL", "nats://example.invalid:4333")
    assert type(magics)(shell=None).url == "nats://example.invalid:4333"


def test_profile_config_applies_at_load(bare_shell: Any, nats_url: str) -> None:
    try:
        shell = bare_shell(url=nats_url, loop_mode="nest", timezone="Europe/Berlin", default_queue="batch")
        magics = shell.magics_manager.registry["NaqMagics"]
        assert naq_ipy.client.bridge.get_loop_mode() == "nest"
        assert (magics.timezone, magics.default_queue) == ("Europe/Berlin", "batch")
        magics.loop_mode = "thread"  # nest mode is for kernels, where a loop is running
        shell.run_cell("def add(a):\n    return a")
        assert shell.run_line_magic("naq_enqueue", "add(1)").queue_name == "batch"
        assert Queue("batch", nats_url).purge_sync() == 1
    finally:
        naq_ipy.client.bridge.set_loop_mode("thread")


# --- %naq_enqueue ----------------------------------------------------------------------------

def test_split_words_keeps_calls_whole() -> None:
    line = '-q a --at "2026-11-28 09:00" f(1, "x y", [2, 3]) '
    assert [w for _, w in split_words(line)] == ["-q", "a", "--at", "2026-11-28 09:00", 'f(1, "x y", [2, 3])']
    assert line[split_words(line)[-1][0]:].strip() == 'f(1, "x y", [2, 3])'


def test_enqueue_evaluates_call_and_options(ip: RaisingShell, nats_url: str) -> None:
    ip.run_cell("args = [1]\nkw = {'b': 3}\nclass C:\n    def m(self, s, k=None):\n        return s\nobj = C()")
    job = ip.run_line_magic(
        "naq_enqueue", "-q q1 --retries 2 --retry-delay 5,30 --timeout 1m -o j add(*args, **kw)")
    assert (job.queue_name, job.args, job.kwargs) == ("q1", (1,), {"b": 3})
    assert (job.max_retries, job.retry_delay, job.timeout) == (2, (5.0, 30.0), 60.0)
    assert ip.user_ns["j"] is job
    method_job = ip.run_line_magic("naq_enqueue", "--retry-delay exp:2:300 obj.m('x  y', k=[1, 2])")
    assert (method_job.args, method_job.kwargs) == (("x  y",), {"k": [1, 2]})
    assert method_job.retry_delay.base_s == 2.0
    dependent = ip.run_line_magic("naq_enqueue", "--depends-on j,abc123 add(2)")
    assert dependent.depends_on == (job.job_id, "abc123")
    assert Queue("q1", nats_url).purge_sync() == 1
    assert stream_messages(nats_url) == 2


def test_enqueue_at_reads_naive_times_in_configured_zone(ip: RaisingShell, nats_url: str) -> None:
    ip.run_line_magic("config", "NaqMagics.timezone = 'Europe/Berlin'")
    job = ip.run_line_magic("naq_enqueue", "--at 2030-01-01T10:00 add(1)")
    record = ScheduledJobManager(nats_url)
    stored = naq_ipy.client.bridge.run_sync(record.get(job.job_id))
    assert stored.next_run == datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    later = ip.run_line_magic("naq_enqueue", "--in 90s add(1)")
    stored = naq_ipy.client.bridge.run_sync(record.get(later.job_id))
    assert abs(stored.next_run_utc - (time.time() + 90)) < 5
    assert stream_messages(nats_url) == 0


ENQUEUE_MISTAKES = [
    ("--bogus add(1)", "unrecognized arguments: --bogus"),
    ("--in 5zz add(1)", "invalid duration '5zz'"),
    ("--at tomorrow add(1)", "invalid time 'tomorrow'"),
    ("--at 2030-01-01 --in 5s add(1)", "use only one of --at and --in"),
    ("--retry-delay exp:a add(1)", "invalid retry delay"),
    ("--retries -1 add(1)", "max_retries must be an integer >= 0"),
    ("--timeout 0 add(1)", "timeout must be a positive number"),
    ("--wait -1 add(1)", "--wait takes a number of seconds > 0"),
    ("-o 1x add(1)", "-o/--out takes a variable name"),
    ("-q a.b add(1)", "invalid queue name 'a.b'"),
    ("--depends-on x add(1)", "--depends-on x: expected job ids or Jobs"),
    ("", "no CALL given"),
    ("add(", "cannot parse CALL"),
    ("x", "CALL must be one call"),
    ("add(1) + 1", "CALL must be one call"),
    ("nope(1)", "name 'nope' is not defined in the notebook"),
    ("add(nope)", "name 'nope' is not defined in the notebook"),
    ("x(1)", r"x is not callable \(its type is int\)"),
    ("add(lock)", r"cannot pickle argument 0 \(lock\)"),
    ("add(1, b=lock)", r"cannot pickle keyword argument 'b' \(lock\)"),
    ("uses_lock()", r"cannot pickle function __main__.uses_lock"),
]


@pytest.mark.parametrize(("line", "message"), ENQUEUE_MISTAKES, ids=[m[0] or "empty" for m in ENQUEUE_MISTAKES])
def test_enqueue_mistakes_are_usage_errors_and_write_nothing(ip: RaisingShell, nats_url: str, line: str,
                                                            message: str) -> None:
    ip.run_cell("import threading\nlock = threading.Lock()\ndef uses_lock():\n    return lock")
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("naq_enqueue", line)
    assert stream_messages(nats_url) == 0
    assert schedules(nats_url) == []


def test_wait_timeout_returns_the_job_and_says_so(ip: RaisingShell, capsys: pytest.CaptureFixture[str]) -> None:
    job = ip.run_line_magic("naq_enqueue", "-q idle --wait 0.3 add(1)")
    assert isinstance(job, Job)
    assert f"job {job.job_id} has not ended yet" in capsys.readouterr().out


def test_ctrl_c_stops_waiting_only(ip: RaisingShell, capsys: pytest.CaptureFixture[str], nats_url: str) -> None:
    ip.run_line_magic("naq_enqueue", "-q idle add(0)")  # connection and stream exist: the next call only waits
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        job = ip.run_line_magic("naq_enqueue", "-q idle --wait add(1)")
    finally:
        timer.cancel()
    assert isinstance(job, Job)
    assert f"stopped waiting for job {job.job_id}: it keeps running" in capsys.readouterr().out
    assert stream_messages(nats_url) == 2
    assert ip.run_line_magic("naq_enqueue", "--wait 0.2 -q idle add(2)").queue_name == "idle"  # the bridge still works


def test_run_sync_returns_a_timeout_raised_by_the_coroutine() -> None:
    async def times_out() -> None:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        naq_ipy.client.bridge.run_sync(times_out(), timeout_s=2)


def test_remote_url_is_never_started_and_errors_name_it(bare_shell: Any) -> None:
    shell = bare_shell(url="nats://user:secret@nonexistent.invalid:4222")
    shell.run_cell("def add(a):\n    return a")
    with pytest.raises(UsageError, match=r"nats://\*\*\*@nonexistent.invalid:4222 not reachable") as info:
        shell.run_line_magic("naq_enqueue", "add(1)")
    assert "secret" not in str(info.value)
    assert PROCESSES.server is None


def test_local_url_without_auto_start_reports_the_url(bare_shell: Any) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    shell = bare_shell(url=url, auto_start=False)
    shell.run_cell("def add(a):\n    return a")
    with pytest.raises(UsageError, match=f"{url} not reachable"):
        shell.run_line_magic("naq_enqueue", "add(1)")
    assert PROCESSES.server is None


def test_zero_config_starts_a_local_server_once(bare_shell: Any, isolated: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    shell = bare_shell(url=url)
    shell.run_cell("def add(a):\n    return a")
    shell.run_line_magic("naq_enqueue", "add(1)")
    shell.run_line_magic("naq_enqueue", "add(2)")
    out = capsys.readouterr().out
    assert out.count("started a local NATS server") == 1
    server = PROCESSES.server
    assert server is not None and server.url == url
    assert str(isolated / "data" / "naq_ipy" / "nats") in out
    assert stream_messages(url) == 2
    shell.run_line_magic("unload_ext", "naq_ipy")
    assert PROCESSES.server is None and pid_gone(server.pid or 0)
    shell.run_line_magic("load_ext", "naq_ipy")


def test_taken_local_port_starts_the_server_elsewhere(bare_shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        url = f"nats://127.0.0.1:{squatter.getsockname()[1]}"
        shell = bare_shell(url=url)
        shell.run_cell("def add(a):\n    return a")
        job = shell.run_line_magic("naq_enqueue", "add(1)")
    server = PROCESSES.server
    assert server is not None and server.url != url
    assert f"started a local NATS server at {server.url} for {url}" in capsys.readouterr().out
    assert stream_messages(server.url) == 1 and job.url.url == server.url


# --- %%naq_schedule --------------------------------------------------------------------------

def test_schedule_creates_then_updates_one_entry(ip: RaisingShell, nats_url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell_magic("naq_schedule", "--interval 1s --repeat 3 tick", "x * 10")
    first = SCHEDULE_LINE.search(capsys.readouterr().out)
    assert first is not None and first.group(1, 2, 4) == ("created", "tick", "every 1 s, 3 runs")
    ip.run_cell_magic("naq_schedule", "--interval 5m -q other --retries 1 --paused tick", "x + 1")
    second = SCHEDULE_LINE.search(capsys.readouterr().out)
    assert second is not None and second.group(1, 3, 4) == ("updated", " (paused)", "every 5 min")
    [record] = schedules(nats_url)
    assert (record.key, record.interval_s, record.repeat, record.queue_name) == ("tick", 300.0, None, "other")
    assert record.paused and record.job().max_retries == 1
    assert record.job().function() == 6
    assert stream_messages(nats_url) == 0


def test_schedule_captures_notebook_values_now(ip: RaisingShell, nats_url: str) -> None:
    ip.run_cell("import math as m\nfrom os import path\nscale = 3\ndef double(v):\n    return 2 * v")
    body = "total = 0\nfor i in range(3):\n    total += double(i) * scale\nlabel = f'{total}' + '$scale'\n" \
           "[m.sqrt(16), path.basename('/a/b'), label, len([1])]"
    ip.run_cell_magic("naq_schedule", "--interval 1h captured", body)
    ip.run_cell("scale = 100")
    [record] = schedules(nats_url)
    func = record.job().function
    assert isinstance(func, CellFunction)
    assert set(func.captured) == {"double", "scale"} and func.imports == {"m": "math", "path": "posixpath"}
    assert func() == [4.0, "b", "18$scale", 1]
    assert record.func_name == "%%naq_schedule.captured"


def test_schedule_timing_forms(ip: RaisingShell, nats_url: str) -> None:
    ip.run_cell_magic("naq_schedule", "--cron '0 6 * * *' --tz Europe/Berlin daily", "1")
    ip.run_cell_magic("naq_schedule", "--at 2030-07-01T08:00 --tz Europe/Berlin once", "2")
    ip.run_cell_magic("naq_schedule", "--in 1h --misfire skip later", "3")
    by_key = {r.key: r for r in schedules(nats_url)}
    daily = by_key["daily"]
    assert (daily.schedule_type, daily.cron, daily.tz) == ("cron", "0 6 * * *", "Europe/Berlin")
    assert daily.next_run.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).hour == 6
    assert by_key["once"].next_run == datetime(2030, 7, 1, 6, 0, tzinfo=UTC)
    assert abs(by_key["later"].next_run_utc - time.time() - 3600) < 5 and by_key["later"].misfire == "skip"


SCHEDULE_MISTAKES = [
    ("--cron '* * *' t", "1", "invalid cron expression '\\* \\* \\*'"),
    ("--cron '* * * * *' --interval 5s t", "1", "use only one of --cron and --interval"),
    ("t", "1", "say when: give --cron, --interval, --at or --in"),
    ("--interval 0s t", "1", "interval must be a duration of 0.1 s"),
    ("--interval soon t", "1", "invalid duration 'soon'"),
    ("--cron '* * * * *' --tz Mars/X t", "1", "unknown time zone 'Mars/X'"),
    ("--interval 5s --tz Europe/Berlin t", "1", "--tz applies to --cron and --at only"),
    ("--interval 5s --misfire never t", "1", "invalid choice: 'never'"),
    ("--interval 5s --repeat 0 t", "1", "repeat must be an integer >= 1"),
    ("--interval 5s 'a b'", "1", "invalid schedule name 'a b'"),
    ("--interval 5s --bogus t", "1", "unrecognized arguments: --bogus"),
    ("--interval 5s t", "nope + 1", "name 'nope' is used in the cell but not defined in the notebook"),
    ("--interval 5s t", "%time 1", "IPython magics and shell commands"),
    ("--interval 5s t", "!ls", "IPython magics and shell commands"),
    ("--interval 5s t", "1 +", "syntax error in the cell body, line 1"),
    ("--interval 5s t", "await something()", "syntax error in the cell body, line 1: 'await' outside function"),
    ("--interval 5s t", "\n# only a comment\n", "the cell body is empty"),
    ("--interval 5s t", "lock.acquire()", r"cannot pickle notebook variable 'lock' \(lock\)"),
]


@pytest.mark.parametrize(("line", "body", "message"), SCHEDULE_MISTAKES,
                         ids=[f"{m[0]}|{m[1]}" for m in SCHEDULE_MISTAKES])
def test_schedule_mistakes_are_usage_errors_and_write_nothing(ip: RaisingShell, nats_url: str, line: str,
                                                              body: str, message: str) -> None:
    ip.run_cell("import threading\nlock = threading.Lock()")
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("naq_schedule", line, body)
    assert schedules(nats_url) == []


def test_schedule_body_is_not_var_expanded(ip: RaisingShell, nats_url: str) -> None:
    ip.run_cell("%%naq_schedule --interval 1h raw\n'{x}' + '$x'")
    [record] = schedules(nats_url)
    assert record.job().function() == "{x}$x"


