"""`naq dashboard`: the scheduled-jobs panel and the queue monitor on one web page, served by Voilà.

The page is the notebook `naq_ipy/ipython/dashboard/naq-dashboard.ipynb` (package data) rendered
by Voilà without its code. Its kernel is this interpreter and gets its settings from the
environment only: `NAQ_URL`, `NAQ_DASHBOARD_QUEUE`, `NAQ_DASHBOARD_READ_ONLY=1`. Voilà runs as a
child (`python -m naq_ipy.cli.dashboard`, its own session) that takes the page's access token from
`NAQ_DASHBOARD_TOKEN` and removes it from the environment before any kernel starts, so the token
is neither on a command line nor in the kernel. Ctrl-C or SIGTERM stop Voilà, which shuts its
kernels down. Nothing is started for NATS: with no server at the URL the command says so and exits 3.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

from naq_ipy.cli.children import missing_modules, sigterm_as_interrupt, stop_process
from naq_ipy.errors import ConfigurationError, NaqConnectionError, NaqException
from naq_ipy.local.processes import port_free
from naq_ipy.wire.server import free_port, is_reachable
from naq_ipy.wire.settings import DEFAULT_URL, redact_url

# package data of the IPython face, read as a file (the command line never imports the face)
NOTEBOOK = Path(__file__).resolve().parents[1] / "ipython" / "dashboard" / "naq-dashboard.ipynb"
DEFAULT_PORT = 8866
HOST = "127.0.0.1"
TOKEN_ENV, QUEUE_ENV, READ_ONLY_ENV = "NAQ_DASHBOARD_TOKEN", "NAQ_DASHBOARD_QUEUE", "NAQ_DASHBOARD_READ_ONLY"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
EXIT_OK, EXIT_USAGE = 0, 2
MISSING = "naq dashboard needs Voilà: pip install 'naq_ipy[dashboard]' (or pip install voila ipykernel)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`naq dashboard [--port P] [--url URL] [--no-browser] [--read-only] [--queue Q]`."""
    parser.add_argument("--port", type=int, help=f"the page's port (default {DEFAULT_PORT}, else any free one)")
    parser.add_argument("--url", help="NATS URL (default: $NAQ_URL, else nats://127.0.0.1:4222)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--read-only", action="store_true", help="show no action: nothing can be changed from the page")
    parser.add_argument("--queue", help="only this queue's scheduled jobs and figures")


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C or SIGTERM; exit 2 without Voilà, 3 if no NATS server answers."""
    if missing_modules(("voila", "ipykernel")):
        print(MISSING, file=sys.stderr)
        return EXIT_USAGE
    url = args.url or os.environ.get("NAQ_URL") or DEFAULT_URL
    if not is_reachable(url):
        raise NaqConnectionError(f"no NATS server answers at {redact_url(url)}: start one (naq server, naq lab) "
                                 "or pass --url")
    server = DashboardServer(url, port=args.port, queue=args.queue, read_only=args.read_only)
    with sigterm_as_interrupt():
        try:
            server.start()
            print(f"naq dashboard: {server.address}", flush=True)
            print(f"naq dashboard: Voilà pid {server.pid}, NATS {redact_url(url)}"
                  + (f", queue {args.queue}" if args.queue else "") + (", read-only" if args.read_only else "")
                  + "; Ctrl-C stops it", flush=True)
            if not args.no_browser:
                webbrowser.open(server.address)
            return server.wait()
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            if server.stop():
                print("naq dashboard: stopped", flush=True)


class DashboardServer:
    """One Voilà process serving the dashboard on `HOST:port` (default 8866, else a free port) with a fresh token.

    `url`: the NATS URL the page's kernel uses; `queue`: only that queue; `read_only`: no actions.
    """

    def __init__(self, url: str, *, port: int | None = None, queue: str | None = None,
                 read_only: bool = False) -> None:
        if port is not None and not port_free(port, HOST):
            raise ConfigurationError(f"port {port} is taken: pick another with --port")
        self.url = url
        self.port = port or (DEFAULT_PORT if port_free(DEFAULT_PORT, HOST) else free_port(HOST))
        self.queue = queue
        self.read_only = read_only
        self.token = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The page's address with its access token."""
        return f"http://{HOST}:{self.port}/?token={self.token}"

    @property
    def pid(self) -> int | None:
        """Voilà's pid while it runs."""
        return self.process.pid if self.process is not None else None

    def environment(self) -> dict[str, str]:
        """Voilà's environment: this one plus the settings its kernel reads and the token it takes out."""
        env = {k: v for k, v in os.environ.items() if k not in (QUEUE_ENV, READ_ONLY_ENV)}
        env.update({"NAQ_URL": self.url, TOKEN_ENV: self.token})
        if self.queue:
            env[QUEUE_ENV] = self.queue
        if self.read_only:
            env[READ_ONLY_ENV] = "1"
        return env

    def command(self) -> list[str]:
        """This module as a script: Voilà on the dashboard notebook, this interpreter's kernel only."""
        return [sys.executable, "-m", __name__, str(NOTEBOOK), "--no-browser", f"--port={self.port}",
                f"--Voila.ip={HOST}", "--Voila.port_retries=0", "--strip_sources=True", "--Voila.log_level=WARN"]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> DashboardServer:
        """Start Voilà and wait until it listens; raise (after stopping it) if it exits or does not listen in time."""
        # its own session: a terminal Ctrl-C reaches only the owner, which stops Voilà and its kernels in order
        process = self.process = subprocess.Popen(self.command(), env=self.environment(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while not _listening(self.port):
                if process.poll() is not None:
                    raise NaqException(f"Voilà exited with {process.returncode} before serving the dashboard")
                if time.monotonic() > deadline:
                    raise NaqException(f"Voilà did not listen on port {self.port} within {timeout_s:.0f} s")
                time.sleep(0.1)
        except BaseException:  # a Ctrl-C while waiting too: no Voilà is left behind
            self.stop()
            raise
        return self

    def wait(self) -> int:
        """Until Voilà exits; its exit code."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> bool:
        """SIGTERM (Voilà shuts its kernels down), SIGKILL to its group after a while; True if it was running."""
        process = self.process
        if process is None or process.poll() is not None:
            return False
        stop_process(process, STOP_TIMEOUT_S)
        return True


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def serve(argv: list[str]) -> None:
    """The child: Voilà with `argv`, its token taken out of the environment (the kernels inherit the rest)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from traitlets import default
    from traitlets.config import Config
    from voila.app import Voila

    class ThisPython(KernelSpecManager):
        """No kernelspec folders: only ipykernel's own spec, which runs this interpreter (a user's
        `python3` spec may point at a Python without naq_ipy)."""

        @default("kernel_dirs")
        def _no_kernel_dirs(self) -> list[str]:
            return []

    config = Config()
    config.VoilaConfiguration.kernel_spec_manager_class = ThisPython
    token: Any = os.environ.pop(TOKEN_ENV, None)
    Voila.launch_instance(argv=argv, token=token, config=config)


if __name__ == "__main__":
    serve(sys.argv[1:])
