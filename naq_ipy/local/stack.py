"""A local naq stack in one call: a nats-server (or the one already answering), one worker and one scheduler.

`naq lab` and the notebook tests use it. The worker and scheduler are started and stopped by
`naq_ipy.local.processes.Processes` (plain Python, no IPython), the server by `NatsServer`;
every child runs in its own session, so a Ctrl-C in the terminal reaches only the owner, which
then stops them in order: workers and scheduler first, the server last.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import nats.js.errors
from nats.js.kv import KeyValue

from naq_ipy.client.bridge import run_sync
from naq_ipy.errors import ConfigurationError, NaqConnectionError, NaqException
from naq_ipy.local.processes import Child, Processes, loopback_port, tail, wait_port_free
from naq_ipy.wire.connection import connect
from naq_ipy.wire.names import SCHEDULER_CLOCK_KV_NAME, WORKERS_KV_NAME
from naq_ipy.wire.server import NatsServer, default_store_dir, free_port, is_reachable
from naq_ipy.wire.settings import DEFAULT_QUEUE_NAME, ConnectionSettings, redact_url

READY_TIMEOUT_S = 30.0
_READY_POLL_S = 0.1
# a stop at Ctrl-C should be quick: a job still running after this goes back to its queue
WORKER_GRACE_S = 5.0


def local_url(port: int) -> str:
    """`nats://127.0.0.1:PORT`; port 0 picks a free one."""
    return f"nats://127.0.0.1:{port or free_port()}"


async def _has_key(kv: KeyValue, key: str) -> bool:
    try:
        await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return False
    return True


class LocalStack:
    """A NATS server for `url` (started only if nothing answers there), one worker and one scheduler.

    `url`: the NATS URL to use, or to serve if it is a local address nobody answers on (default
    `$NAQ_URL`, else `nats://127.0.0.1:4222`). `data_dir`: JetStream data of a server started here
    (default `default_store_dir()`). `queues`, `concurrency`: the worker's. Logs go to `log_dir`.
    """

    def __init__(self, url: str | None = None, *, data_dir: Path | None = None,
                 queues: Sequence[str] = (DEFAULT_QUEUE_NAME,), concurrency: int = 4) -> None:
        self.url = url or os.environ.get("NAQ_URL") or local_url(4222)
        self.data_dir = Path(data_dir) if data_dir is not None else default_store_dir()
        self.queues = list(queues)
        self.concurrency = concurrency
        self.server: NatsServer | None = None
        self.children = Processes()
        suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.worker_id, self.scheduler_id = f"stack-worker-{suffix}", f"stack-scheduler-{suffix}"

    @property
    def log_dir(self) -> Path:
        """The folder holding the worker's and scheduler's logs (and a started server's)."""
        return self.children.log_dir

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LocalStack:
        """Find or start the server, start the worker and the scheduler, and wait until both are live."""
        atexit.register(self.stop)  # a second Ctrl-C during a stop must not leave children running
        try:
            self._serve()
            self.children.start("worker", ["-c", str(self.concurrency), "--worker-id", self.worker_id,
                                           "--grace", str(WORKER_GRACE_S)], url=self.url, names=self.queues)
            self.children.start("scheduler", ["--id", self.scheduler_id], url=self.url)
            run_sync(self._wait_ready(timeout_s))
        except BaseException:
            self.stop()
            raise
        return self

    def _serve(self) -> None:
        if is_reachable(self.url):
            return
        port = loopback_port(self.url)
        if port is None:
            raise NaqConnectionError(f"no NATS server answers at {redact_url(self.url)}")
        if not wait_port_free(port):
            raise ConfigurationError(f"port {port} is taken by something that is not a NATS server: "
                                     "pick another port")
        server = NatsServer(port=port, store_dir=self.data_dir, log_file=self.log_dir / "nats-server.log")
        self.server = server.start()

    async def _wait_ready(self, timeout_s: float) -> None:
        """Until the worker's heartbeat and the scheduler's clock key are in NATS; raise if one exits."""
        # an unpooled connection, closed here: nothing of the stack's own is left connected at stop()
        conn = await connect(ConnectionSettings.resolve(self.url), name="naq-stack")
        try:
            workers, clock = await conn.kv(WORKERS_KV_NAME), await conn.kv(SCHEDULER_CLOCK_KV_NAME)
            deadline = time.monotonic() + timeout_s
            while not (await _has_key(workers, self.worker_id) and await _has_key(clock, self.scheduler_id)):
                dead = [c for c in self.children.children if not c.running]
                if dead:
                    raise NaqException(f"{dead[0].kind} exited with {dead[0].state()}; log {dead[0].log_path}:\n"
                                       f"{tail(dead[0].log_path)}")
                if time.monotonic() > deadline:
                    raise NaqException(f"worker or scheduler not live after {timeout_s:.0f} s; logs in {self.log_dir}")
                await asyncio.sleep(_READY_POLL_S)
        finally:
            await conn.nc.close()

    def stop(self) -> None:
        """Stop the worker and scheduler (SIGTERM, then SIGKILL), then a server started here; idempotent."""
        atexit.unregister(self.stop)
        self.children.stop()
        if self.server is not None:
            self.server.stop()

    def processes(self) -> list[tuple[str, int]]:
        """(kind, pid) of every process started here that still runs."""
        found = [(c.kind, c.pid) for c in self.children.children if c.running]
        if self.server is not None and self.server.running and self.server.pid is not None:
            found.insert(0, ("nats-server", self.server.pid))
        return found

    def describe(self) -> list[str]:
        """One line per part: where the server is, the worker and scheduler pids, the logs."""
        if self.server is not None:
            lines = [f"nats-server  {self.server.url} (pid {self.server.pid}, data in {self.server.store_dir})"]
        else:
            lines = [f"nats-server  {redact_url(self.url)} (already running: not started here)"]
        children: list[Child] = self.children.children
        lines += [f"{c.kind:<12} pid {c.pid}" + (f" on {', '.join(self.queues)}" if c.kind == "worker" else "")
                  for c in children]
        lines.append(f"logs         {self.log_dir}")
        return lines
