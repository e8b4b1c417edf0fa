"""Every bad input raises a clear naq error before anything reaches the stream or the schedule store."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from nats.js.api import RawStreamMsg

import naq_ipy
from naq_ipy import ConfigurationError, NaqException, Queue, SerializationError
from naq_ipy.client.job import read_header

Msgs = Callable[..., Awaitable[list[RawStreamMsg]]]
Snapshot = Callable[..., Awaitable[dict[str, tuple[bytes, int]]]]
Action = Callable[[Queue], Coroutine[Any, Any, Any]]

BIG = b"x" * (2 * 1024 * 1024)  # over the payload cap these tests set (NAQ_PAYLOAD_MAX, below)
CAP = 1_000_000


def add(a: int = 0, b: int = 0) -> int:
    return a + b


class Unpicklable:
    """A callable that refuses to be pickled (cloudpickle handles lambdas and closures fine)."""

    def __call__(self) -> None:
        return None

    def __reduce__(self) -> Any:
        raise TypeError("refusing to be pickled")


CASES: dict[str, tuple[Action, type[NaqException], str]] = {
    # cron
    "cron-out-of-range": (lambda q: q.schedule(add, cron="61 * * * *"), ConfigurationError, "invalid cron"),
    "cron-words": (lambda q: q.schedule(add, cron="every day"), ConfigurationError, "invalid cron"),
    "cron-3-fields": (lambda q: q.schedule(add, cron="* * *"), ConfigurationError, "expected 5 fields"),
    "cron-not-str": (lambda q: q.schedule(add, cron=5), ConfigurationError, "not a string"),
    "cron-random": (lambda q: q.schedule(add, cron="R * * * *"), ConfigurationError, "random"),
    # interval
    "interval-zero": (lambda q: q.schedule(add, interval=0), ConfigurationError, "0.1 s to 100 years"),
    "interval-negative": (lambda q: q.schedule(add, interval=-5), ConfigurationError, "invalid duration"),
    "interval-zero-delta": (lambda q: q.schedule(add, interval=timedelta(0)), ConfigurationError, "0.1 s to 100 years"),
    "interval-zero-text": (lambda q: q.schedule(add, interval="0s"), ConfigurationError, "0.1 s to 100 years"),
    "interval-text": (lambda q: q.schedule(add, interval="often"), ConfigurationError, "invalid duration"),
    "interval-bool": (lambda q: q.schedule(add, interval=True), ConfigurationError, "invalid duration"),
    # repeat
    "repeat-zero": (lambda q: q.schedule(add, interval=5, repeat=0), ConfigurationError, "repeat must be"),
    "repeat-negative": (lambda q: q.schedule(add, cron="* * * * *", repeat=-1), ConfigurationError, "repeat"),
    "repeat-float": (lambda q: q.schedule(add, interval=5, repeat=1.5), ConfigurationError, "repeat"),
    # cron and interval
    "both": (lambda q: q.schedule(add, cron="* * * * *", interval=5), ConfigurationError, "exactly one"),
    "neither": (lambda q: q.schedule(add), ConfigurationError, "exactly one"),
    "at-and-cron": (lambda q: q.schedule_job(q.job(add), at=1e10, cron="* * * * *"), ConfigurationError, "one-off"),
    # zones
    "unknown-zone": (lambda q: q.schedule(add, cron="0 6 * * *", tz="Mars/Olympus"), ConfigurationError,
                     "unknown time zone 'Mars/Olympus'"),
    "zone-on-interval": (lambda q: q.schedule(add, interval=5, tz="Europe/Berlin"), ConfigurationError,
                         "tz applies to cron"),
    "misfire": (lambda q: q.schedule(add, interval=5, misfire="maybe"), ConfigurationError, "misfire"),
    "schedule-name": (lambda q: q.schedule(add, interval=5, name="has space"), ConfigurationError, "schedule name"),
    "schedule-name-empty": (lambda q: q.schedule(add, interval=5, name=""), ConfigurationError, "schedule name"),
    # pickling
    "function-enqueue": (lambda q: q.enqueue(Unpicklable()), SerializationError,
                         r"cannot pickle function test_bad_input\.Unpicklable"),
    "function-schedule": (lambda q: q.schedule(Unpicklable(), interval=5), SerializationError, "cannot pickle"),
    "function-at": (lambda q: q.enqueue_at(2e9, Unpicklable()), SerializationError, "cannot pickle"),
    "argument": (lambda q: q.enqueue(add, 1, threading.Lock()), SerializationError, r"argument 1 \(lock\)"),
    "keyword-argument": (lambda q: q.enqueue(add, b=threading.Lock()), SerializationError,
                         r"keyword argument 'b' \(lock\)"),
    "argument-in-many": (lambda q: q.enqueue_many([(add, (1,)), (add, (threading.Lock(),))]), SerializationError,
                         r"argument 0 \(lock\)"),
    "argument-in-schedule": (lambda q: q.schedule(add, threading.RLock(), cron="* * * * *"), SerializationError,
                             "argument 0"),
    "not-callable": (lambda q: q.enqueue("add"), ConfigurationError, "needs a callable"),
    # queue names (queue-level ones: see test_invalid_queue_names)
    "job-queue-name": (lambda q: q.enqueue_job(naq_ipy.Job(add, queue_name="x.y")), ConfigurationError, "queue name"),
    "helper-queue-dot": (lambda q: naq_ipy.enqueue(add, queue_name="a.b", nats_url=q.settings), ConfigurationError,
                         "invalid queue name 'a.b'"),
    "helper-queue-space": (lambda q: naq_ipy.schedule(add, interval=5, queue_name="a b", nats_url=q.settings),
                           ConfigurationError, "no dots or spaces"),
    # payload size
    "big-enqueue": (lambda q: q.enqueue(add, BIG), SerializationError,
                    r"is 2.1 MB \(2,097,\d+ bytes\), over the payload cap of 1.0 MB"),
    "big-in-many": (lambda q: q.enqueue_many([(add, (1,)), (add, (BIG,)), (add, (2,))]), SerializationError,
                    "over the payload cap"),
    "big-at": (lambda q: q.enqueue_at(2e9, add, BIG), SerializationError, "over the payload cap"),
    "big-schedule": (lambda q: q.schedule(add, BIG, interval=60, name="big"), SerializationError,
                     "over the payload cap"),
    "big-after-base64": (  # a threshold set above what a schedule record can hold inline
        lambda q: Queue(q.name, replace(q.settings, payload_threshold_bytes=CAP)).schedule(
            add, b"x" * 900_000, interval=60), SerializationError, "max payload"),
    # options and times
    "max-retries": (lambda q: q.enqueue(add, max_retries=-1), ConfigurationError, "max_retries"),
    "timeout-zero": (lambda q: q.enqueue(add, timeout=0), ConfigurationError, "timeout"),
    "result-ttl": (lambda q: q.enqueue(add, result_ttl=-3), ConfigurationError, "result_ttl"),
    "retry-delay": (lambda q: q.enqueue(add, retry_delay=-1), ConfigurationError, "retry delay"),
    "retry-delay-empty": (lambda q: q.enqueue(add, retry_delay=[]), ConfigurationError, "empty"),
    "depends-on": (lambda q: q.enqueue(add, depends_on=[3]), ConfigurationError, "depends_on"),
    "job-id": (lambda q: q.enqueue(add, job_id="has space"), ConfigurationError, "job id"),
    "job-id-newline": (lambda q: q.enqueue(add, job_id="j1\n"), ConfigurationError, "job id"),
    "job-id-dash": (lambda q: q.enqueue(add, job_id="-j1"), ConfigurationError, "job id"),
    "schedule-name-long": (lambda q: q.schedule(add, interval=60, name="n" * 183), ConfigurationError,
                           "invalid schedule name"),
    "interval-tiny": (lambda q: q.schedule(add, interval=5e-324), ConfigurationError, "interval"),
    "at-huge": (lambda q: q.enqueue_at(1e300, add), ConfigurationError, "invalid time"),
    "at-before-1970": (lambda q: q.enqueue_at(-1e15, add), ConfigurationError, "invalid time"),
    "at-inf": (lambda q: q.enqueue_at(float("inf"), add), ConfigurationError, "invalid time"),
    "at-text": (lambda q: q.enqueue_at("tomorrow", add), ConfigurationError, "invalid time"),
    "at-nan": (lambda q: q.enqueue_at(float("nan"), add), ConfigurationError, "invalid time"),
    "in-negative": (lambda q: q.enqueue_in(-5, add), ConfigurationError, "invalid duration"),
    "in-text": (lambda q: q.enqueue_in("soonish", add), ConfigurationError, "invalid duration"),
    "start-at": (lambda q: q.schedule(add, interval=5, start_at="now"), ConfigurationError, "invalid time"),
    "many-options": (lambda q: q.enqueue_many([(add, ())], retry_strategy="x"), ConfigurationError,
                     "unknown job options"),
}


def _function_of(data: bytes | None) -> str | None:
    try:
        return read_header(data or b"")[0].get("func_name")
    except SerializationError:
        return None


@pytest.fixture
async def populated(nats_url: str, stream_msgs: Msgs, kv_snapshot: Snapshot) -> Callable[[], Awaitable[Any]]:
    """One job in the stream and one schedule in the store; returns a function giving the current state."""
    queue = Queue("bad", nats_url)
    await queue.enqueue(add, 1)
    await queue.schedule(add, interval=60, name="existing")

    async def state() -> tuple[list[tuple[int | None, str | None, bytes | None]], dict[str, tuple[bytes, int]]]:
        # the message id names who wrote a message (a job id, or a schedule's fire id) if a stray one shows up
        return [(m.seq, (m.headers or {}).get("Nats-Msg-Id"), m.data) for m in await stream_msgs()], await kv_snapshot()

    return state


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values over 1 MB are refused (larger ones would go to the payload store)."""
    monkeypatch.setenv("NAQ_PAYLOAD_MAX", str(CAP))


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_writes_nothing(capped: None, nats_url: str, populated: Callable[[], Awaitable[Any]],
                                        case: str) -> None:
    action, error, message = CASES[case]
    before = await populated()
    with pytest.raises(error, match=message):
        await action(Queue("bad", nats_url))
    after = await populated()
    assert after == before
    # a stray message names who wrote it: its message id and, for a job, its function
    assert [seq for seq, _, _ in after[0]] == [1], [(seq, msg_id, _function_of(data)) for seq, msg_id, data in after[0]]
    assert list(after[1]) == ["existing"]


@pytest.mark.parametrize("name", ["a.b", "a b", "", "a*", ">", "x" * 65, "naïve", None, 3, "q1\n", "-q",
                                  "--process-pool"])
def test_invalid_queue_names(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        Queue(name, nats_url="nats://127.0.0.1:1")


@pytest.mark.parametrize("name", ["default", "a-b", "A_1", "x" * 64])
def test_valid_queue_names_match_the_stream_subjects(name: str) -> None:
    queue = Queue(name, nats_url="nats://127.0.0.1:1")
    assert queue.subject == f"naq.queue.{name}" and queue.subject.count(".") == 2


def test_sync_helpers_raise_the_same_errors_without_writing(capped: None, nats_url: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid cron"):
        naq_ipy.schedule_sync(add, cron="nope", nats_url=nats_url)
    with pytest.raises(SerializationError, match=r"argument 0 \(lock\)"):
        naq_ipy.enqueue_sync(add, threading.Lock(), nats_url=nats_url)
    with pytest.raises(SerializationError, match="over the payload cap"):
        naq_ipy.enqueue_sync(add, BIG, nats_url=nats_url)
    assert naq_ipy.list_scheduled_jobs_sync(nats_url=nats_url) == []
    assert naq_ipy.purge_queue_sync(nats_url=nats_url) == 0


async def test_max_payload_of_a_small_server(nats_server_factory: Callable[..., Any], tmp_path: Any) -> None:
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 8192\n")
    server = nats_server_factory(config_file=config)
    queue = Queue("small", server.url)
    await queue.enqueue(add, b"x" * 4000)
    with pytest.raises(SerializationError, match="max payload of 8,192 bytes"):
        await queue.enqueue(add, b"x" * 9000)
    with pytest.raises(SerializationError, match="max payload of 8,192 bytes"):
        await queue.schedule(add, b"x" * 7000, interval=5)  # fits as a job, not as a base64 record
    assert await queue.purge() == 1
    assert await queue.list_scheduled_jobs() == []
