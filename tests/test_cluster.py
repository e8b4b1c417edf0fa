"""A 3-node JetStream cluster with replicas=3 for the job stream and every bucket: one node lost, nothing lost.

Clients get the comma-separated URL list (or one seed URL: nats-py learns the other nodes from
the server) and move to another node when theirs dies. Each job marks its own token in a file,
so a lost job or a second run shows up in the counts; no worker crashes in these tests, so no
job may run twice. That promise holds while the failover takes less than the consumer's ack wait:
a job redelivered during a longer outage can start again before its first run's outcome is written.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jobs
import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from polling import eventually
from test_scheduler import interval_runs, quarter_after
from test_scheduler import running as running_scheduler
from test_worker import Spawn, spawn_worker  # noqa: F401 - spawn_worker is a fixture

from naq_ipy import ConnectionSettings, Job, NaqException, Queue
from naq_ipy.client.job import read_header
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.wire import names
from naq_ipy.wire.connection import close_all, get_connection
from naq_ipy.wire.server import NatsServer

pytestmark = pytest.mark.slow

REPLICAS = 3
JOBS = 2000
BATCH = 100
ACK_WAIT_S = 15  # longer than a failover (~5 s here): a redelivery during it could race the first run's outcome
BUCKETS = (names.SCHEDULED_JOBS_KV_NAME, names.JOB_STATUS_KV_NAME, names.RESULTS_KV_NAME, names.WORKERS_KV_NAME,
           names.SCHEDULER_CLOCK_KV_NAME, names.CANCEL_REQUESTS_KV_NAME)


def replicated(urls: Sequence[str]) -> ConnectionSettings:
    """Settings for the whole cluster (URL list) with 3 replicas for everything naq creates."""
    return ConnectionSettings.resolve(",".join(urls), replicas=REPLICAS)


async def create_replicated(settings: ConnectionSettings) -> JetStreamContext:
    """Create the streams and every bucket with 3 replicas before any worker or scheduler starts."""
    conn = await get_connection(settings)
    await conn.ensure_stream()
    await conn.ensure_stream(names.FAILED_STREAM_NAME)
    for bucket in BUCKETS:
        await conn.kv(bucket)
    for stream in (names.JOB_STREAM_NAME, names.FAILED_STREAM_NAME, *(f"KV_{b}" for b in BUCKETS)):
        assert (await conn.js.stream_info(stream)).config.num_replicas == REPLICAS
    return conn.js


def busiest_worker_node(nodes: Sequence[NatsServer]) -> NatsServer:
    """The node with the most naq worker connections (read from its /connz monitoring page)."""

    def workers_on(node: NatsServer) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/connz", timeout=2) as page:
            connections = json.load(page).get("connections") or []
        return sum(c.get("name", "").startswith("naq-worker") for c in connections)

    return max(nodes, key=workers_on)


async def enqueue_until_acked(queue: Queue, batch: list[Job], timeout_s: float = 30.0) -> None:
    """Enqueue prepared jobs, re-sending the batch until the cluster acks it (same ids: no duplicates)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await queue.enqueue_many(batch)
            return
        except (NaqException, nats.errors.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


def tokens(path: Path) -> Counter[str]:
    """How often each token was marked in `path`."""
    if not path.exists():
        return Counter()
    return Counter(line.split(" ", 1)[1] for line in path.read_text().splitlines())


async def test_2000_jobs_through_a_node_loss_each_run_exactly_once(
    nats_cluster_nodes: list[NatsServer], nats_cluster: list[str], spawn_worker: Spawn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    settings = replicated(nats_cluster)
    js = await create_replicated(settings)
    monkeypatch.setenv("NAQ_REPLICAS", str(REPLICAS))
    workers = [spawn_worker(settings.url, "cluster", "-c", "10", "--ack-wait", str(ACK_WAIT_S)) for _ in range(2)]
    path = tmp_path / "marks"
    queue = Queue("cluster", settings)
    prepared = [queue.job(jobs.mark, (str(path), f"job-{i}")) for i in range(JOBS)]
    victim: NatsServer | None = None
    for start in range(0, JOBS, BATCH):
        await enqueue_until_acked(queue, prepared[start:start + BATCH])
        if start == 5 * BATCH:  # a worker's node dies while jobs are queued and running
            await eventually(lambda: len(tokens(path)) > 200, timeout_s=30, what="workers to be busy")
            victim = busiest_worker_node(nats_cluster_nodes)
            victim.kill()
        await asyncio.sleep(0.05)
    assert victim is not None
    await eventually(lambda: len(tokens(path)) > JOBS * 3 // 4, timeout_s=60, what="most jobs to run")
    await asyncio.to_thread(victim.start)
    await asyncio.to_thread(victim.wait_ready, 30, full=True)
    await eventually(lambda: len(tokens(path)) == JOBS, timeout_s=60, what="every job to run")
    await asyncio.sleep(ACK_WAIT_S + 1)  # room for a wrong redelivery to show
    counts = tokens(path)
    assert set(counts) == {f"job-{i}" for i in range(JOBS)}
    assert [token for token, n in counts.items() if n > 1] == [], "jobs ran twice without a worker crash"
    assert [worker.poll() for worker in workers] == [None, None], "a worker died (exit codes)"
    assert (await js.stream_info(names.JOB_STREAM_NAME)).state.messages == 0
    await close_all()


@dataclass(frozen=True)
class Run:
    """One queued run of a schedule, as stored in the job stream."""

    key: str
    due: float
    stored_at: float


async def runs_on(js: JetStreamContext, queue: str) -> list[Run]:
    """Every message left on `naq.queue.<queue>`, in stream order, read without consuming it."""
    info = await js.stream_info(names.JOB_STREAM_NAME)
    runs, seq = [], info.state.first_seq
    while info.state.messages and seq <= info.state.last_seq:
        try:
            msg = await js.get_msg(names.JOB_STREAM_NAME, seq=seq, subject=f"naq.queue.{queue}", next=True)
        except nats.js.errors.NotFoundError:
            break
        header, _ = read_header(msg.data or b"")
        assert msg.seq is not None and msg.time is not None
        runs.append(Run(header["schedule_key"], header["enqueue_time"], msg.time.timestamp()))
        seq = msg.seq + 1
    return runs


def assert_grid(runs: list[Run], key: str, dues: list[float]) -> None:
    """The runs of `key` are exactly `dues`: none lost, none doubled."""
    assert sorted(run.due for run in runs if run.key == key) == dues, f"{key}: a run was lost or doubled"


async def test_schedulers_on_different_nodes_fire_exactly_once_across_a_node_loss(
    nats_cluster_nodes: list[NatsServer], nats_cluster: list[str],
) -> None:
    js = await create_replicated(replicated(nats_cluster))
    # one seed URL each, so they start on different nodes; each learns the others from the server
    seeds = [ConnectionSettings.resolve(url, replicas=REPLICAS) for url in nats_cluster[:2]]
    keys, count, step = [f"tick{k}" for k in range(4)], 24, 0.5
    start = quarter_after(1.5)
    async with running_scheduler(seeds[0]) as first, running_scheduler(seeds[1]) as second:
        assert first._connection.nc.connected_url != second._connection.nc.connected_url
        for k, key in enumerate(keys):
            await Queue("ticks", replicated(nats_cluster)).schedule(
                jobs.add, k, 0, interval=step, repeat=count, name=key, start_at=start + k * 0.1)
        await asyncio.sleep(3)
        nats_cluster_nodes[0].kill()  # the first scheduler's node
        await asyncio.sleep(4)
        await asyncio.to_thread(nats_cluster_nodes[0].start)
        manager = ScheduledJobManager(replicated(nats_cluster))

        async def all_done() -> bool:
            try:
                return not await manager.list()
            except NaqException:  # this client fails over too
                return False

        deadline = time.monotonic() + 30
        while not await all_done():
            assert time.monotonic() < deadline, "the schedules did not finish"
            await asyncio.sleep(0.2)
        now_on = first._connection.nc.connected_url
        assert now_on is not None and now_on.port != int(nats_cluster[0].rsplit(":", 1)[1]), "no failover"
    runs = await runs_on(js, "ticks")
    for k, key in enumerate(keys):
        assert_grid(runs, key, interval_runs(start + k * 0.1, step, count))
    await close_all()
