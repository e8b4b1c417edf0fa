"""`enqueue_many`'s pipelined publish: every job stored once and in order, refusals named."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RawStreamMsg, RetentionPolicy, StreamConfig

from naq_ipy import Job, Queue, RefusedError
from naq_ipy.wire.publish import WINDOW

Msgs = Callable[..., Awaitable[list[RawStreamMsg]]]


def add(a: int, b: int = 0) -> int:
    return a + b


def stored_ids(msgs: list[RawStreamMsg]) -> list[str | None]:
    return [(m.headers or {}).get("Nats-Msg-Id") for m in msgs]


async def test_a_batch_larger_than_the_window_arrives_whole_and_in_order(nats_url: str,
                                                                        raw_js: JetStreamContext) -> None:
    calls = [(add, (i,)) for i in range(2 * WINDOW + 17)]
    jobs = await Queue("bulk", nats_url).enqueue_many(calls)
    assert (await raw_js.stream_info("naq_jobs")).state.messages == len(calls)
    for i in [*range(0, len(calls), 997), len(calls) - 1]:
        msg = await raw_js.get_msg("naq_jobs", seq=i + 1)
        assert stored_ids([msg]) == [jobs[i].job_id] and Job.deserialize(msg.data or b"").args == (i,)


async def test_jobs_a_full_stream_refuses_are_named_and_can_be_sent_again(
    nats_url: str, raw_js: JetStreamContext, stream_msgs: Msgs
) -> None:
    await raw_js.add_stream(StreamConfig(name="naq_jobs", subjects=["naq.queue.*"], max_msgs=5,
                                         discard=DiscardPolicy.NEW, retention=RetentionPolicy.WORK_QUEUE))
    queue = Queue("full", nats_url)
    with pytest.raises(RefusedError, match=r"refused 3 of 8 messages \(maximum messages exceeded\); the other 5") as e:
        await queue.enqueue_many([(add, (i,)) for i in range(8)])
    refused = e.value.refused
    assert [job.args for job in refused] == [(5,), (6,), (7,)]
    assert [Job.deserialize(m.data or b"").args for m in await stream_msgs()] == [(i,) for i in range(5)]
    with pytest.raises(RefusedError, match="refused job .* \\(maximum messages exceeded\\)") as one:
        await queue.enqueue(add, 99)
    assert [job.args for job in one.value.refused] == [(99,)]

    await raw_js.purge_stream("naq_jobs")
    assert await queue.enqueue_many(refused) == refused
    assert stored_ids(await stream_msgs()) == [job.job_id for job in refused]
