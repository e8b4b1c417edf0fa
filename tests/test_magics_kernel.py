"""The magics in a real Jupyter kernel (nbclient) with a real nats-server, worker and scheduler."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.slow

KERNEL_NAME = "naq-test"


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_url: str) -> Path:
    """A kernelspec for this interpreter and an IPython profile loading naq_ipy by config, all under tmp_path."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "naq test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        f"c.InteractiveShellApp.extensions = ['naq_ipy']\nc.NaqMagics.url = {nats_url!r}\n"
        "c.HistoryManager.enabled = False\n"
    )
    for name, sub in (("JUPYTER_PATH", "jupyter"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config"),
                      ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("XDG_DATA_HOME", "xdg")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.delenv("NAQ_URL", raising=False)
    return tmp_path


def run_notebook(cells: list[str], path: Path) -> list[Any]:
    """Execute `cells` in a fresh kernel; cells starting with `# raises` may fail. Returns the cells."""
    nb = new_notebook(cells=[
        new_code_cell(src, metadata={"tags": ["raises-exception"]} if src.startswith("# raises") else {})
        for src in cells
    ])
    NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=60, resources={"metadata": {"path": str(path)}}).execute()
    nbformat.validate(nb)
    return list(nb.cells)


def text(cell: Any) -> str:
    """Everything a cell showed, as text."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n" + "\n".join(out.traceback))
    return "\n".join(parts)


def result(cell: Any) -> str:
    [value] = [out.data["text/plain"] for out in cell.outputs if out.output_type == "execute_result"]
    return str(value)


def pid_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


COUNT_RUNS = '''
import asyncio
from naq_ipy.wire.connection import get_connection
from naq_ipy.status.results import fetch_result, fetch_status

async def finished_runs(prefix, url={url!r}):
    """Results of finished runs whose ids start with `prefix`, by run id."""
    kv = await (await get_connection(url)).kv("naq_job_status")
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError for an empty bucket
        return {{}}
    found = {{}}
    for key in sorted(k for k in keys if k.startswith(prefix)):
        status = await fetch_status(key, url)
        if status is not None and status.status == "finished":
            found[key] = await fetch_result(key, 5, url)
    return found

async def wait_runs(prefix, count, within_s=20):
    for _ in range(int(within_s / 0.2)):
        found = await finished_runs(prefix)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    return await finished_runs(prefix)
'''


def test_magics_in_a_kernel(kernel_env: Path, nats_url: str) -> None:
    cells = run_notebook([
        "import os, time\nfrom naq_ipy import Queue\nfrom naq_ipy.local.processes import PROCESSES\n"
        "'naq_enqueue' in get_ipython().magics_manager.magics['line']",
        "def add(a, b=1):\n    return a + b\ndef boom():\n    raise ValueError('kaput')\nx = 5",
        "%naq worker start -c 4",
        "%naq scheduler start",
        "%naq_enqueue --wait 30 add(x, b=2)",
        "# raises\n%naq_enqueue --wait 30 boom()",
        f"q = Queue('default', {nats_url!r})\njob = await q.enqueue(add, 20, b=22)\nawait job.result(30)",
        "%naq_enqueue --wait 30 add(1)",
        COUNT_RUNS.format(url=nats_url),
        "%%naq_schedule --interval 1s --repeat 3 tick\nx * 10",
        "%%naq_schedule --interval 1s --repeat 3 tick\nx * 10",
        "[r.key for r in (await __import__('naq_ipy').list_scheduled_jobs(nats_url=q.settings))]",
        "ticks = await wait_runs('tick.', 3)\ntime.sleep(1.5)\nticks = await finished_runs('tick.')\n"
        "sorted(ticks.items())",
        "%%naq_schedule --interval 1s forever\nx + 1",
        "await wait_runs('forever.', 1)\n%naq pause forever\ntime.sleep(0.5)\n"
        "before = len(await finished_runs('forever.'))\ntime.sleep(2.5)\n"
        "(before >= 1, before == len(await finished_runs('forever.')))",
        "%config NaqMagics.loop_mode = 'nest'\n%naq_enqueue --wait 30 add(2)",
        "workers = [c.pid for c in PROCESSES.running('worker')]\n%naq worker stop\n"
        "def gone(pid):\n    try:\n        os.kill(pid, 0)\n    except ProcessLookupError:\n        return True\n"
        "    return False\n(len(workers), [gone(pid) for pid in workers])",
        "PROCESSES.running('scheduler')[0].pid",
    ], kernel_env)
    assert result(cells[0]) == "True"
    assert "started worker pid" in text(cells[2]) and "started scheduler pid" in text(cells[3])
    assert result(cells[4]) == "7"
    failure = text(cells[5])
    assert "JobExecutionError: job " in failure and "ValueError: kaput" in failure  # after the live display
    assert "Remote traceback" in failure
    assert result(cells[6]) == "42" and result(cells[7]) == "2"
    assert re.search(r"created schedule 'tick': every 1 s, 3 runs, next run .* UTC", text(cells[9]))
    assert "updated schedule 'tick'" in text(cells[10])
    assert result(cells[11]) == "['tick']"
    ticks = re.findall(r"\('(tick\.\d+)', 50\)", result(cells[12]))
    assert len(ticks) == 3, result(cells[12])
    assert "paused schedule 'forever'" in text(cells[14]) and result(cells[14]) == "(True, True)"
    assert result(cells[15]) == "3"
    assert result(cells[16]) == "(1, [True])"
    scheduler_pid = int(result(cells[17]))
    assert pid_gone(scheduler_pid), "the kernel's exit must stop the scheduler it started"
