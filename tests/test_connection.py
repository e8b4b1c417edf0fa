"""Connections: bounded failures, no leaked credentials, pooling per loop, streams and buckets left as found."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from conftest import cluster_node_options
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StreamConfig

import naq_ipy
from naq_ipy import ConnectionSettings, NaqConnectionError, NaqException, Queue, SerializationError
from naq_ipy.wire import acks, names
from naq_ipy.wire.connection import close_all, connect, get_connection, publish
from naq_ipy.wire.server import NatsServer, free_port

Factory = Callable[..., NatsServer]
SECRETS = ("secret", "s3cr3t-token", "hunter2")


def add(a: int, b: int = 0) -> int:
    return a + b


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {text!r}"


# --- failures are bounded and never show credentials ---


async def test_refused_url_fails_fast_naming_the_url() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(NaqConnectionError, match=f"nats://127.0.0.1:{port} not reachable"):
        await get_connection(f"nats://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


async def test_silent_server_fails_within_the_connect_timeout(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(NaqConnectionError, match=f"127.0.0.1:{silent_port}"):
        await get_connection(f"nats://127.0.0.1:{silent_port}")
    assert time.monotonic() - started < 5


def test_sync_helper_on_an_unreachable_url_raises_too() -> None:
    started = time.monotonic()
    with pytest.raises(NaqConnectionError):
        naq_ipy.enqueue_sync(add, 1, nats_url=f"nats://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "url",
    ["nats://user:secret@127.0.0.1:1", "nats://s3cr3t-token@127.0.0.1:1",
     "nats://user:secret@127.0.0.1:1,nats://user:hunter2@127.0.0.1:2"],
)
async def test_credentials_in_the_url_never_show(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NaqConnectionError) as info:
        await get_connection(url)
    _no_secret(str(info.value))
    _no_secret(repr(info.value))
    assert "127.0.0.1:1" in str(info.value) and "***@" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _no_secret(caplog.text)
    _no_secret(repr(ConnectionSettings.resolve(url)))
    _no_secret(repr(Queue(nats_url=url)))


def test_settings_repr_hides_password_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ConnectionSettings.resolve("nats://user:secret@h:4222", password="hunter2", token="s3cr3t-token")
    _no_secret(repr(settings))
    _no_secret(str(settings))
    assert "nats://***@h:4222" in repr(settings) and "replicas=1" in repr(settings)
    monkeypatch.setenv("NAQ_PASSWORD", "hunter2")
    monkeypatch.setenv("NAQ_USER", "me")
    from_env = ConnectionSettings.resolve("nats://h:4222")
    assert from_env.password == "hunter2" and from_env.user == "me"
    _no_secret(repr(from_env))


def test_url_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAQ_URL", raising=False)
    assert ConnectionSettings.resolve().url == "nats://127.0.0.1:4222"
    monkeypatch.setenv("NAQ_URL", "nats://from-env:4333")
    assert ConnectionSettings.resolve().url == "nats://from-env:4333"
    assert ConnectionSettings.resolve("nats://explicit:1").url == "nats://explicit:1"
    assert Queue().settings.url == "nats://from-env:4333"
    monkeypatch.setenv("NAQ_REPLICAS", "3")
    assert ConnectionSettings.resolve().replicas == 3
    monkeypatch.setenv("NAQ_REPLICAS", "0")
    with pytest.raises(naq_ipy.ConfigurationError, match="replicas"):
        ConnectionSettings.resolve()


async def test_auth_options_pass_through_and_failures_hide_them(
    nats_server_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "auth.conf"
    config.write_text('authorization { user: "naq", password: "hunter2" }\n')
    server = nats_server_factory(config_file=config)
    caplog.set_level(logging.DEBUG)
    good = ConnectionSettings.resolve(server.url, user="naq", password="hunter2")
    job = await Queue("auth", good).enqueue(add, 1)
    assert job.queue_name == "auth"
    in_url = f"nats://naq:hunter2@127.0.0.1:{server.port}"
    assert (await get_connection(in_url)).nc.is_connected
    with pytest.raises(NaqConnectionError, match="authorization failed") as info:
        await get_connection(ConnectionSettings.resolve(server.url, user="naq", password="secret"))
    _no_secret(str(info.value))
    with pytest.raises(NaqConnectionError) as info:
        await get_connection(f"nats://naq:secret@127.0.0.1:{server.port}")
    _no_secret(str(info.value))
    _no_secret(caplog.text)
    await close_all()


async def test_token_auth_passes_through(nats_server_factory: Factory, tmp_path: Path) -> None:
    config = tmp_path / "token.conf"
    config.write_text('authorization { token: "s3cr3t-token" }\n')
    server = nats_server_factory(config_file=config)
    conn = await get_connection(ConnectionSettings.resolve(server.url, token="s3cr3t-token"))
    assert conn.nc.is_connected
    with pytest.raises(NaqConnectionError, match="authorization failed"):
        await get_connection(server.url)
    await close_all()


# --- pooling ---


async def test_one_pooled_connection_per_loop_and_settings(nats_url: str) -> None:
    conns = await asyncio.gather(*(get_connection(nats_url) for _ in range(10)))
    assert len({id(c) for c in conns}) == 1
    other_settings = await get_connection(ConnectionSettings(url=nats_url, connect_timeout_s=1.5))
    assert other_settings is not conns[0]

    holder: dict[str, object] = {}

    def other_loop() -> None:
        async def grab() -> None:
            conn = await get_connection(nats_url)
            holder["nc"], holder["loop"] = conn.nc, asyncio.get_running_loop()

        asyncio.run(grab())

    thread = threading.Thread(target=other_loop)
    thread.start()
    thread.join(10)
    assert holder["nc"] is not conns[0].nc and holder["loop"] is not asyncio.get_running_loop()
    assert conns[0].nc.is_connected


async def test_helpers_never_close_the_pooled_connection(nats_url: str) -> None:
    conn = await get_connection(nats_url)
    queue = Queue("pooled", nats_url)
    for i in range(10):
        await queue.enqueue(add, i)
        await naq_ipy.enqueue(add, i, queue_name="pooled", nats_url=nats_url)
        await naq_ipy.list_scheduled_jobs(nats_url=nats_url)
    await naq_ipy.purge_queue("pooled", nats_url=nats_url)
    assert await get_connection(nats_url) is conn
    assert conn.nc.is_connected


def _naq_connections(server: NatsServer) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz", timeout=2) as response:
        connz = json.load(response)
    return sum(1 for c in connz.get("connections") or [] if c.get("name") == "naq_ipy")


def test_connections_of_a_finished_loop_are_closed(nats_server_factory: Factory) -> None:
    server = nats_server_factory()
    for i in range(3):
        asyncio.run(naq_ipy.enqueue(add, i, nats_url=server.url))
    deadline = time.monotonic() + 3
    while _naq_connections(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _naq_connections(server) == 0

    async def open_two() -> int:
        await get_connection(server.url)
        await get_connection(ConnectionSettings(url=server.url, connect_timeout_s=1))
        return _naq_connections(server)

    assert asyncio.run(open_two()) == 2
    time.sleep(0.2)
    assert _naq_connections(server) == 0


async def test_close_all_closes_this_loops_pool_only(nats_url: str) -> None:
    conn = await get_connection(nats_url)
    await close_all()
    assert conn.nc.is_closed
    fresh = await get_connection(nats_url)
    assert fresh is not conn and fresh.nc.is_connected
    assert (await Queue("after-close", nats_url).enqueue(add, 1)).queue_name == "after-close"


async def test_a_pool_made_right_after_close_all_is_kept(nats_url: str) -> None:
    conn = await get_connection(nats_url)
    await conn.nc.close()  # closed already: close_all() below has nothing to wait for
    await close_all()
    fresh = await get_connection(nats_url)
    await asyncio.sleep(0.05)
    assert fresh is not conn and fresh.nc.is_connected
    assert await get_connection(nats_url) is fresh


async def test_unpooled_connect_is_independent(nats_url: str) -> None:
    private = await connect(ConnectionSettings.resolve(nats_url), name="private")
    pooled = await get_connection(nats_url)
    assert private.nc is not pooled.nc
    await private.nc.close()
    assert pooled.nc.is_connected


# --- streams and buckets are created once and never clobbered ---


async def test_existing_bucket_settings_are_left_unchanged(nats_url: str, raw_js: JetStreamContext) -> None:
    await raw_js.create_key_value(bucket="naq_scheduled_jobs", history=5, description="made by hand")
    await Queue("q", nats_url).schedule(add, interval=60, name="s")
    await Queue("q", nats_url).schedule(add, interval=30, name="s")
    info = await raw_js.stream_info("KV_naq_scheduled_jobs")
    assert info.config.max_msgs_per_subject == 5 and info.config.description == "made by hand"
    assert [r.interval_s for r in await naq_ipy.list_scheduled_jobs(nats_url=nats_url)] == [30.0]


async def test_new_bucket_gets_naq_settings(nats_url: str, raw_js: JetStreamContext) -> None:
    await Queue("q", nats_url).schedule(add, interval=60, name="s")
    info = await raw_js.stream_info("KV_naq_scheduled_jobs")
    assert info.config.max_msgs_per_subject == 1 and info.config.num_replicas == 1


async def test_stream_creation_is_idempotent(nats_url: str, raw_js: JetStreamContext) -> None:
    first = await connect(ConnectionSettings.resolve(nats_url))
    second = await connect(ConnectionSettings.resolve(nats_url))
    try:
        await first.ensure_stream()
        await second.ensure_stream()
        await asyncio.gather(first.ensure_stream("naq_failed_jobs"), second.ensure_stream("naq_failed_jobs"))
    finally:
        await first.nc.close()
        await second.nc.close()
    info = await raw_js.stream_info("naq_jobs")
    assert info.config.subjects == ["naq.queue.*"] and info.config.retention == RetentionPolicy.WORK_QUEUE
    assert info.config.duplicate_window == 600 and info.config.num_replicas == 1
    assert (await raw_js.stream_info("naq_failed_jobs")).config.subjects == ["naq.failed.>"]


async def test_existing_stream_config_is_not_clobbered(nats_url: str, raw_js: JetStreamContext) -> None:
    await raw_js.add_stream(StreamConfig(name="naq_jobs", subjects=["naq.queue.*"], max_msgs=1234,
                                         description="tuned by ops", retention=RetentionPolicy.WORK_QUEUE))
    await Queue("q", nats_url).enqueue(add, 1)
    info = await raw_js.stream_info("naq_jobs")
    assert info.config.max_msgs == 1234 and info.config.description == "tuned by ops"
    assert info.state.messages == 1


async def test_concurrent_first_use_creates_everything_once(nats_url: str, raw_js: JetStreamContext) -> None:
    settings = [ConnectionSettings(url=nats_url, connect_timeout_s=1 + i / 10) for i in range(5)]
    await asyncio.gather(*(Queue("first", s).schedule(add, interval=60, name=f"s{i}") for i, s in enumerate(settings)),
                         *(Queue("first", s).enqueue(add, 1) for s in settings))
    assert (await raw_js.stream_info("naq_jobs")).state.messages == 5
    assert len(await naq_ipy.list_scheduled_jobs(nats_url=nats_url)) == 5


async def test_headers_count_toward_max_payload(nats_server_factory: Factory, tmp_path: Path) -> None:
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 4096\n")
    server = nats_server_factory(config_file=config)
    conn = await get_connection(server.url)
    await conn.ensure_stream()
    assert conn.max_payload == 4096
    # the body alone fits; with the Nats-Msg-Id header the server would cut the whole connection
    with pytest.raises(SerializationError, match="max payload of 4,096"):
        await publish(conn, "naq.queue.q", b"x" * 4090, msg_id="m" * 32)
    await publish(conn, "naq.queue.q", b"x" * 4000, msg_id="m" * 32)
    await asyncio.sleep(0.1)
    assert conn.nc.is_connected and await get_connection(server.url) is conn
    await close_all()


# --- replicas ---


async def _retry(attempt: Callable[[], Awaitable[Any]], within_s: float = 20.0) -> None:
    """Await `attempt()` until it raises no naq error, for at most `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await attempt()
            return
        except NaqException:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_replicas_reach_stream_and_bucket_configs(nats_server_factory: Factory) -> None:
    servers = [nats_server_factory(start=False, **options) for options in cluster_node_options(prefix="n")]
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_ready(30, full=True)
    url = ",".join(server.url for server in servers)
    queue = Queue("replicated", ConnectionSettings.resolve(url, replicas=3))
    # a fresh cluster may still answer the first R3 requests slowly (peers catching up): retry a while
    await _retry(lambda: queue.enqueue(add, 1))
    await _retry(lambda: queue.schedule(add, interval=60, name="r"))
    nc = await nats.connect(servers[0].url)
    try:
        js = nc.jetstream()
        assert (await js.stream_info("naq_jobs")).config.num_replicas == 3
        assert (await js.stream_info("KV_naq_scheduled_jobs")).config.num_replicas == 3
    finally:
        await nc.close()
    await close_all()


async def test_publish_acks_come_back_to_their_own_publish(nats_url: str) -> None:
    conn = await get_connection(nats_url)
    await conn.ensure_stream()
    subject = names.queue_subject("acks")
    acks = await asyncio.gather(*(conn.acks.publish(subject, b"%d" % i, None, 5.0) for i in range(200)))
    assert sorted(ack.seq for ack in acks) == list(range(1, 201))
    # each future got the ack of its own message: the stream holds message i at the seq its publish was told
    for i in (0, 57, 199):
        stored = await conn.js.get_msg(names.JOB_STREAM_NAME, acks[i].seq)
        assert stored.data == b"%d" % i


async def test_publish_without_a_stream_and_unanswered_publishes_fail(nats_url: str) -> None:
    conn = await get_connection(nats_url)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await conn.acks.publish("naq.nowhere", b"x", None, 5.0)
    silent = await conn.nc.subscribe("naq.silent")  # receives, never answers
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await conn.acks.publish("naq.silent", b"x", None, 0.2)
    assert time.monotonic() - started < 0.2 + acks.SWEEP_S + 1.0
    await silent.unsubscribe()
    await conn.ensure_stream()  # the inbox still works after a timeout
    assert (await conn.acks.publish(names.queue_subject("acks"), b"y", None, 5.0)).seq >= 1


async def test_a_first_publish_cancelled_while_subscribing_leaves_the_inbox_working(nats_url: str) -> None:
    conn = await connect(ConnectionSettings.resolve(nats_url))
    try:
        await conn.ensure_stream()
        first = asyncio.create_task(conn.acks.publish(names.queue_subject("acks"), b"first", None, 5.0))
        await asyncio.sleep(0)  # it is awaiting the inbox's subscription now
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert (await conn.acks.publish(names.queue_subject("acks"), b"second", None, 5.0)).seq >= 1
    finally:
        await conn.nc.close()
