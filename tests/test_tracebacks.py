"""Remote tracebacks that read like local ones, without a server: cell sources shipped, frames hidden, rendering."""

from __future__ import annotations

import asyncio
import linecache
import pickle
import re
import traceback

import cloudpickle
import jobs

from naq_ipy.client.job import Job
from naq_ipy.client.sources import function_sources
from naq_ipy.errors import JobExecutionError
from naq_ipy.worker.executor import Executor, JobFailure
from naq_ipy.worker.tracebacks import register_sources

CELL = "<ipython-input-41-feedbeef>"
HELPER_CELL = "<ipython-input-40-cafe>"


def in_cell(source: str, filename: str, namespace: dict[str, object]) -> None:
    """Run `source` as IPython runs a cell: compiled under a file name only linecache knows."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)


def notebook() -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "__main__"}
    in_cell("def helper(x):\n    return 10 / x\n", HELPER_CELL, namespace)
    in_cell("import math\n\ndef boom(x):\n    y = x - 1\n    return helper(y)\n", CELL, namespace)
    return namespace


def test_a_cell_function_ships_its_cell_and_the_cells_of_the_notebook_functions_it_calls() -> None:
    boom = notebook()["boom"]
    sources = function_sources(boom)
    assert sources is not None
    assert sources["files"] == {CELL: linecache.cache[CELL][2], HELPER_CELL: linecache.cache[HELPER_CELL][2]}
    assert sources["code"] == {"boom:3": CELL, "helper:1": HELPER_CELL}
    assert function_sources(jobs.add) is None  # an importable function: its file is on the worker too
    job = Job(boom, (1,))
    assert Job.deserialize(job.serialize()).sources == sources


def test_the_worker_gives_shipped_code_its_cell_back_and_the_traceback_shows_the_lines() -> None:
    boom = notebook()["boom"]
    sources = function_sources(boom)
    shipped = pickle.loads(cloudpickle.dumps(boom))  # what a worker unpickles: code named <dynamic-code>
    for filename in (CELL, HELPER_CELL):
        del linecache.cache[filename]  # the worker's process never saw the cells
    assert shipped.__code__.co_filename == "<dynamic-code>"
    register_sources(sources, shipped)
    try:
        shipped(1)
    except ZeroDivisionError as e:
        text = "".join(traceback.format_exception(e))
    assert f'File "{CELL}", line 5, in boom\n    return helper(y)\n' in text
    assert f'File "{HELPER_CELL}", line 2, in helper\n    return 10 / x\n' in text


def raises() -> None:
    raise ValueError("inner")


def test_the_workers_own_leading_frames_are_hidden_and_counted() -> None:
    executor = Executor(1)
    job = Job(raises)
    try:
        asyncio.run(executor.run(job, job.serialize()))
    except JobFailure as failure:
        text = failure.traceback
    finally:
        executor.shutdown()
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert re.fullmatch(r"  \[\d+ frames of the naq worker hidden\]", lines[1])
    assert "concurrent/futures" not in text and "executor.py" not in text
    assert 'in raises\n    raise ValueError("inner")' in text


def test_a_job_error_renders_as_its_remote_traceback_unless_local_frames_are_wanted() -> None:
    remote = 'Traceback (most recent call last):\n  File "<cell>", line 1\nValueError: x\n'
    error = JobExecutionError("job j1 failed: ValueError: x", job_id="j1", traceback=remote)
    assert error._render_traceback_() == ["job j1 failed on a worker:", "Traceback (most recent call last):",
                                          '  File "<cell>", line 1', "ValueError: x"]
    assert not hasattr(JobExecutionError("no traceback"), "_render_traceback_")
    JobExecutionError.show_local_frames = staticmethod(lambda: True)  # type: ignore[method-assign]
    try:
        assert not hasattr(error, "_render_traceback_")  # IPython then shows its own full traceback
    finally:
        JobExecutionError.show_local_frames = staticmethod(lambda: False)  # type: ignore[method-assign]
