"""`naq lab`: arguments, the missing-JupyterLab message, the headless quickstart, and a clean stop."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pids import descendants, environ, outlived, wait_gone
from polling import wait_until

from naq_ipy.cli import lab
from naq_ipy.cli import main as cli
from naq_ipy.wire.server import free_port

ROOT = Path(__file__).resolve().parent.parent
NAQ = [sys.executable, "-m", "naq_ipy.cli"]
TOKEN = "naq-lab-test"



def reap(naq_lab: subprocess.Popen[str], below: dict[int, str]) -> list[int]:
    """Kill `naq lab` if it still runs, then whatever it started that outlived it; the pids that had."""
    if naq_lab.poll() is None:
        naq_lab.kill()
        naq_lab.wait()
    return outlived(list(below))


def test_lab_is_a_naq_command() -> None:
    args = cli.build_parser().parse_args(["lab", "--no-browser", "--port", "9999", "--notebooks", "nb"])
    assert (args.command, args.no_browser, args.port, args.notebooks, args.headless) == ("lab", True, 9999,
                                                                                         Path("nb"), None)
    assert cli.build_parser().parse_args(["lab", "--headless"]).headless == []
    assert cli.build_parser().parse_args(["lab", "--headless", "a.ipynb", "b.ipynb"]).headless == ["a.ipynb",
                                                                                                    "b.ipynb"]


def test_without_jupyterlab_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jupyterlab" else real(name))
    assert cli.main(["lab", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install jupyterlab" in err


def test_a_missing_notebooks_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "--headless", "--notebooks", str(tmp_path / "nope")]) == 2
    assert "pass --notebooks DIR" in capsys.readouterr().err


def test_default_notebooks_is_the_repository_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert lab.default_notebooks() == ROOT / "notebooks"


def test_jupyterlab_command(tmp_path: Path) -> None:
    (tmp_path / lab.QUICKSTART).write_text("{}")
    cmd = lab.jupyterlab_command(tmp_path, port=8899, browser=False)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in cmd and "--port=8899" in cmd and "--no-browser" in cmd
    assert cmd[-1] == str(tmp_path / lab.QUICKSTART)
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)
    assert "--no-browser" not in lab.jupyterlab_command(tmp_path, port=None, browser=True)


# --- slow: the real thing ------------------------------------------------------------------------


@pytest.fixture
def lab_env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HOME, Jupyter and IPython folders, and no NAQ_URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("NAQ_URL", "JUPYTER_PATH")}
    env.update(HOME=str(tmp_path / "home"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"), XDG_DATA_HOME=str(tmp_path / "xdg-data"),
               MPLCONFIGDIR=str(tmp_path / "mpl"), JUPYTER_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    return env


def stack_pids(output: str) -> list[int]:
    """The pids `naq lab` printed for its server, worker, scheduler (and JupyterLab)."""
    return [int(pid) for pid in re.findall(r"\bpid (\d+)", output)]


@pytest.mark.slow
def test_headless_runs_the_quickstart_and_leaves_nothing_behind(tmp_path: Path, lab_env: dict[str, str]) -> None:
    done = subprocess.run([*NAQ, "lab", "--headless", "--nats-port", "0", "--data-dir", str(tmp_path / "nats")],
                          env=lab_env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^PASS 01-quickstart\.ipynb \(\d+\.\d s\)$", done.stdout, re.M), done.stdout
    assert done.stdout.rstrip().endswith(
        "1 passed, 0 failed\nnaq lab: stopped the worker, the scheduler and the server")
    pids = stack_pids(done.stdout)
    assert len(pids) == 3, done.stdout
    assert wait_gone(pids, within_s=1) == []


@pytest.mark.slow
def test_headless_failure_exits_1_and_still_stops(tmp_path: Path, lab_env: dict[str, str]) -> None:
    done = subprocess.run([*NAQ, "lab", "--headless", "missing.ipynb", "--nats-port", "0",
                           "--data-dir", str(tmp_path / "nats")],
                          env=lab_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "FAIL missing.ipynb" in done.stdout and "0 passed, 1 failed" in done.stdout
    assert wait_gone(stack_pids(done.stdout), within_s=1) == []


def api(port: int, path: str, method: str = "GET", body: dict[str, str] | None = None) -> object:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def answers(port: int) -> bool:
    try:
        api(port, "/api/status")
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_sigterm_stops_jupyterlab_its_kernels_and_the_stack(tmp_path: Path, lab_env: dict[str, str]) -> None:
    port = free_port()
    naq_lab = subprocess.Popen([*NAQ, "lab", "--no-browser", "--port", str(port), "--nats-port", "0",
                                "--data-dir", str(tmp_path / "nats")],
                               env=lab_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    below: dict[int, str] = {}
    try:
        wait_until(lambda: answers(port), 60, "JupyterLab")
        kernel = api(port, "/api/kernels", "POST", {"name": "python3"})
        assert isinstance(kernel, dict)
        wait_until(lambda: "ipykernel_launcher" in " ".join(descendants(naq_lab.pid).values()), 30, "the kernel")
        below = descendants(naq_lab.pid)
        kinds = {kind: [pid for pid, cmd in below.items() if marker in cmd] for kind, marker in (
            ("server", "nats-server -js"), ("worker", "-m naq_ipy.cli worker"),
            ("scheduler", "-m naq_ipy.cli scheduler"), ("lab", "-m jupyterlab"), ("kernel", "-m ipykernel_launcher"),
            ("dashboard", "-m naq_ipy.cli.dashboard"))}
        assert all(len(pids) == 1 for pids in kinds.values()), below
        url = environ(kinds["kernel"][0]).get("NAQ_URL")
        assert url is not None and url.startswith("nats://127.0.0.1:")
        assert environ(kinds["dashboard"][0]).get("NAQ_URL") == url
        # no "get notified about official Jupyter news?" prompt: the default is off for this launch only
        notification = api(port, "/lab/api/settings/@jupyterlab/apputils-extension:notification")
        assert isinstance(notification, dict)
        assert notification["schema"]["properties"]["fetchNews"]["default"] == "false"
        assert not list((tmp_path / "config").rglob("*.jupyterlab-settings"))
        naq_lab.send_signal(signal.SIGTERM)
        out, _ = naq_lab.communicate(timeout=60)
    finally:
        left = reap(naq_lab, below)
    assert naq_lab.returncode == 0, out
    assert "naq lab: stopped the worker, the scheduler and the server" in out
    assert left == [], {pid: below[pid] for pid in left}


@pytest.mark.slow
def test_sigterm_during_a_headless_run_stops_the_kernel_and_the_stack(tmp_path: Path,
                                                                       lab_env: dict[str, str]) -> None:
    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("slow.ipynb", "next.ipynb"):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(60)")]),
                       folder / name)
    naq_lab = subprocess.Popen([*NAQ, "lab", "--headless", "slow.ipynb", "next.ipynb", "--notebooks", str(folder),
                                "--nats-port", "0", "--data-dir", str(tmp_path / "nats")],
                               env=lab_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    below: dict[int, str] = {}
    try:
        wait_until(lambda: "ipykernel_launcher" in " ".join(descendants(naq_lab.pid).values()), 60, "the kernel")
        time.sleep(1)  # into the cell
        below = descendants(naq_lab.pid)
        naq_lab.send_signal(signal.SIGTERM)
        out, _ = naq_lab.communicate(timeout=60)
    finally:
        left = reap(naq_lab, below)
    assert naq_lab.returncode == 130, out
    assert "naq lab: interrupted" in out and "PASS" not in out and "FAIL" not in out  # next.ipynb never ran
    assert len(below) == 4 and left == [], below
