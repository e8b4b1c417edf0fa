"""binder/: what repo2docker installs, and `binder/start` run here with a short command for the notebook server."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from pids import alive, outlived

from naq_ipy.cli import dashboard
from naq_ipy.wire.server import free_port

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
KINDS = ("nats-server", "worker", "scheduler")

# stands in for the notebook server: a job through the worker, a one-off through the scheduler
CLIENT = """
import os, time
from naq_ipy import Queue

def double(x):
    return 2 * x

queue = Queue()
print("URL", os.environ["NAQ_URL"], flush=True)
print("NOW", queue.enqueue_sync(double, 21).result_sync(30), flush=True)
print("LATER", queue.enqueue_in_sync(0.5, double, 5).result_sync(30), flush=True)
"""


def test_requirements_install_the_repo_with_the_notebook_deps() -> None:
    lines = [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["-e .[lab,dashboard]"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("jupyterlab") for dep in extras["lab"]) and "naq_ipy[notebooks]" in extras["lab"]
    assert any(dep.startswith("voila") for dep in extras["dashboard"])
    assert any(dep.startswith("matplotlib") for dep in extras["notebooks"])


def test_readme_binder_link_opens_the_packaged_dashboard() -> None:
    links = re.findall(r"https://mybinder\.org/v2/gh/[^)\s]+", (ROOT / "README.md").read_text())
    urlpaths = [parse_qs(urlsplit(link).query).get("urlpath", [""])[0] for link in links]
    dashboards = [path for path in urlpaths if path.startswith("voila/render/")]
    assert dashboards, links
    assert all((ROOT / path.removeprefix("voila/render/")).is_file() for path in dashboards), dashboards
    assert (ROOT / dashboards[0].removeprefix("voila/render/")).resolve() == dashboard.NOTEBOOK


def test_start_is_an_executable_bash_script_ending_in_exec() -> None:
    start = BINDER / "start"
    assert os.access(start, os.X_OK)
    assert subprocess.run(["bash", "-n", str(start)]).returncode == 0
    code = [line for line in start.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert code[-1] == 'exec "$@"'
    assert not (BINDER / "postBuild").exists(), "nothing needs a postBuild: the wheel brings nats-server"


@pytest.mark.slow
def test_start_runs_server_worker_and_scheduler_and_a_job_round_trips(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NAQ_URL"}
    env.update(HOME=str(tmp_path), NAQ_PORT=str(port), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    started = time.monotonic()
    # its own session: the start script, the client it execs and the background services share one group
    client = subprocess.Popen([str(BINDER / "start"), "python", "-c", CLIENT], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    out, err = client.communicate(timeout=60)
    elapsed = time.monotonic() - started
    pid_files = {kind: tmp_path / ".naq" / "run" / f"{kind}.pid" for kind in KINDS}
    pids = {kind: int(path.read_text()) for kind, path in pid_files.items() if path.exists()}
    try:
        assert client.returncode == 0, err
        assert out == f"URL nats://127.0.0.1:{port}\nNOW 42\nLATER 10\n"
        assert elapsed < 30, f"start + client took {elapsed:.1f} s"
        assert sorted(pids) == sorted(KINDS)
        assert all(alive(pid) for pid in pids.values()), pids
        assert (tmp_path / ".naq" / "nats" / "jetstream").is_dir()
        workers = subprocess.run([sys.executable, "-m", "naq_ipy.cli", "list-workers", "--url", f"nats://127.0.0.1:{port}"],
                                 capture_output=True, text=True, timeout=30)
        assert re.search(rf"\b{pids['worker']}\b.*\bdefault\b", workers.stdout), workers.stdout
        logs = tmp_path / ".naq" / "logs"
        assert "Server is ready" in (logs / "nats-server.log").read_text()
        assert "fired" in (logs / "scheduler.log").read_text()
        assert "finished" in (logs / "worker.log").read_text()
    finally:
        # what ending the container does: the whole process group goes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(client.pid, signal.SIGTERM)
        left = outlived(list(pids.values()), within_s=20)
    assert left == [], f"still running after SIGTERM: {left}"
