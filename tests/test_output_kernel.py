"""A remote job that feels local, in a real Jupyter kernel (nbclient) with a real nats-server and worker.

`%naq_enqueue --wait` writes the job's prints into the cell before its result; a failure shows the
remote traceback with the notebook's source line and no kernel-side frames (all of them under
`%xmode Verbose`); `%naq logs`; a job on a queue no worker serves says so until one appears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_magics_kernel import kernel_env, result, run_notebook, text  # noqa: F401  (kernel_env: a fixture)

pytestmark = pytest.mark.slow

NOTEBOOK_FUNCTIONS = '''\
import logging, sys, time
from naq_ipy.ipython.livejob import LiveJob

def noisy(n):
    for i in range(n):
        print("line", i)
    print("oops", file=sys.stderr)
    logging.warning("careful")
    return n * 10

def boom(x):
    print("about to fail")
    raise ValueError(f"bad {x}")

def until(check, within_s=20):
    deadline = time.time() + within_s
    while not check() and time.time() < deadline:
        time.sleep(0.1)
    return check()
'''

KERNEL_FRAMES = ("magics.py", "commands.py", "livejob.py", "livewait.py", "concurrent/futures", "results.py",
                 "executor.py")


def streams(cell: Any) -> list[tuple[str, str]]:
    """(name, text) of the cell's stream outputs, in order."""
    return [(out.name, out.text) for out in cell.outputs if out.output_type == "stream"]


def test_a_remote_job_feels_local_in_a_kernel(kernel_env: Path) -> None:  # noqa: F811
    cells = run_notebook([
        NOTEBOOK_FUNCTIONS,
        "%naq worker start -c 2",
        "%naq_enqueue --wait 30 noisy(3)",
        "# raises\n%naq_enqueue --wait 30 boom(7)",
        "j = %naq_enqueue noisy(2)\nj.result_sync(30)",
        "%naq logs j",
        "%xmode Verbose",
        "# raises\n%naq_enqueue --wait 30 boom(8)",
        "%xmode Context",
        "idle = %naq_enqueue -q nobody noisy(1)\nlive = LiveJob(idle)\nuntil(lambda: live.hint is not None)\n"
        "live.hint",
        "%naq result idle",
        "%naq worker start -q nobody",
        "idle.result_sync(30), until(lambda: live.hint is None)",
        "%%naq_schedule --interval 1h --paused cellfail\nprint('from the cell')\nx = 1\nx / 0",
        "from naq_ipy.schedules.scheduler import run_now\nfrom naq_ipy.status.results import fetch_result\n"
        "run_id = await run_now('cellfail', get_ipython().find_magic('naq').__self__.engine.url())",
        "# raises\nawait fetch_result(run_id, 30, get_ipython().find_magic('naq').__self__.engine.url())",
    ], kernel_env)
    waited = cells[2]
    kinds = [out.output_type for out in waited.outputs]
    assert kinds.index("stream") < kinds.index("execute_result") and result(waited) == "30"
    out = "".join(t for name, t in streams(waited) if name == "stdout")
    err = "".join(t for name, t in streams(waited) if name == "stderr")
    assert out == "line 0\nline 1\nline 2\n"
    assert err == "oops\nWARNING:root:careful\n"

    failed = cells[3]
    assert streams(failed) == [("stdout", "about to fail\n")]
    [error] = [out for out in failed.outputs if out.output_type == "error"]
    shown = "\n".join(error.traceback)
    assert error.traceback[0].startswith("job ") and error.traceback[0].endswith("failed on a worker:")
    assert 'raise ValueError(f"bad {x}")' in shown and ", in boom" in shown
    assert error.traceback[-1] == "ValueError: bad 7"
    assert not [frame for frame in KERNEL_FRAMES if frame in shown], shown

    assert result(cells[4]) == "20"
    assert streams(cells[5]) == [("stdout", "line 0\nline 1\n"), ("stderr", "oops\nWARNING:root:careful\n")]

    [verbose] = [out for out in cells[7].outputs if out.output_type == "error"]
    assert "commands.py" in "\n".join(verbose.traceback)  # everything, when asked for

    assert result(cells[9]) == repr("no worker serves queue 'nobody' — start one with `%naq worker start -q nobody`")
    assert "no worker serves queue 'nobody' — start one with `%naq worker start -q nobody`" in text(cells[10])
    assert result(cells[12]) == "(10, True)"

    [cell_error] = [out for out in cells[15].outputs if out.output_type == "error"]
    shown = "\n".join(cell_error.traceback)
    assert 'File "<%%naq_schedule cellfail>", line 3, in <module>\n    x / 0' in shown
    assert cell_error.traceback[-1] == "ZeroDivisionError: division by zero"
    assert not [frame for frame in (*KERNEL_FRAMES, "cells.py") if frame in shown], shown
