"""Results and statuses live `result_ttl` seconds (default a week), then the server removes them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import jobs
from nats.js import JetStreamContext
from polling import eventually_async
from test_worker import running_worker, url  # noqa: F401 - url is a fixture

from naq_ipy import Queue
from naq_ipy.status.results import INLINE_RESULT_MAX, fetch_status
from naq_ipy.wire.names import JOB_STATUS_KV_NAME, RESULTS_KV_NAME
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S

Snapshot = Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]


async def ttl_header(raw_js: JetStreamContext, bucket: str, key: str) -> str | None:
    """The `Nats-TTL` header of the last message under `key` in `bucket`."""
    msg = await raw_js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key}")
    return (msg.headers or {}).get("Nats-TTL")


async def test_a_short_result_ttl_removes_status_and_result_after_it(
    url: str, raw_js: JetStreamContext, kv_snapshot: Snapshot  # noqa: F811
) -> None:
    queue = Queue("default", url)
    async with running_worker(url):
        small = await queue.enqueue(jobs.add, 1, 2, result_ttl=1)
        big = await queue.enqueue(jobs.big_result, 2 * INLINE_RESULT_MAX, result_ttl=1)
        assert await small.result(timeout=20) == 3
        assert await big.result(timeout=20) == jobs.big_result(2 * INLINE_RESULT_MAX)
    assert await ttl_header(raw_js, JOB_STATUS_KV_NAME, small.job_id) == "1"
    assert await ttl_header(raw_js, RESULTS_KV_NAME, big.job_id) == "1"

    async def left() -> list[str]:
        statuses, results = await kv_snapshot(JOB_STATUS_KV_NAME), await kv_snapshot(RESULTS_KV_NAME)
        return [key for key in (small.job_id, big.job_id) if key in statuses or key in results]

    await eventually_async(left, [], "the server to expire both jobs' statuses and results")
    assert await fetch_status(small.job_id, url) is None and await fetch_status(big.job_id, url) is None


async def test_without_result_ttl_the_outcome_lives_a_week(url: str, raw_js: JetStreamContext) -> None:  # noqa: F811
    async with running_worker(url):
        job = await Queue("default", url).enqueue(jobs.big_result, 2 * INLINE_RESULT_MAX)
        await job.result(timeout=20)
    week = str(int(DEFAULT_RESULT_TTL_S))
    assert week == str(7 * 24 * 3600)
    assert await ttl_header(raw_js, JOB_STATUS_KV_NAME, job.job_id) == week
    assert await ttl_header(raw_js, RESULTS_KV_NAME, job.job_id) == week
