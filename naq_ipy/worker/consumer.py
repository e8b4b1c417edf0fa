"""Worker: runs the jobs of one or more queues with retries, timeouts, dependencies and heartbeats.

Each queue is read through the durable pull consumer `naq-worker-<queue>` shared by all
workers of that queue; a worker fetches only as many messages as it has free slots. A
message is acked only after its outcome (result + status, or failure record) is written;
`msg.in_progress()` keeps every held message from being redelivered while it runs or
waits for its dependencies. Retries are counted from the server's delivery count. Cancel requests
(KV `naq_cancel_requests`, one watch per worker: worker/cancel_watch.py) keep jobs from starting, stop
the ones it runs and are recorded in the jobs' statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from naq_ipy.client.bridge import StopRequests
from naq_ipy.errors import ConfigurationError, NaqConnectionError, NaqException
from naq_ipy.status.payload_sweep import sweep_forever
from naq_ipy.status.workers import list_workers as list_workers  # its old home; it lives in status/workers.py
from naq_ipy.status.workers import read_heartbeat as read_heartbeat  # likewise
from naq_ipy.wire import names
from naq_ipy.wire.connection import connect, kv_put, nats_errors
from naq_ipy.wire.names import JOB_STREAM_NAME
from naq_ipy.wire.pull_feed import PullFeed
from naq_ipy.wire.settings import (
    DEFAULT_QUEUE_NAME,
    ConnectionSettings,
    validate_key,
    validate_queue_name,
)
from naq_ipy.worker.cancel_watch import CancelWatch
from naq_ipy.worker.delivery import DeliveryState, Stopping
from naq_ipy.worker.executor import Executor
from naq_ipy.worker.runner import JobRunner

logger = logging.getLogger(__name__)

CONNECT_RETRY_S = 30.0
BIND_RETRY_S = 1.0
CLOSE_TIMEOUT_S = 2.0
FETCH_WAIT_S = 1.0  # an idle fetch lingers this long; a stop waits at most this for it
FETCH_MORE_WAIT_S = 0.05
ERROR_PAUSE_S = 0.5


def default_worker_id() -> str:
    """`<host>-<pid>-<6 hex>`, usable as a KV key."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker(JobRunner, StopRequests):
    """Runs jobs from `queues` with `concurrency` slots until stopped.

    `process_pool`: plain functions run in child processes (killed at their timeout) instead of
    threads. `heartbeat_s`: seconds between heartbeats (each lives 3x as long). `ack_wait_s`:
    the consumer's ack wait when this worker creates it. `grace_s`: how long a stop waits for
    running jobs before returning them to the queue. `capture_output`: publish each job's stdout,
    stderr, logging and warnings (see `naq_ipy.worker.output`).
    """

    def __init__(
        self, queues: Sequence[str] | str = DEFAULT_QUEUE_NAME, *, concurrency: int = 10,
        url: str | ConnectionSettings | None = None, process_pool: bool = False, worker_id: str | None = None,
        heartbeat_s: float = 5.0, ack_wait_s: float = 30.0, grace_s: float = 30.0, capture_output: bool = True,
    ) -> None:
        queue_names = [queues] if isinstance(queues, str) else list(queues)
        self.queues = [validate_queue_name(q) for q in dict.fromkeys(queue_names)]
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        for name, value in (("heartbeat_s", heartbeat_s), ("ack_wait_s", ack_wait_s), ("grace_s", grace_s)):
            if not isinstance(value, int | float) or value < 0 or (value == 0 and name != "grace_s"):
                raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
        super().__init__(validate_key(worker_id or default_worker_id(), "worker id"), concurrency)
        self.capture_output = capture_output
        self.settings = ConnectionSettings.resolve(url)
        self.process_pool = process_pool
        self.heartbeat_s, self.ack_wait_s, self.grace_s = float(heartbeat_s), float(ack_wait_s), float(grace_s)
        self.started_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._progress_s = self.ack_wait_s / 3
        self._signals: list[signal.Signals] = []
        self._feeds: list[PullFeed] = []
        self._cancel_watch: CancelWatch | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} queues={self.queues} concurrency={self.concurrency}>"

    async def run(self) -> None:
        """Serve the queues until `stop()`, `request_stop()` or a signal, then shut down gracefully."""
        if self._loop is not None:
            raise NaqException(f"worker {self.worker_id} is already running")
        self._loop = asyncio.get_running_loop()
        self._new_run_state()
        if self._stop_requested:
            self._begin_stop()
        tasks: list[asyncio.Task[None]] = []
        try:
            self._conn = await connect(self.settings, name=f"naq-worker {self.worker_id}", retry_s=CONNECT_RETRY_S)
            self._executor = Executor(self.concurrency, self.process_pool)
            await self._conn.ensure_stream()
            # every stored request is known before the first fetch: a job asked to stop never starts
            self._cancel_watch = CancelWatch(self._conn, self.worker_id, self.cancel_requests, self.stop_job)
            await self._cancel_watch.start()
            subs = [await self._bind(queue) for queue in self.queues]
            self._feeds = [feed for feed, _ in subs]
            self._progress_s = min(ack_wait for _, ack_wait in subs) / 3
            self.started_at = time.time()
            fetchers = [asyncio.create_task(self._fetch_loop(feed)) for feed in self._feeds]
            tasks = [*fetchers, asyncio.create_task(self._heartbeat_loop()),
                     asyncio.create_task(self._progress_loop()), asyncio.create_task(sweep_forever(self._conn))]
            logger.info("worker %s started on %s (concurrency %d, %s)", self.worker_id, ",".join(self.queues),
                        self.concurrency, "processes" if self.process_pool else "threads")
            await self._stopping.wait()
            await self._drain(fetchers)
        finally:
            await self._close(tasks)

    async def _drain(self, fetchers: list[asyncio.Task[None]]) -> None:
        """Stop fetching, give running jobs `grace_s`, then return what is left to the queue."""
        logger.info("worker %s stopping: %d job(s) in hand", self.worker_id, len(self._deliveries))
        await asyncio.gather(*fetchers, return_exceptions=True)
        held = dict(self._deliveries)  # waiting messages return themselves as soon as the stop is seen
        if held:
            _, late = await asyncio.wait(held, timeout=self.grace_s)
            await self._abandon({task: held[task] for task in late})

    def _begin_stop(self) -> None:
        super()._begin_stop()
        for feed in self._feeds:
            feed.cancel()  # an idle pull lingers FETCH_WAIT_S: end it now

    async def _close(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for feed in self._feeds:  # no more messages handed over once the held ones are returned
            with contextlib.suppress(Exception):
                await feed.close()
        self._feeds = []
        if self._cancel_watch is not None:
            await self._cancel_watch.stop()
        if self._conn is not None and not self._conn.nc.is_closed:
            await self._abandon(dict(self._deliveries))
            if self._conn.nc.is_connected:  # with the server gone, the heartbeat expires on its own
                try:
                    await asyncio.wait_for(self._remove_heartbeat(), CLOSE_TIMEOUT_S)
                except Exception as e:
                    logger.warning("worker %s: could not remove its heartbeat: %s", self.worker_id, e)
            with contextlib.suppress(Exception):  # a server that vanished mid-close is not our error
                await asyncio.wait_for(self._conn.nc.close(), CLOSE_TIMEOUT_S)
        if self._executor is not None:
            self._executor.shutdown()
        self._remove_signal_handlers()
        self._conn = self._executor = self._loop = self._cancel_watch = None
        self._stop_requested = False
        self._stopped.set()
        logger.info("worker %s stopped (processed %d, failed %d)", self.worker_id, self.processed, self.failed)

    async def _remove_heartbeat(self) -> None:
        assert self._conn is not None
        kv = await self._conn.kv(names.WORKERS_KV_NAME)
        await kv.purge(self.worker_id, msg_ttl=max(1.0, 3 * self.heartbeat_s))
        await self._conn.nc.flush(timeout=CLOSE_TIMEOUT_S)

    async def stop(self) -> None:
        """Stop gracefully and wait until the worker has shut down (call on the worker's loop)."""
        self._stop_requested = True
        if self._loop is not None:
            self._begin_stop()
            await self._stopped.wait()

    def install_signal_handlers(self) -> bool:
        """Make SIGTERM and SIGINT stop the worker gracefully; only on the main thread (else False)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append(sig)
        return True

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("worker %s got %s: stopping", self.worker_id, sig.name)
        self.request_stop()

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        while self._signals:
            loop.remove_signal_handler(self._signals.pop())

    async def _bind(self, queue: str) -> tuple[PullFeed, float]:
        """`_subscribe`, tried again for CONNECT_RETRY_S while the server does not answer (a cluster electing
        its leaders after a start), as the first connection is: a worker waits for its server, it does not exit."""
        deadline = time.monotonic() + CONNECT_RETRY_S
        while True:
            try:
                return await self._subscribe(queue)
            except NaqConnectionError as e:
                if time.monotonic() > deadline or self._stopping.is_set():
                    raise
                logger.warning("worker %s: cannot bind to queue %s yet (%s); trying again", self.worker_id, queue, e)
                await asyncio.sleep(BIND_RETRY_S)

    async def _subscribe(self, queue: str) -> tuple[PullFeed, float]:
        """Bind to the queue's durable consumer (created if missing, else kept as it is); also its ack wait."""
        durable, js = names.worker_durable(queue), self.conn.js
        config = api.ConsumerConfig(
            durable_name=durable, name=durable, filter_subject=names.queue_subject(queue),
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s, max_deliver=-1,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        async with nats_errors(self.settings):
            try:
                info = await js.consumer_info(JOB_STREAM_NAME, durable)
            except nats.js.errors.NotFoundError:
                try:
                    info = await js.add_consumer(JOB_STREAM_NAME, config)
                except nats.js.errors.BadRequestError:
                    info = await js.consumer_info(JOB_STREAM_NAME, durable)  # made concurrently by another worker
        return PullFeed(self.conn, JOB_STREAM_NAME, durable, self.start), info.config.ack_wait or self.ack_wait_s

    async def _fetch_loop(self, feed: PullFeed) -> None:
        """Keep up to `room` messages in hand: pulls that linger FETCH_WAIT_S when idle, FETCH_MORE_WAIT_S while
        busy; each message starts as it arrives."""
        idle = True
        while not self._stopping.is_set():
            try:
                await self.wait_for_room()
            except Stopping:
                return
            try:
                idle = not await feed.pull(self.room, FETCH_WAIT_S if idle else FETCH_MORE_WAIT_S)
            except Exception as e:  # a disconnect, a deleted consumer: log, pause, go on
                logger.warning("worker %s: fetch failed: %s", self.worker_id, e)
                await asyncio.sleep(ERROR_PAUSE_S)
            await asyncio.sleep(0)  # let the new handlers take their slots before room is counted again

    async def _progress_loop(self) -> None:
        """Tell the server every ack_wait/3 that each held message is still being worked on."""
        while True:
            await asyncio.sleep(self._progress_s)
            for delivery in list(self._deliveries.values()):
                if not delivery.settled:
                    try:
                        await delivery.msg.in_progress()
                    except nats.errors.Error as e:
                        logger.warning("job %s: progress ack failed: %s", delivery.job_id, e)

    def heartbeat(self) -> dict[str, Any]:
        """This worker's heartbeat record (what `list_workers` returns)."""
        held = list(self._deliveries.values())
        return {
            "worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "queues": self.queues,
            "concurrency": self.concurrency, "process_pool": self.process_pool,
            "current_jobs": [d.job_id for d in held if d.state == DeliveryState.RUNNING],
            "waiting_jobs": [d.job_id for d in held if d.state == DeliveryState.WAITING],
            "processed": self.processed, "failed": self.failed, "started_at": self.started_at,
            "heartbeat_at": time.time(),
        }

    async def _heartbeat_loop(self) -> None:
        """Write the heartbeat every `heartbeat_s`, each living 3 x `heartbeat_s`."""
        while True:
            try:
                await kv_put(self.conn, names.WORKERS_KV_NAME, self.worker_id, json.dumps(self.heartbeat()).encode(),
                             ttl_s=3 * self.heartbeat_s)
            except Exception as e:  # a missed beat is not fatal; the next one may get through
                logger.warning("worker %s: heartbeat failed: %s", self.worker_id, e)
            await asyncio.sleep(self.heartbeat_s)
