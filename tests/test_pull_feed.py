"""Pulls of a durable consumer: each message handed over as it arrives, pulls that end, refusals raised."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import api

from naq_ipy.errors import NaqConnectionError
from naq_ipy.wire.connection import get_connection
from naq_ipy.wire.names import JOB_STREAM_NAME, queue_subject
from naq_ipy.wire.pull_feed import PullFeed

SUBJECT = queue_subject("feed")


async def feed_of(nats_url: str, got: list[tuple[float, bytes]]) -> PullFeed:
    conn = await get_connection(nats_url)
    await conn.ensure_stream()
    await conn.js.add_consumer(JOB_STREAM_NAME, api.ConsumerConfig(
        durable_name="feed", filter_subject=SUBJECT, ack_policy=api.AckPolicy.EXPLICIT))
    return PullFeed(conn, JOB_STREAM_NAME, "feed", lambda msg: got.append((time.monotonic(), msg.data)))


async def test_a_pull_hands_over_what_is_there_at_once_and_ends_at_its_batch_or_expiry(nats_url: str) -> None:
    got: list[tuple[float, bytes]] = []
    feed = await feed_of(nats_url, got)
    conn = await get_connection(nats_url)
    for i in range(5):
        await conn.js.publish(SUBJECT, b"%d" % i)
    started = time.monotonic()
    assert await feed.pull(3, 5.0) == 3  # a full batch ends the pull: no wait for the expiry
    assert time.monotonic() - started < 2.0 and [data for _, data in got] == [b"0", b"1", b"2"]
    started = time.monotonic()
    assert await feed.pull(10, 0.5) == 2  # fewer than asked: the pull lasts until it expires...
    assert time.monotonic() - started >= 0.4
    assert got[-1][0] - started < 0.4  # ...but what was there was handed over at once


async def test_a_message_arriving_during_a_pull_is_handed_over_at_once(nats_url: str) -> None:
    got: list[tuple[float, bytes]] = []
    feed = await feed_of(nats_url, got)
    conn = await get_connection(nats_url)
    pulling = asyncio.create_task(feed.pull(5, 3.0))
    await asyncio.sleep(0.2)
    sent = time.monotonic()
    await conn.js.publish(SUBJECT, b"late")
    while not got:
        await asyncio.sleep(0.01)
    assert got[0][1] == b"late" and got[0][0] - sent < 1.0 and not pulling.done()
    feed.cancel()  # a stop ends the pull without waiting for its expiry
    assert await asyncio.wait_for(pulling, 1.0) == 1


async def test_a_refused_pull_raises(nats_url: str) -> None:
    got: list[tuple[float, bytes]] = []
    feed = await feed_of(nats_url, got)
    conn = await get_connection(nats_url)
    await conn.js.delete_consumer(JOB_STREAM_NAME, "feed")
    started = time.monotonic()
    with pytest.raises(NaqConnectionError, match="refused"):
        await feed.pull(5, 5.0)
    assert time.monotonic() - started < 2.0 and got == []
    await feed.close()
