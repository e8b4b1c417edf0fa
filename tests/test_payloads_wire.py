"""The payload store's own read and write paths (naq_ipy.wire.payloads), against a real server, without workers."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import nats.js.errors
import numpy as np
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from naq_ipy import SerializationError
from naq_ipy.errors import ConflictError
from naq_ipy.wire import direct_get, names, payload_chunks, payloads
from naq_ipy.wire.connection import Connection, close_all, connect, get_connection
from naq_ipy.wire.payloads import PayloadRef
from naq_ipy.wire.settings import ConnectionSettings

MB = 1_000_000
HOUR = 3600.0


@pytest.fixture
async def conn(nats_url: str) -> AsyncIterator[Connection]:
    """naq's pooled connection to the clean test server (closed afterwards)."""
    yield await get_connection(nats_url)
    await close_all()


def content(size: int, seed: int = 0) -> memoryview:
    """`size` random bytes."""
    return memoryview(np.random.default_rng(seed).bytes(size))


def ref_of(view: memoryview) -> PayloadRef:
    """The reference naming `view`'s content."""
    return PayloadRef(payloads.NAME_PREFIX + hashlib.sha256(view).hexdigest(), view.nbytes)


async def chunk_seqs(js: JetStreamContext, nuid: str) -> list[int]:
    """Stream sequences of an object's chunks, in order."""
    seqs, seq = [], 1
    while True:
        try:
            msg = await js.get_msg(payloads.STREAM_NAME, seq=seq, subject=payloads.payload_chunk_subject(nuid),
                                   next=True)
        except nats.js.errors.NotFoundError:
            return seqs
        seqs.append(msg.seq or 0)
        seq = (msg.seq or 0) + 1


async def test_a_streamed_read_comes_back_whole(conn: Connection) -> None:
    value = content(payload_chunks.DIRECT_READ_MAX_BYTES + 3 * MB, 8)
    ref = ref_of(value)
    assert await payloads.store(conn, ref, value, HOUR)
    assert bytes(await payloads.fetch(conn, ref)) == bytes(value)


async def test_a_read_in_many_windows_comes_back_whole(conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_get, "WINDOW_BYTES", 600_000)  # about one chunk per batched direct get
    requests: list[bytes] = []

    async def on_request(msg: Msg) -> None:  # a plain subscriber sees the read's requests for chunks too
        requests.append(msg.data)

    spy = await conn.nc.subscribe(names.direct_get_subject(payloads.STREAM_NAME), cb=on_request)
    value = content(3 * MB)
    ref = ref_of(value)
    assert await payloads.store(conn, ref, value, HOUR)
    assert bytes(await payloads.fetch(conn, ref)) == bytes(value)
    await spy.unsubscribe()
    assert len(requests) >= 3, "each window is its own request"


async def test_reads_of_many_objects_at_once_share_the_windows(conn: Connection,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_get, "WINDOW_BYTES", 600_000)
    monkeypatch.setattr(direct_get, "WINDOWS_IN_FLIGHT", 1)
    direct_get._windows.pop(conn.nc, None)
    values = [content(2 * MB, seed) for seed in range(4)]
    for value in values:
        await payloads.store(conn, ref_of(value), value, HOUR)
    read = await asyncio.gather(*(payloads.fetch(conn, ref_of(value)) for value in values))
    assert [bytes(buf) for buf in read] == [bytes(value) for value in values]


@pytest.fixture(params=["direct", "streamed"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Chunks read by direct get (small objects), or through a consumer (large ones: here, every one)."""
    if request.param == "streamed":
        monkeypatch.setattr(payload_chunks, "DIRECT_READ_MAX_BYTES", 0)
    return str(request.param)


@pytest.mark.parametrize("lost", ["last", "middle"])
async def test_a_truncated_object_is_refused_at_once(conn: Connection, raw_js: JetStreamContext, lost: str,
                                                     read_path: str) -> None:
    value = content(2 * MB)
    ref = ref_of(value)
    await payloads.store(conn, ref, value, HOUR)
    meta = await payloads.read_meta(conn, ref.name)
    assert meta is not None
    seqs = await chunk_seqs(raw_js, str(meta["nuid"]))
    assert len(seqs) == meta["chunks"] == 4
    await raw_js.delete_msg(payloads.STREAM_NAME, seqs[-1] if lost == "last" else seqs[1])
    started = time.monotonic()
    with pytest.raises(SerializationError, match=f"payload chunks on .* are incomplete|payload {ref.name} is corrupt"):
        await payloads.fetch(conn, ref)
    assert time.monotonic() - started < 2, "a missing chunk is known from the server's answer, not from a timeout"


async def test_a_corrupted_object_is_refused_by_its_digest(conn: Connection, read_path: str) -> None:
    good, bad = content(MB, 1), content(MB, 2)
    await payloads.store(conn, ref_of(good), bad, HOUR)  # the name of one content over another
    with pytest.raises(SerializationError, match=f"payload {ref_of(good).name} is corrupt"):
        await payloads.fetch(conn, ref_of(good))


async def test_a_missing_object_is_refused(conn: Connection) -> None:
    await payloads.ensure_bucket(conn)
    ref = ref_of(content(1000))
    with pytest.raises(SerializationError, match=f"payload {ref.name} \\(1,000 bytes\\) is missing from the store"):
        await payloads.fetch(conn, ref)


async def test_a_bucket_without_direct_gets_is_read_from_the_leader(conn: Connection,
                                                                    raw_js: JetStreamContext) -> None:
    await raw_js.add_stream(api.StreamConfig(  # a bucket made ahead by hand, direct gets off
        name=payloads.STREAM_NAME, subjects=[names.payload_subjects("C"), names.payload_subjects("M")],
        discard=api.DiscardPolicy.NEW, allow_rollup_hdrs=True, allow_direct=False))
    value = content(2 * MB, 3)
    ref = ref_of(value)
    assert await payloads.store(conn, ref, value, HOUR)
    assert bytes(await payloads.fetch(conn, ref)) == bytes(value)


async def test_an_empty_object_round_trips(conn: Connection) -> None:
    empty = memoryview(b"")
    assert await payloads.store(conn, ref_of(empty), empty, HOUR)
    assert bytes(await payloads.fetch(conn, ref_of(empty))) == b""


async def stream_messages(js: JetStreamContext) -> int:
    """Messages in the payload bucket's stream (chunks and metas)."""
    return (await js.stream_info(payloads.STREAM_NAME)).state.messages


async def test_writers_of_the_same_value_at_once_leave_one_readable_object(
    nats_url: str, conn: Connection, raw_js: JetStreamContext,
) -> None:
    others = [await connect(ConnectionSettings.resolve(nats_url)) for _ in range(2)]
    value = content(MB, 4)
    ref = ref_of(value)
    try:
        written = await asyncio.gather(*(payloads.store(c, ref, value, HOUR) for c in [conn, *others]))
    finally:
        for other in others:
            await other.nc.close()
    assert sorted(written) == [False, False, True]
    assert list(await payloads.list_objects(conn)) == [ref.name]
    meta = await payloads.read_meta(conn, ref.name)
    assert meta is not None and await stream_messages(raw_js) == meta["chunks"] + 1, "the losers' chunks are gone"
    assert bytes(await payloads.fetch(conn, ref)) == bytes(value)


async def test_a_value_stored_again_only_extends_its_keep_until(conn: Connection, raw_js: JetStreamContext) -> None:
    value = content(MB, 5)
    ref = ref_of(value)
    assert await payloads.store(conn, ref, value, 60)
    messages = await stream_messages(raw_js)
    assert not await payloads.store(conn, ref, value, HOUR)
    meta = await payloads.read_meta(conn, ref.name)
    assert meta is not None and payloads.keep_until(meta) > time.time() + HOUR - 60
    assert await stream_messages(raw_js) == messages, "the meta replaced, no chunks added"


async def test_a_full_store_takes_a_value_it_holds_already(conn: Connection, raw_js: JetStreamContext) -> None:
    await raw_js.create_object_store("naq_payloads", config=api.ObjectStoreConfig(max_bytes=3 * MB))
    value = content(2 * MB, 6)
    ref = ref_of(value)
    assert await payloads.store(conn, ref, value, 60)
    assert not await payloads.store(conn, ref, value, HOUR), "no room for it again, and no need"
    meta = await payloads.read_meta(conn, ref.name)
    assert meta is not None and payloads.keep_until(meta) > time.time() + HOUR - 60
    assert bytes(await payloads.fetch(conn, ref)) == bytes(value)


async def test_a_delete_loses_to_an_upload_between_its_read_and_its_write(
    conn: Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    value = content(MB, 7)
    ref = ref_of(value)
    await payloads.store(conn, ref, value, 0)
    real_stored = payloads.stored
    raced = False

    async def read_then_upload_again(c: Connection, name: str) -> payloads.Stored:
        nonlocal raced
        found = await real_stored(c, name)
        if not raced:  # the sweep's delete has read the expired meta; a client uploads the value again now
            raced = True
            assert not await payloads.store(c, ref, value, HOUR)
        return found

    monkeypatch.setattr(payloads, "stored", read_then_upload_again)
    assert not await payloads.delete(conn, ref.name, expired_by=time.time())
    monkeypatch.setattr(payloads, "stored", real_stored)
    assert not await payloads.delete(conn, ref.name, expired_by=time.time()), "kept for another hour"
    assert bytes(await payloads.fetch(conn, ref)) == bytes(value)
    assert await payloads.delete(conn, ref.name, expired_by=time.time() + HOUR + 1)
    assert await payloads.read_meta(conn, ref.name) is None


async def test_a_writer_that_keeps_losing_gives_up_and_leaves_no_chunks(
    conn: Connection, raw_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def always_beaten(*args: object, **kwargs: object) -> bool:  # another meta came first, every time
        return False

    monkeypatch.setattr(payloads, "write_meta", always_beaten)
    value = content(MB, 9)
    with pytest.raises(ConflictError, match=f"payload {ref_of(value).name} changed 5 times"):
        await payloads.store(conn, ref_of(value), value, HOUR)
    assert await stream_messages(raw_js) == 0
