"""A job's output and errors, against a real nats-server and real worker processes.

Thread, coroutine and process-pool jobs: their prints, stderr, logging, warnings (and, in a
process-pool child, file descriptor 1) reach `Job.logs()` in order; jobs running side by side
keep their own lines; a flood is truncated with a flat worker; a failed job keeps its output and
its traceback shows the notebook's source line and none of the worker's frames.
"""

from __future__ import annotations

import asyncio
import linecache
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import output_jobs
import pytest
from polling import eventually
from test_worker import Spawn, spawn_worker  # noqa: F401  (its fixture, used through `workers`)

from naq_ipy import JobExecutionError, Queue
from naq_ipy.status.cancel import Outcome
from naq_ipy.status.output import iter_output
from naq_ipy.status.results import CANCELLED, wait_for_end
from naq_ipy.wire.connection import close_all

pytestmark = pytest.mark.slow

RESULT_WAIT_S = 30.0
WARN_LINE = next(i for i, line in enumerate(Path(output_jobs.__file__).read_text().splitlines(), 1)
                 if "warnings.warn(" in line)


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    """The clean server's URL; the test loop's pooled connections are closed afterwards."""
    yield nats_url
    await close_all()


@pytest.fixture
def workers(spawn_worker: Spawn) -> Spawn:  # noqa: F811
    """`workers(url, *args)`: a `naq worker` process, killed at teardown."""
    return spawn_worker


async def test_thread_coroutine_and_process_jobs_output_reaches_logs_in_order(url: str, workers: Spawn) -> None:
    workers(url, "threads")
    workers(url, "children", "--process-pool")
    threads, children = Queue("threads", url), Queue("children", url)
    in_thread = await threads.enqueue(output_jobs.noisy, 3, "thread")
    in_task = await threads.enqueue(output_jobs.noisy_async, 3, "task")
    in_child = await children.enqueue(output_jobs.noisy, 3, "child")
    for job in (in_thread, in_task, in_child):
        assert await job.result(RESULT_WAIT_S) == 3
    # a thread shares the worker's file descriptors: only a process-pool child's fd 1 is the job's own
    for job, tag, fd, warns in ((in_thread, "thread", False, True), (in_task, "task", False, False),
                                (in_child, "child", True, True)):
        out, err = await output_by_stream(url, job.job_id)
        assert out == [f"{tag} {i}" for i in range(3)] + ([f"{tag} from fd 1"] if fd else []), tag
        warned = [f"{output_jobs.__file__}:{WARN_LINE}: UserWarning: {tag} warned", '  warnings.warn(f"{tag} warned"'
                  ', UserWarning, stacklevel=1)'] if warns else []
        assert err == [f"{tag} to stderr", f"WARNING:noisy:{tag} logged", *warned], tag


async def output_by_stream(url: str, job_id: str) -> tuple[list[str], list[str]]:
    """The job's stdout lines and stderr lines (each in order; stdout and stderr are separate streams)."""
    text = {"stdout": "", "stderr": ""}
    async for chunk in iter_output(job_id, url=url):
        text[chunk.stream] += chunk.text
    return text["stdout"].splitlines(), text["stderr"].splitlines()


async def test_two_jobs_printing_at_once_in_one_worker_keep_their_own_lines(url: str, workers: Spawn) -> None:
    workers(url, "-c", "4")
    queue = Queue("default", url)
    first, second = await queue.enqueue_many([(output_jobs.chatter, (tag, 200, 0.002)) for tag in ("A", "B")])
    assert [await first.result(RESULT_WAIT_S), await second.result(RESULT_WAIT_S)] == [200, 200]
    a, b = await first.status(), await second.status()
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # they did run side by side
    assert (await first.logs()).splitlines() == [f"A {i}" for i in range(200)]
    assert (await second.logs()).splitlines() == [f"B {i}" for i in range(200)]


def peak_rss_kb(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmHWM"].split()[0])


async def test_a_job_printing_fifty_mb_finishes_truncated_and_the_worker_stays_flat(
        url: str, workers: Spawn) -> None:
    proc = workers(url)
    queue = Queue("default", url)
    assert await (await queue.enqueue(output_jobs.quiet)).result(RESULT_WAIT_S) is None
    before_kb = peak_rss_kb(proc.pid)
    job = await queue.enqueue(output_jobs.flood, 50)
    assert await job.result(RESULT_WAIT_S * 4) == 50
    logs = await job.logs()
    assert logs.startswith("x" * 999 + "\n") and logs.rstrip().endswith("the rest of this job's output was dropped]")
    assert len(logs) < 1024 * 1024 + 200
    assert peak_rss_kb(proc.pid) - before_kb < 20 * 1024  # 50 MB went by; far less was ever held


NOTEBOOK_CELL = '''\
def boom(x):
    print("about to fail", x)
    raise ValueError(f"bad {x}")
'''


def define_in_notebook(source: str, filename: str) -> dict[str, object]:
    """Define `source` as IPython does for a cell: compiled under a name only linecache knows."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("pool", ["threads", "process"])
async def test_a_failed_notebook_function_keeps_its_output_and_shows_its_source_line(
        url: str, workers: Spawn, pool: str) -> None:
    workers(url, *(["--process-pool"] if pool == "process" else []))
    cell = f"<ipython-input-12-{pool}>"
    boom = define_in_notebook(NOTEBOOK_CELL, cell)["boom"]
    job = await Queue("default", url).enqueue(boom, 7)
    with pytest.raises(JobExecutionError) as failure:
        await job.result(RESULT_WAIT_S)
    remote = failure.value.remote_traceback or ""
    assert f'File "{cell}", line 3, in boom\n    raise ValueError(f"bad {{x}}")\n' in remote
    assert remote.rstrip().endswith("ValueError: bad 7")
    assert "frames of the naq worker hidden" in remote
    for internal in ("executor.py", "concurrent/futures", "asyncio"):
        assert internal not in remote
    assert await job.logs() == "about to fail 7\n"
    rendered = failure.value._render_traceback_()
    assert rendered[0] == f"job {job.job_id} failed on a worker:" and rendered[-1] == "ValueError: bad 7"


def naq_logs(url: str, job_id: str, *args: str) -> subprocess.Popen[str]:
    """`naq logs ID ...` as a process, its stdout and stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "naq_ipy.cli", "logs", job_id, "--url", url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_the_naq_logs_command_prints_a_jobs_output_and_follows_a_running_one(url: str, workers: Spawn) -> None:
    workers(url)
    queue = Queue("default", url)
    done = await queue.enqueue(output_jobs.noisy_async, 2, "cli")
    assert await done.result(RESULT_WAIT_S) == 2
    printed = await asyncio.to_thread(naq_logs(url, done.job_id).communicate, timeout=RESULT_WAIT_S)
    assert printed == ("cli 0\ncli 1\n", "cli to stderr\nWARNING:noisy:cli logged\n")
    running = await queue.enqueue(output_jobs.chatter, "slow", 20, 0.05)
    follower = naq_logs(url, running.job_id, "--follow")
    out, err = await asyncio.to_thread(follower.communicate, timeout=RESULT_WAIT_S)
    assert (out, err, follower.returncode) == ("".join(f"slow {i}\n" for i in range(20)), "", 0)


async def test_a_thread_printing_past_its_timeout_keeps_its_output_until_then_and_the_rest_is_dropped(
        url: str, workers: Spawn) -> None:
    proc = workers(url)
    job = await Queue("default", url).enqueue(output_jobs.chatter, "late", 150, 0.02, timeout=0.5)
    with pytest.raises(JobExecutionError, match="timeout"):
        await job.result(RESULT_WAIT_S)
    lines = (await job.logs()).splitlines()
    assert lines and lines == [f"late {i}" for i in range(len(lines))] and len(lines) < 150
    log = proc.log_path  # type: ignore[attr-defined]
    await eventually(lambda: f"job {job.job_id}: " in log.read_text() and "overrunning thread dropped" in
                     log.read_text(), timeout_s=10, what="the overrun's later output dropped")
    assert "late 149" not in log.read_text()  # nor written to the worker's log


async def test_a_cancelled_thread_or_coroutine_job_keeps_what_it_printed(url: str, workers: Spawn,
                                                                       tmp_path: Path) -> None:
    """A running job cancelled (JobCancelled in its thread, its task cancelled) keeps its output; no other job's."""
    workers(url, "-c", "2")
    queue = Queue("default", url)
    marks = {tag: tmp_path / f"{tag}.txt" for tag in ("thread", "task")}
    spinning = await queue.enqueue(output_jobs.print_then_spin, "thread", str(marks["thread"]))
    waiting = await queue.enqueue(output_jobs.print_then_wait, "task", str(marks["task"]))
    for job, tag in ((spinning, "thread"), (waiting, "task")):
        await eventually(lambda tag=tag: marks[tag].exists(), RESULT_WAIT_S, f"the {tag} job to print")
        assert await job.cancel() is Outcome.CANCELLED
        assert (await wait_for_end(job.job_id, RESULT_WAIT_S, url)).status == CANCELLED
        assert (await job.logs()).splitlines() == [f"{tag} before the cancel"]
