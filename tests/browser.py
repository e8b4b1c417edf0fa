"""A real JupyterLab (or Notebook 7) on loopback, isolated from the user's config, driven by Playwright on Chromium.

Used by the browser tests: `JupyterLab` starts `jupyter lab` (or, with `app="notebook"`, Jupyter
Notebook 7) with its own config, data, IPython and workspace dirs and a kernelspec for this
interpreter; `chromium_page` opens a headless page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from naq_ipy.wire.server import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
KERNEL_NAME = "naq-test-python"
NO_NEWS = {"fetchNews": "false"}


class JupyterLab:
    """One `jupyter lab` server process serving `workdir/root` with isolated Jupyter and IPython dirs.

    `app`: "jupyterlab", or "notebook" for Jupyter Notebook 7 (the same frontend parts, one document a tab).
    """

    def __init__(self, workdir: Path, python: str = sys.executable, app: str = "jupyterlab") -> None:
        self.workdir = workdir
        self.app = app
        self.root = workdir / "root"
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyter-lab.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        dirs = {name: self.workdir / name for name in ("config", "data", "ipython", "runtime")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        kernel_dir = dirs["data"] / "kernels" / KERNEL_NAME
        kernel_dir.mkdir(parents=True, exist_ok=True)
        (kernel_dir / "kernel.json").write_text(json.dumps({
            "argv": [self.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "naq test python", "language": "python",
        }))
        news = dirs["config"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True, exist_ok=True)
        (news / "notification.jupyterlab-settings").write_text(json.dumps(NO_NEWS))
        return {**os.environ, "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
                "IPYTHONDIR": str(dirs["ipython"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
                "JUPYTER_PLATFORM_DIRS": "1"}

    def start(self, timeout_s: float = 90.0) -> JupyterLab:
        """Start the server and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        app_class = "LabApp" if self.app == "jupyterlab" else "JupyterNotebookApp"
        command = [
            self.python, "-m", self.app, "--allow-root", "--no-browser", "--ip", "127.0.0.1",
            "--port", str(self.port), "--IdentityProvider.token=", "--ServerApp.password=",
            f"--ServerApp.root_dir={self.root}", f"--{app_class}.workspaces_dir={self.workdir / 'workspaces'}",
            f"--{app_class}.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=True",
        ]
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(command, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.app} exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.app} did not answer within {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (and with it the kernels it started)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def write_notebook(self, name: str, cells: Sequence[str]) -> Path:
        """Write a notebook of code cells using this interpreter's kernelspec."""
        notebook = {
            "cells": [{"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8], "metadata": {},
                       "outputs": [], "source": source} for source in cells],
            "metadata": {"kernelspec": {"name": KERNEL_NAME, "display_name": "naq test python",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5,
        }
        path = self.root / name
        path.write_text(json.dumps(notebook))
        return path

    def notebook_url(self, name: str) -> str:
        """A fresh workspace URL for the notebook, so no earlier tab is restored over it (Notebook 7: its page)."""
        if self.app == "notebook":
            return f"{self.url}/notebooks/{name}"
        return f"{self.url}/lab/workspaces/w{uuid.uuid4().hex[:8]}/tree/{name}?reset"

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS), headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def run_all_cells(page: Any, timeout_s: float = 60.0) -> None:
    """Run every cell of the visible notebook once its kernel is ready (JupyterLab's own command)."""
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.connectionStatus"
                           " === 'connected'", timeout=timeout_s * 1000)
    run_command(page, "notebook:run-all-cells")


def run_command(page: Any, command: str) -> None:
    """Execute a JupyterLab command (as its menu entry or shortcut would)."""
    page.evaluate("(command) => window.jupyterapp.commands.execute(command)", command)


def visible_notebook(page: Any) -> Any:
    """The locator of the notebook panel on screen."""
    return page.locator(".jp-NotebookPanel:visible")
