"""The demo notebooks: stripped in git, and run top to bottom through nbclient against a real stack."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pids import alive, wait_gone
from squatter import Squatter, default_port_state, squat_default_port

from naq_ipy.cli.lab import execute_notebook
from naq_ipy.local.stack import LocalStack, local_url
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire.server import Answer, is_reachable

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01-quickstart.ipynb", "02-scheduling.ipynb", "03-data-pipeline.ipynb")
# a notebook may take this long on a loaded machine (about 10-20 s here)
NOTEBOOK_BUDGET_S = 90.0
CELL_TIMEOUT_S = 60.0
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def read(name: str) -> Any:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


# --- fast: what is in git ------------------------------------------------------------------------


def test_the_three_notebooks_exist_and_are_valid() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        nb = read(name)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), name


def test_outputs_are_stripped_in_git() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "strip_outputs.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, f"run `python tools/strip_outputs.py` before committing:\n{check.stdout}"
    for name in NAMES:
        for cell in read(name).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (name, cell.source[:60])


def test_strip_outputs_removes_what_a_run_adds(tmp_path: Path) -> None:
    nb = read("01-quickstart.ipynb")
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    code.execution_count = 3
    code.metadata["execution"] = {"iopub.status.busy": "2026-11-28T00:00:00Z"}
    code.metadata["tags"] = ["keep-me"]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    tool = [sys.executable, str(ROOT / "tools" / "strip_outputs.py")]
    assert subprocess.run([*tool, "--check", str(path)], capture_output=True).returncode == 1
    assert subprocess.run([*tool, str(path)], capture_output=True).returncode == 0
    assert subprocess.run([*tool, "--check", str(path)], capture_output=True).returncode == 0
    clean = json.loads(path.read_text())
    first = next(c for c in clean["cells"] if c["cell_type"] == "code")
    assert first["outputs"] == [] and first["execution_count"] is None and first["metadata"] == {"tags": ["keep-me"]}
    assert "widgets" not in clean["metadata"]


def test_only_the_mistakes_section_may_raise() -> None:
    tagged = {name: [c.source.splitlines()[0] for c in read(name).cells
                     if "raises-exception" in c.metadata.get("tags", [])] for name in NAMES}
    assert tagged["01-quickstart.ipynb"] == [] and tagged["03-data-pipeline.ipynb"] == []
    assert len(tagged["02-scheduling.ipynb"]) == 4


def test_notebooks_read_the_server_url_from_the_environment() -> None:
    for name in NAMES:
        text = (NOTEBOOKS / name).read_text()
        assert "%load_ext naq_ipy" in text and "%naq server start" in text, name
        assert "127.0.0.1:" not in text.replace("nats://127.0.0.1:4222", ""), f"{name} hard-codes a server"


# --- slow: run them --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mpl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One matplotlib cache for the module (building it takes seconds)."""
    return tmp_path_factory.mktemp("mpl")


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mpl_dir: Path) -> Path:
    """Kernels with their own IPython, Jupyter and data folders under tmp_path (never the user's home)."""
    for name, sub in (("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config"),
                      ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                      ("XDG_DATA_HOME", "xdg-data"), ("XDG_CACHE_HOME", "xdg-cache")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("MPLCONFIGDIR", str(mpl_dir))
    monkeypatch.delenv("NAQ_URL", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A nats-server, a worker and a scheduler, as `naq lab` starts them, shared by the notebooks."""
    with LocalStack(local_url(0), data_dir=tmp_path_factory.mktemp("stack-nats")) as running:
        yield running


def cell_text(cell: Any) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return "\n".join(parts)


def raised(cell: Any) -> bool:
    """An error output, or IPython's one-line UsageError on stderr."""
    return any(out.output_type == "error" or (out.output_type == "stream" and out.name == "stderr"
                                              and "UsageError:" in out.text) for out in cell.get("outputs", []))


def output_of(nb: Any, needle: str) -> Any:
    """The code cell whose source is `needle`, else the first one containing it."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return next((c for c in code if c.source.strip() == needle), None) or next(c for c in code if needle in c.source)


def schedules_left(url: str) -> list[str]:
    async def keys() -> list[str]:
        return [record.key for record in await ScheduledJobManager(url).list()]

    return asyncio.run(keys())


def run(name: str, url: str | None, *, server_stays: bool = True) -> Any:
    started = time.monotonic()
    nb = execute_notebook(NOTEBOOKS / name, url, cell_timeout_s=CELL_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert elapsed < NOTEBOOK_BUDGET_S, f"{name} took {elapsed:.0f} s"
    for cell in nb.cells:
        if cell.cell_type == "code":
            tagged = "raises-exception" in cell.metadata.get("tags", [])
            assert raised(cell) == tagged, f"{name}: {cell.source[:80]!r}\n{cell_text(cell)}"
    if server_stays and url is not None:
        assert schedules_left(url) == [], f"{name} left schedules behind"
    return nb


@pytest.mark.slow
def test_quickstart(stack: LocalStack, jupyter_env: Path) -> None:
    nb = run("01-quickstart.ipynb", stack.url)
    assert "not starting another" in cell_text(output_of(nb, "%naq server start"))
    assert "this kernel       0 worker(s), 0 scheduler(s)" in cell_text(output_of(nb, "%naq status"))
    assert "report 2026-11: 1000 rows, total 499,500" in cell_text(output_of(nb, "%naq_enqueue --wait"))
    assert "report 2026-12: 10 rows, total 45" in cell_text(output_of(nb, "%naq result job"))
    ticks = re.findall(r"'tick\.\d+': 'hello from a scheduled cell at", cell_text(output_of(nb, "recent_runs")))
    assert len(ticks) == 3
    assert WIDGET_VIEW in output_of(nb, "%naq jobs").outputs[0].data


@pytest.mark.slow
def test_scheduling(stack: LocalStack, jupyter_env: Path) -> None:
    nb = run("02-scheduling.ipynb", stack.url)
    assert "Sun 29 Mar 03:00 CEST = 01:00 UTC" in cell_text(output_of(nb, "next_cron_runs("))
    assert cell_text(output_of(nb, "interval=\"1s\", repeat=3")).count("digest for sre") == 3
    assert "('paused', 'cron 0 9 * * mon-fri (Europe/Berlin)', 20)" in cell_text(output_of(nb, "pause_scheduled"))
    assert "digest for new york, hourly" in cell_text(output_of(nb, "%naq run ny_sync"))
    missed = cell_text(output_of(nb, "overdue_since ="))
    for policy, runs in (("all", 3), ("once", 1), ("skip", 0)):
        assert f"'missed-{policy}': '{runs} run(s)" in missed, missed
    mistakes = [cell_text(c) for c in nb.cells if "raises-exception" in c.metadata.get("tags", [])]
    assert "invalid cron expression '61 * * * *'" in mistakes[0]
    assert "unknown time zone 'Europe/Berln'" in mistakes[1]
    assert "name 'team_name' is used in the cell but not defined" in mistakes[2]
    assert mistakes[3].startswith("ConfigurationError: invalid cron expression 'every monday at nine'")


@pytest.mark.slow
def test_data_pipeline(stack: LocalStack, jupyter_env: Path) -> None:
    nb = run("03-data-pipeline.ipynb", stack.url)
    assert WIDGET_VIEW in output_of(nb, "%naq monitor").outputs[0].data
    attempts = re.search(r"rates: finished after (\d+) attempts", cell_text(output_of(nb, "fx_job.status()")))
    assert attempts is not None and int(attempts.group(1)) >= 2, "the flaky step must have been retried"
    assert re.search(r"'1\d,\d{3} orders, [\d,]+ EUR in 90 days'", cell_text(output_of(nb, "total_job.result")))
    assert any("image/png" in out.get("data", {}) for out in output_of(nb, "plt.subplots").outputs)
    nightly = cell_text(output_of(nb, "run_now("))
    assert re.search(r"nightly_pipeline\.now-\d+: \d+ orders on \d{4}-\d\d-\d\d", nightly), nightly


@pytest.mark.slow
def test_quickstart_on_a_fresh_machine_starts_and_stops_everything(jupyter_env: Path) -> None:
    """Nothing answers at NAQ_URL: the notebook starts server, worker and scheduler; the kernel's exit stops them."""
    url = local_url(0)
    nb = run("01-quickstart.ipynb", url, server_stays=False)
    started = cell_text(output_of(nb, "%naq server start")) + cell_text(output_of(nb, "alive = dict"))
    assert f"started a local NATS server at {url}" in started
    pids = [int(pid) for pid in re.findall(r"(?:started worker|started scheduler) pid (\d+)", started)]
    server_pid = re.search(r"\(pid (\d+), data in", started)
    assert len(pids) == 2 and server_pid is not None, started
    assert str(jupyter_env / "xdg-data") in started, "the server's data must go to $XDG_DATA_HOME"
    pids.append(int(server_pid.group(1)))
    assert wait_gone(pids) == [], f"left running: {[p for p in pids if alive(p)]}"
    assert not is_reachable(url)


# --- zero config: no NAQ_URL, the default port 4222 ---------------------------------------------

STAND_IN = re.compile(r"started a local NATS server at (nats://127\.0\.0\.1:\d+) for nats://127\.0\.0\.1:4222")


def stand_in_url(nb: Any) -> str:
    """The URL of the server the notebook's `%naq server start` started."""
    found = STAND_IN.search(cell_text(output_of(nb, "%naq server start")))
    assert found is not None, cell_text(output_of(nb, "%naq server start"))
    return found.group(1)


@pytest.mark.slow
@pytest.mark.timeout(300)  # three notebook runs in fresh kernels
def test_notebooks_when_a_listener_that_is_not_nats_holds_port_4222(jupyter_env: Path) -> None:
    """No NAQ_URL and port 4222 taken: the stand-in elsewhere is the URL of the magics and the Python API alike."""
    squatter = squat_default_port()
    try:
        for name in NAMES:
            nb = run(name, None, server_stays=False)
            started = cell_text(output_of(nb, "%naq server start"))
            assert stand_in_url(nb) != "nats://127.0.0.1:4222", started
            assert "port 4222 there is held by something that is not a NATS server, so every call of this kernel " \
                   f"without a URL now goes to {stand_in_url(nb)}" in started
    finally:
        if squatter is not None:
            squatter.close()


@pytest.mark.slow
@pytest.mark.timeout(600)  # nine notebook runs in fresh kernels: ~80 s on a quiet machine
def test_notebooks_back_to_back_without_naq_url(jupyter_env: Path) -> None:
    """Three rounds of the three notebooks, each in a fresh kernel: each gets port 4222 again when nothing holds it."""
    state = default_port_state()
    if state is Answer.NATS:
        pytest.skip("a NATS server of someone else answers on 127.0.0.1:4222: the notebooks would use it")
    for _ in range(3):
        for name in NAMES:
            nb = run(name, None, server_stays=False)
            if state is None:  # 4222 was free: every notebook's own server must get it back
                assert stand_in_url(nb) == "nats://127.0.0.1:4222", f"{name}: {stand_in_url(nb)}"


@pytest.mark.slow
def test_in_a_kernel_an_explicit_url_wins_and_a_port_that_is_not_nats_is_named(
        jupyter_env: Path, nats_url: str, tmp_path: Path) -> None:
    """NAQ_URL at a port a foreign listener holds: the stand-in elsewhere is the default, explicit URLs still win."""
    with Squatter() as held, Squatter() as other:
        cells = [
            "%load_ext naq_ipy\n%naq server start",
            "import naq_ipy\nfrom naq_ipy import Queue\n\ndef f():\n    return 1\n\n"
            f"print('default', Queue().settings.url)\nprint('explicit', Queue(nats_url={nats_url!r}).settings.url)\n"
            f"print('enqueued at', naq_ipy.enqueue_sync(f, nats_url={nats_url!r}).url.url)",
            f"%config NaqMagics.url = {nats_url!r}\nprint('configured', Queue().settings.url)",
            f"naq_ipy.enqueue_sync(f, nats_url={other.url!r})",
            f"%config NaqMagics.auto_start = False\n%config NaqMagics.url = {other.url!r}\n%naq_enqueue f()",
        ]
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        for cell in nb.cells[3:]:
            cell.metadata["tags"] = ["raises-exception"]
        path = tmp_path / "urls.ipynb"
        nbformat.write(nb, path)
        ran = execute_notebook(path, held.url, cell_timeout_s=CELL_TIMEOUT_S)
    code = [cell_text(cell) for cell in ran.cells]
    stand_in = re.search(rf"started a local NATS server at (\S+) for {held.url}: port {held.port} there is held",
                         code[0])
    assert stand_in is not None and stand_in.group(1) != held.url, code[0]
    assert f"default {stand_in.group(1)}\nexplicit {nats_url}\nenqueued at {nats_url}" in code[1]
    assert f"configured {nats_url}" in code[2]
    not_nats = f"127.0.0.1:{other.port} is not a NATS server: it accepts connections but sends no NATS INFO line"
    assert f"NaqConnectionError: {not_nats}" in code[3]
    assert f"UsageError: {not_nats}" in code[4]
