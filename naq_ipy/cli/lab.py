"""`naq lab`: a local server, worker and scheduler, then JupyterLab on the demo notebooks — one command.

It does locally what `binder/start` does on Binder. JupyterLab and its kernels get `NAQ_URL`,
so `%load_ext naq_ipy` talks to the stack started here. With Voilà installed, the dashboard
(`naq dashboard`) is served beside it. Ctrl-C or SIGTERM stops JupyterLab (which shuts its
kernels down) and the dashboard, then the worker, the scheduler and the server. JupyterLab opens
without its "get notified about official Jupyter news?" prompt: an override for this launch only.

`naq lab --headless` runs notebooks top to bottom instead (default: the quickstart) through
nbclient against the same stack and prints PASS/FAIL per notebook: the quickstart for CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from naq_ipy.cli.children import interrupt, missing_modules, sigterm_as_interrupt, stop_process
from naq_ipy.errors import NaqException
from naq_ipy.local.stack import LocalStack, local_url
from naq_ipy.wire.server import default_store_dir

if TYPE_CHECKING:
    from naq_ipy.cli.dashboard import DashboardServer

QUICKSTART = "01-quickstart.ipynb"
KERNEL_NAME = "naq-lab"
CELL_TIMEOUT_S = 120.0
LAB_STOP_TIMEOUT_S = 20.0
NEWS_PLUGIN, NO_NEWS = "@jupyterlab/apputils-extension:notification", {"fetchNews": "false"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LAB_MISSING = "naq lab needs JupyterLab: pip install jupyterlab (or pip install 'naq_ipy[lab]')"
HEADLESS_MISSING = "naq lab --headless needs nbclient and ipykernel: pip install 'naq_ipy[notebooks]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`naq lab [--no-browser] [--port P] [--notebooks DIR] [--headless [NOTEBOOK ...]] ...`."""
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--port", type=int, help="JupyterLab's port (default: its own, 8888 or the next free one)")
    parser.add_argument("--notebooks", type=Path, metavar="DIR",
                        help="folder to open (default: ./notebooks, else the one beside the naq_ipy package)")
    parser.add_argument("--headless", nargs="*", metavar="NOTEBOOK",
                        help=f"no JupyterLab: run these notebooks (default {QUICKSTART}) top to bottom, "
                             "print PASS/FAIL each; exit 1 if one fails")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, metavar="S",
                        help=f"--headless: seconds one cell may run (default {CELL_TIMEOUT_S:.0f})")
    parser.add_argument("--url", help="NATS URL to use, or to serve if nothing answers at that local address "
                                      "(default: $NAQ_URL, else nats://127.0.0.1:NATS_PORT)")
    parser.add_argument("--nats-port", type=int, default=4222, metavar="P",
                        help="port of the nats-server started when no --url/$NAQ_URL is given (0: any free port)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help=f"JetStream data of a server started here (default {default_store_dir()})")


def default_notebooks() -> Path | None:
    """`./notebooks`, else the `notebooks/` folder of a source checkout next to this package."""
    for candidate in (Path.cwd() / "notebooks", Path(__file__).resolve().parents[2] / "notebooks"):
        if (candidate / QUICKSTART).is_file():
            return candidate
    return None


def run(args: argparse.Namespace) -> int:
    """Start the stack, then JupyterLab (or the headless run); stop everything on exit, Ctrl-C or SIGTERM."""
    headless = args.headless is not None
    missing = missing_modules(("nbclient", "ipykernel") if headless else ("jupyterlab",))
    if missing:
        print(HEADLESS_MISSING if headless else LAB_MISSING, file=sys.stderr)
        return EXIT_USAGE
    notebooks = args.notebooks or default_notebooks()
    if notebooks is None or not notebooks.is_dir():
        print(f"naq lab: no notebooks folder {'at ' + str(notebooks) if notebooks else 'found'}: "
              "pass --notebooks DIR", file=sys.stderr)
        return EXIT_USAGE
    url = args.url or os.environ.get("NAQ_URL") or local_url(args.nats_port)
    stack = LocalStack(url, data_dir=args.data_dir)
    with sigterm_as_interrupt():
        try:
            stack.start()
            for line in stack.describe():
                print(f"naq lab: {line}", flush=True)
            if headless:
                return run_headless(notebooks, args.headless or [QUICKSTART], stack.url, args.cell_timeout)
            return run_jupyterlab(notebooks, stack.url, port=args.port, browser=not args.no_browser)
        except KeyboardInterrupt:
            print("naq lab: interrupted", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED if headless else EXIT_OK
        finally:
            started = stack.processes()
            stack.stop()
            if started:
                print("naq lab: stopped the worker, the scheduler"
                      + (" and the server" if stack.server is not None else ""), flush=True)


# --- JupyterLab ------------------------------------------------------------------------------


def jupyterlab_command(notebooks: Path, *, port: int | None, browser: bool,
                       app_settings_dir: Path | None = None) -> list[str]:
    """`python -m jupyterlab` on `notebooks`, opening the quickstart if it is there."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks.resolve()}"]
    if app_settings_dir is not None:
        cmd.append(f"--LabApp.app_settings_dir={app_settings_dir}")
    if port is not None:
        cmd.append(f"--port={port}")
    if not browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # JupyterLab refuses root otherwise (containers, CI)
    if (notebooks / QUICKSTART).is_file():
        cmd.append(str((notebooks / QUICKSTART).resolve()))
    return cmd


def run_jupyterlab(notebooks: Path, url: str, *, port: int | None, browser: bool) -> int:
    """Run JupyterLab (and the dashboard) with `NAQ_URL=url` until it exits, or until Ctrl-C/SIGTERM stops it here."""
    with app_settings_without_news() as settings_dir:
        # its own session: a terminal Ctrl-C reaches only naq lab, which stops JupyterLab without its y/n prompt
        lab = subprocess.Popen(jupyterlab_command(notebooks, port=port, browser=browser,
                                                  app_settings_dir=settings_dir),
                               env={**os.environ, "NAQ_URL": url}, start_new_session=True)
        print(f"naq lab: JupyterLab pid {lab.pid} on {notebooks}; Ctrl-C stops everything", flush=True)
        dashboard: DashboardServer | None = None
        try:
            dashboard = start_dashboard(url)
            return lab.wait()
        finally:
            stop_process(lab, LAB_STOP_TIMEOUT_S)
            if dashboard is not None:
                dashboard.stop()


def start_dashboard(url: str) -> DashboardServer | None:
    """The dashboard's Voilà on `url` if Voilà is installed (its address printed), else None."""
    if missing_modules(("voila", "ipykernel")):
        print("naq lab: no dashboard (pip install 'naq_ipy[dashboard]' adds it)", flush=True)
        return None
    from naq_ipy.cli.dashboard import DashboardServer

    try:
        dashboard = DashboardServer(url).start()
    except NaqException as e:  # JupyterLab is what was asked for: go on without the dashboard
        print(f"naq lab: no dashboard: {e}", file=sys.stderr, flush=True)
        return None
    print(f"naq lab: dashboard {dashboard.address} (Voilà pid {dashboard.pid})", flush=True)
    return dashboard


@contextlib.contextmanager
def app_settings_without_news() -> Iterator[Path]:
    """JupyterLab's app settings folder for one launch: its own files, plus a default of `fetchNews: "false"`.

    The override is the lowest of all (an administrator's overrides and the user's own choice win)
    and nothing is written into the user's or the environment's settings: the folder is temporary.
    """
    from jupyterlab.commands import get_app_dir

    own = Path(get_app_dir()) / "settings"
    with tempfile.TemporaryDirectory(prefix="naq-lab-settings-") as tmp:
        folder = Path(tmp)
        for entry in own.iterdir() if own.is_dir() else ():
            if entry.name != "overrides.d":
                (folder / entry.name).symlink_to(entry)
        overrides_d = folder / "overrides.d"
        overrides_d.mkdir()
        for entry in (own / "overrides.d").iterdir() if (own / "overrides.d").is_dir() else ():
            (overrides_d / entry.name).symlink_to(entry)
        # read first (files are applied in name order): every other override wins over it
        (overrides_d / "00-naq-lab-no-news.json").write_text(json.dumps({NEWS_PLUGIN: NO_NEWS}))
        yield folder


# --- headless --------------------------------------------------------------------------------


def run_headless(notebooks: Path, names: list[str], url: str, cell_timeout_s: float) -> int:
    """Run each notebook against `url`; PASS/FAIL lines, then a `N passed, N failed` summary."""
    passed = failed = 0
    for name in names:
        path = Path(name) if Path(name).is_file() else notebooks / name
        started = time.monotonic()
        try:
            execute_notebook(path, url, cell_timeout_s=cell_timeout_s)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a failing cell, a dead kernel, a missing file: all count as FAIL
            failed += 1
            print(f"FAIL {path.name} ({time.monotonic() - started:.1f} s)\n{e}", flush=True)
        else:
            passed += 1
            print(f"PASS {path.name} ({time.monotonic() - started:.1f} s)", flush=True)
        signal.signal(signal.SIGTERM, interrupt)  # nbclient leaves SIGTERM at its default
    print(f"{passed} passed, {failed} failed", flush=True)
    return EXIT_FAILED if failed else EXIT_OK


@contextlib.contextmanager
def kernelspec_here() -> Iterator[str]:
    """A kernelspec for this interpreter in a temp dir, put first on `JUPYTER_PATH` for the duration."""
    with tempfile.TemporaryDirectory(prefix="naq-kernelspec-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "naq_ipy (this Python)", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        previous = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, previous) if p)
        try:
            yield KERNEL_NAME
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


class _StopOnSignal:
    """While nbclient runs: Ctrl-C or SIGTERM cancel the run (nbclient then shuts its kernel down).

    nbclient's own handlers only shut the kernel down, and the caller would go on with the next
    notebook; `requested` tells the caller to stop instead.
    """

    def __init__(self) -> None:
        self.requested = False

    def take_over(self) -> None:
        """Call in nbclient's execution task, once it has set its own handlers (before the kernel starts)."""
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        def stop() -> None:
            self.requested = True
            if task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError):  # not the main thread: no signals here
                loop.add_signal_handler(sig, stop)


def execute_notebook(path: Path, url: str | None, *, cell_timeout_s: float = CELL_TIMEOUT_S,
                     env: Mapping[str, str] | None = None) -> Any:
    """Run the notebook at `path` top to bottom in a fresh kernel of this Python with `NAQ_URL=url`.

    `url=None`: the kernel gets no `NAQ_URL` at all (zero config, as a newcomer runs it).

    The kernel's working directory is the notebook's folder. Only cells tagged
    `raises-exception` may fail; any other error raises (nbclient's CellExecutionError).
    Ctrl-C or SIGTERM shut the kernel down and raise KeyboardInterrupt. Returns the executed
    notebook; the file is not changed.
    """
    import nbformat
    from nbclient import NotebookClient

    stop = _StopOnSignal()

    class Client(NotebookClient):
        async def async_start_new_kernel(self, **kwargs: Any) -> None:
            stop.take_over()
            await super().async_start_new_kernel(**kwargs)

    nb = nbformat.read(path, as_version=4)
    with kernelspec_here() as kernel_name:
        client = Client(nb, kernel_name=kernel_name, timeout=cell_timeout_s,
                        resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            kernel_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "NAQ_URL"}
            client.execute(env=kernel_env | ({"NAQ_URL": url} if url else {}))
        except BaseException:
            if stop.requested:  # nbclient reports the cancelled run as a dead kernel
                raise KeyboardInterrupt from None
            raise
    return nb
