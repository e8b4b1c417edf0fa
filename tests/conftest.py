"""Shared fixtures: a real nats-server per session, a clean URL per test, extra servers on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from magic_shell import RaisingShell, make_shell
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StorageType, StreamConfig

import naq_ipy.client.bridge
from naq_ipy.wire.server import NatsServer, free_ports


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server on a free port for the whole session."""
    server = NatsServer(port=None, store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


# A file stream never deleted, so that emptying the server never empties the account's `streams`
# directory: nats-server removes that directory from a goroutine after the account's last stream is
# deleted, and a stream created before it ran can lose the directory under it ("error creating store
# for stream", 10049; the server's log says "could not create storage directory ... no such file").
KEEPER_STREAM = "naq_test_keeper"


async def _delete_all_streams(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(KEEPER_STREAM)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=KEEPER_STREAM, subjects=[KEEPER_STREAM], storage=StorageType.FILE))
        # KV buckets and object stores are streams too (KV_*, OBJ_*); listed again until none is
        # left, so that no test starts beside the last one's leftovers
        for _ in range(50):
            left = [info.config.name for info in await js.streams_info()
                    if info.config.name and info.config.name != KEEPER_STREAM]
            if not left:
                return
            for name in left:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)
        raise RuntimeError(f"streams still there after deleting them: {left}")
    finally:
        await nc.close()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session server, emptied of every stream and KV bucket (but `KEEPER_STREAM`) before the test."""
    # the sync bridge's pooled connection caches stream/bucket handles: start each test without it
    naq_ipy.client.bridge.stop_bridge()
    asyncio.run(_delete_all_streams(nats_server.url))
    return nats_server.url


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Make extra servers (started unless `start=False`) in tmp dirs; all stopped at teardown."""
    servers: list[NatsServer] = []

    def make(*, start: bool = True, **kwargs: Any) -> NatsServer:
        kwargs.setdefault("store_dir", tmp_path / f"nats{len(servers)}")
        server = NatsServer(**kwargs)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()


# --- raw nats-py views of what naq wrote (for tests of the core) ---


@pytest.fixture
async def raw_js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A plain nats-py JetStream context on the clean test server (not naq's pool)."""
    nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def stream_msgs(raw_js: JetStreamContext) -> Callable[..., Awaitable[list[RawStreamMsg]]]:
    """`await stream_msgs(subject)`: every message of `naq_jobs` on `subject`, in order, read without consuming."""

    async def read(subject: str = "naq.queue.>", stream: str = "naq_jobs") -> list[RawStreamMsg]:
        try:
            info = await raw_js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        found: list[RawStreamMsg] = []
        seq = info.state.first_seq
        while info.state.messages and seq <= info.state.last_seq:
            try:
                msg = await raw_js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            found.append(msg)
            seq = (msg.seq or seq) + 1
        return found

    return read


@pytest.fixture
def kv_snapshot(raw_js: JetStreamContext) -> Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]:
    """`await kv_snapshot(bucket)`: {key: (value, revision)} of a KV bucket ({} if it does not exist)."""

    async def read(bucket: str = "naq_scheduled_jobs") -> dict[str, tuple[bytes, int]]:
        # read the bucket's stream message by message: kv.keys() is a watcher and can end early
        try:
            info = await raw_js.stream_info(f"KV_{bucket}")
        except nats.js.errors.NotFoundError:
            return {}
        prefix = f"$KV.{bucket}."
        found: dict[str, tuple[bytes, int]] = {}
        seq = info.state.first_seq
        while info.state.messages and seq <= info.state.last_seq:
            try:
                msg = await raw_js.get_msg(f"KV_{bucket}", seq=seq, subject=f"{prefix}>", next=True)
            except nats.js.errors.NotFoundError:
                break
            assert msg.subject is not None and msg.seq is not None
            key = msg.subject[len(prefix):]
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                found.pop(key, None)
            else:
                found[key] = (msg.data or b"", msg.seq)
            seq = msg.seq + 1
        return found

    return read


# --- a 3-node JetStream cluster (tests/test_cluster.py, tests/test_faults.py) ---


def cluster_node_options(count: int = 3, prefix: str = "node") -> list[dict[str, Any]]:
    """NatsServer keywords for `count` nodes routed to each other, every port (client, monitor, route) distinct.

    The nodes start at once and bind their ports only then: ports picked one by one beforehand
    could repeat, and a node whose route port is another node's client port never joins the meta group.
    """
    ports = free_ports(3 * count)
    cluster_ports = ports[2 * count:]
    routes = [f"nats://127.0.0.1:{port}" for port in cluster_ports]
    return [dict(port=ports[2 * i], monitor_port=ports[2 * i + 1], server_name=f"{prefix}{i}", cluster_name="naq-test",
                 cluster_port=cluster_ports[i], routes=routes) for i in range(count)]


@pytest.fixture
def nats_cluster_nodes(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three JetStream nodes on loopback, routed to each other, each with its own store dir; stopped at teardown."""
    nodes = [NatsServer(store_dir=tmp_path / options["server_name"], **options) for options in cluster_node_options()]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready(30, full=True)  # full: JetStream has a meta leader
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def nats_cluster(nats_cluster_nodes: list[NatsServer]) -> list[str]:
    """Client URLs of the three nodes of `nats_cluster_nodes` (join them with "," for ConnectionSettings)."""
    return [node.url for node in nats_cluster_nodes]


# --- IPython shells for the magics (see tests/magic_shell.py) --------------------------------

@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No NAQ_URL from outside; the user data dir (embedded server data) under tmp_path."""
    monkeypatch.delenv("NAQ_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def bare_shell(isolated: Path) -> Iterator[Any]:
    """Factory of one shell (config keywords go to NaqMagics) with naq_ipy loaded; unloaded at the end."""
    shells: list[RaisingShell] = []

    def make(**naq: Any) -> RaisingShell:
        shell = make_shell(**naq)
        shell.run_line_magic("load_ext", "naq_ipy")
        shells.append(shell)
        return shell

    yield make
    for shell in shells:
        shell.run_line_magic("unload_ext", "naq_ipy")
    RaisingShell.clear_instance()


@pytest.fixture
def ip(bare_shell: Any, nats_url: str) -> RaisingShell:
    """A shell with naq_ipy loaded, talking to the test server; `add` and `x` defined."""
    shell = bare_shell(url=nats_url)
    shell.run_cell("def add(a, b=1):\n    return a + b\nx = 5")
    return shell
