"""The nats-server, worker and scheduler processes a kernel starts: start, stop, status, logs.

Each child runs in its own session (a kernel interrupt must not reach it) and writes its
log to a file in one directory per kernel. Everything still running is stopped when the
extension unloads and when the kernel's interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from naq_ipy.errors import NaqException
from naq_ipy.wire.server import Answer, NatsServer, default_store_dir, free_port, probe

STOP_TIMEOUT_S = 10.0
EXIT_STOP_TIMEOUT_S = 3.0
# A child that dies this fast (bad arguments, import error) is reported by `start`.
START_CHECK_S = 0.3
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# how long a port a nats-server of this machine is still letting go of is waited for: more than the
# EXIT_STOP_TIMEOUT_S a kernel's server gets at the kernel's exit before it is killed
PORT_RELEASE_WAIT_S = 5.0
_PORT_POLL_S = 0.05
_PROBE_S = 0.25
_LOG_TAIL_LINES = 8


def loopback_port(url: str) -> int | None:
    """The port of `url` if it names one server on this machine, else None."""
    if "," in url:
        return None
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.hostname not in LOOPBACK_HOSTS:
        return None
    return parts.port or 4222


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a nats-server could listen on `host:port` right now.

    It binds with SO_REUSEADDR, as nats-server does: connections of a server that just stopped
    linger in TIME_WAIT on its port for a minute and do not keep it from binding again.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_free(port: int, host: str = "127.0.0.1", timeout_s: float = PORT_RELEASE_WAIT_S) -> bool:
    """True once `host:port` is free; waits up to `timeout_s` while the port is going away.

    A nats-server of this machine that is stopping refuses or closes connections until its
    process has exited; a live holder (a server, anything that accepts and stays) is not waited for.
    """
    deadline = time.monotonic() + timeout_s
    while not port_free(port, host):
        answer = probe(f"nats://{host}:{port}", _PROBE_S)
        if answer in (Answer.NATS, Answer.OTHER) or time.monotonic() >= deadline:
            return False
        time.sleep(_PORT_POLL_S)
    return True


def tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or '' if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Child:
    """One worker or scheduler process started by this kernel."""

    kind: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the child has not exited."""
        return self.process.poll() is None

    def state(self) -> str:
        """`running` or `exited (code N)`."""
        code = self.process.poll()
        return "running" if code is None else f"exited (code {code})"

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the child's whole process group (its own session), if it still runs."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)


class Processes:
    """The children of this kernel: at most one embedded nats-server and scheduler, any number of workers."""

    def __init__(self) -> None:
        self.server: NatsServer | None = None
        self.served_url: str | None = None
        self.children: list[Child] = []
        self._log_dir: Path | None = None
        self._started: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def log_dir(self) -> Path:
        """One temp directory per kernel for the children's logs, made on first use."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix=f"naq_ipy-{os.getpid()}-"))
        return self._log_dir

    def start_server(self, url: str) -> NatsServer:
        """Start an embedded nats-server standing in for loopback `url`: on its port if free, else a free one.

        A server of this machine still stopping on that port is waited for (`wait_port_free`).
        """
        port = loopback_port(url)
        if port is None:
            raise NaqException(f"will not start a server for {url}: not a single local address")
        if self.server is not None and self.server.running:
            return self.server
        server = NatsServer(port=port if wait_port_free(port) else free_port(), store_dir=default_store_dir())
        self.server, self.served_url = server.start(), url
        return server

    def stop_server(self) -> NatsServer | None:
        """Stop the embedded server; returns it, or None if this kernel runs none."""
        server, self.server, self.served_url = self.server, None, None
        if server is None or not server.running:
            return None
        server.stop()
        return server

    def start(self, kind: str, args: list[str], url: str, names: Sequence[str] = ()) -> Child:
        """Start `python -m naq_ipy.cli <kind> ARGS -- NAMES` for `url` with its log in `log_dir`; raise if it
        exits at once.

        `names` (queue names) follow `--`, so a name can never be read as an option. The URL goes
        in the child's environment (`NAQ_URL`), not its command line, where any user of the
        machine could read its credentials.
        """
        command = [sys.executable, "-m", "naq_ipy.cli", kind, *args, *(["--", *names] if names else [])]
        with self._lock:
            self._started[kind] += 1
            log_path = self.log_dir / f"{kind}-{self._started[kind]}.log"
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env={**os.environ, "NAQ_URL": url, "PYTHONUNBUFFERED": "1"},
                )
            child = Child(kind, command, log_path, process)
            self.children.append(child)
        try:
            code = process.wait(START_CHECK_S)
        except subprocess.TimeoutExpired:
            return child
        raise NaqException(f"{kind} exited at once with code {code}; log {log_path}:\n{tail(log_path)}")

    def running(self, kind: str) -> list[Child]:
        """This kernel's live children of `kind`."""
        return [c for c in self.children if c.kind == kind and c.running]

    def stop(self, kind: str | None = None, timeout_s: float = STOP_TIMEOUT_S) -> list[Child]:
        """Stop children (of `kind`, or all): SIGTERM, then SIGKILL after `timeout_s`; returns those stopped."""
        with self._lock:
            chosen = [c for c in self.children if kind is None or c.kind == kind]
            self.children = [c for c in self.children if c not in chosen]
        live = [c for c in chosen if c.running]
        for child in live:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in live:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.process.wait()
        for child in chosen:
            child.process.poll()  # reap one that exited on its own
        return live

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every child, then the embedded server (last: the others may still talk to it)."""
        self.stop(timeout_s=timeout_s)
        self.stop_server()


PROCESSES = Processes()


@atexit.register
def _stop_at_exit() -> None:
    PROCESSES.stop_all(timeout_s=EXIT_STOP_TIMEOUT_S)

