"""Signed jobs: a worker with a key runs only jobs signed with a key it holds, and never unpickles the others.

The forged jobs carry a pickle bomb: unpickling their call alone (without running it) writes
`unpickled` into the mark file, so an empty mark file proves the bytes were never loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jobs
import pytest
from nats.js import JetStreamContext
from polling import eventually
from test_scheduler import quarter_after
from test_scheduler import running as running_scheduler
from test_worker import running_worker, stream_count
from test_worker import url as url  # noqa: F401 - the `url` fixture, shared

from naq_ipy import ConfigurationError, ConnectionSettings, Job, Queue
from naq_ipy.schedules.scheduler import Scheduler
from naq_ipy.schedules.store import ScheduledJobManager
from naq_ipy.status.results import FINISHED, fetch_status
from naq_ipy.wire.signing import key_id, refusal, signature, signed_headers
from naq_ipy.worker.consumer import Worker
from naq_ipy.worker.failed_store import list_failed, requeue_failed

KEY, OLD_KEY, OTHER_KEY = "k3y-n0w-0f-2026", "k3y-0f-2025", "s0me0ne-else"
HEADER = "Naq-Signature"


class Bomb:
    """Pickles as a call of `jobs.mark(path, "unpickled")`: loading the pickle leaves a mark."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return jobs.mark, (self.path, "unpickled")


def forged(path: str, queue: str = "signed") -> Job:
    """A well-formed naq job that marks `executed` when run and `unpickled` when its call is loaded."""
    return Job(function=jobs.mark, args=(path, "executed", Bomb(path)), queue_name=queue)


def keyed(url: str, *keys: str) -> ConnectionSettings:
    """Settings for `url` holding `keys` (the first one signs)."""
    return ConnectionSettings.resolve(url, signing_key=list(keys))


# --- the signature itself, without a server ---


def test_signature_is_key_id_and_hmac_of_the_exact_bytes_and_queue() -> None:
    value = signature(b"job bytes", KEY, "q")
    kid, _, mac = value.partition(":")
    assert kid == key_id(KEY) and len(kid) == 8 and len(mac) == 64
    assert value == signature(b"job bytes", KEY, "q") != signature(b"job bytez", KEY, "q")
    assert value != signature(b"job bytes", KEY, "q2")
    assert signed_headers(ConnectionSettings(), b"x", "q") is None
    assert signed_headers(ConnectionSettings(signing_keys=(KEY, OLD_KEY)), b"x", "q", {"a": "b"}) == {
        "a": "b", HEADER: signature(b"x", KEY, "q")}


@pytest.mark.parametrize(("headers", "data", "reason"), [
    (None, b"job", "unsigned job"),
    ({HEADER: ""}, b"job", "unsigned job"),
    ({HEADER: signature(b"job", KEY, "q1")}, b"jobs", "bad signature"),
    ({HEADER: signature(b"job", KEY, "q2")}, b"job", "bad signature"),
    ({HEADER: key_id(KEY) + ":" + "0" * 64}, b"job", "bad signature"),
    ({HEADER: key_id(KEY) + ":naïve"}, b"job", "bad signature"),
    ({HEADER: signature(b"job", OTHER_KEY, "q1")}, b"job",
     f"bad signature: signed with unknown key {key_id(OTHER_KEY)}"),
    ({HEADER: "no-colon-at-all"}, b"job", "bad signature: signed with unknown key"),
    ({HEADER: signature(b"job", KEY, "q1")}, b"job", None),
    ({HEADER: signature(b"job", OLD_KEY, "q1")}, b"job", None),
])
def test_refusal_reasons(headers: dict[str, str] | None, data: bytes, reason: str | None) -> None:
    assert refusal(data, headers, ConnectionSettings(signing_keys=(KEY, OLD_KEY)), "q1") == reason


def test_without_keys_nothing_is_refused() -> None:
    assert refusal(b"anything", None, ConnectionSettings(), "q1") is None


def test_keys_come_from_env_for_rotation_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAQ_SIGNING_KEYS", f" {KEY}, {OLD_KEY} ,")
    monkeypatch.setenv("NAQ_SIGNING_KEY", OTHER_KEY)
    settings = ConnectionSettings.resolve("nats://127.0.0.1:1")
    assert settings.signing_keys == (KEY, OLD_KEY)
    monkeypatch.delenv("NAQ_SIGNING_KEYS")
    assert ConnectionSettings.resolve("nats://127.0.0.1:1").signing_keys == (OTHER_KEY,)
    assert ConnectionSettings.resolve("nats://127.0.0.1:1", signing_key=KEY).signing_keys == (KEY,)
    shown = " ".join(repr(x) for x in (settings, Queue("q", settings), Worker("q", url=settings),
                                       Scheduler(settings)))
    assert KEY not in shown and OLD_KEY not in shown
    with pytest.raises(ConfigurationError, match="signing keys must be strings") as caught:
        ConnectionSettings(signing_keys=(KEY, 3))  # type: ignore[arg-type]
    assert KEY not in str(caught.value)


# --- a worker with a key, against a real server ---


async def test_forged_jobs_are_never_unpickled_and_recorded_as_rejected(
    url: str, tmp_path: Path, raw_js: JetStreamContext, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = str(tmp_path / "marks")
    unsigned, wrong_key, tampered = forged(path), forged(path), forged(path)
    good = Queue("signed", keyed(url, KEY))
    async with running_worker(keyed(url, KEY), "signed") as worker:
        await raw_js.publish("naq.queue.signed", unsigned.serialize())
        data = wrong_key.serialize()
        await raw_js.publish("naq.queue.signed", data, headers={HEADER: signature(data, OTHER_KEY, "signed")})
        data = tampered.serialize()
        await raw_js.publish("naq.queue.signed", data + b".", headers={HEADER: signature(data, KEY, "signed")})
        job = await good.enqueue(jobs.add, 2, 3)
        assert await job.result(timeout=10) == 5
        await eventually(lambda: worker.failed == 3, what="three rejections")
        failed = await list_failed(url)
        assert await stream_count(raw_js) == 0
    assert not Path(path).exists(), "a forged job was unpickled or run"
    assert sorted(e.reason for e in failed) == [
        "bad signature", f"bad signature: signed with unknown key {key_id(OTHER_KEY)}", "unsigned job"]
    assert all(e.job_id.startswith("rejected-") and e.queue_name == "signed" for e in failed)
    for job_id in (unsigned.job_id, wrong_key.job_id, tampered.job_id):
        assert await fetch_status(job_id, url) is None, "a status was written under an unverified job id"
    assert KEY not in caplog.text and OTHER_KEY not in caplog.text


async def test_a_worker_holding_new_and_old_keys_accepts_both(url: str) -> None:
    async with running_worker(keyed(url, KEY, OLD_KEY), "signed"):
        old = await Queue("signed", keyed(url, OLD_KEY)).enqueue(jobs.add, 1, 1)
        new = await Queue("signed", keyed(url, KEY)).enqueue_many([(jobs.add, (i, 10)) for i in range(3)])
        assert await old.result(timeout=10) == 2
        assert [await job.result(timeout=10) for job in new] == [10, 11, 12]


async def test_requeue_of_a_failed_signed_job_stays_valid(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    async with running_worker(keyed(url, KEY), "signed"):
        job = await Queue("signed", keyed(url, KEY)).enqueue(jobs.fail_times, path, 1)
        with pytest.raises(Exception, match="planned failure"):
            await job.result(timeout=10)
        await requeue_failed(job.job_id, url)  # by a client holding no key: the stored signature goes along
        assert await job.result(timeout=10) == 2
    status = await fetch_status(job.job_id, url)
    assert status is not None and status.status == FINISHED and await list_failed(url) == []


async def test_the_scheduler_signs_each_run_and_the_store_keeps_unsigned_bytes(url: str, tmp_path: Path) -> None:
    path = str(tmp_path / "marks")
    queue = Queue("signed", keyed(url, KEY))
    async with running_worker(keyed(url, KEY, OLD_KEY), "signed") as worker:
        async with running_scheduler(keyed(url, OLD_KEY)):  # any key the workers hold will do
            job = await queue.schedule(jobs.mark, path, "tick", interval=0.25, repeat=2, start_at=quarter_after(0.3))
            record = await ScheduledJobManager(url).get(job.job_id)
            await eventually(lambda: len(jobs.marks(path, "tick")) == 2, what="two signed runs")
        async with running_scheduler(url):  # holds no key: its runs are refused
            await queue.enqueue_at(quarter_after(0.3), jobs.mark, path, "unsigned run")
            await eventually(lambda: worker.failed == 1, what="the unsigned run to be rejected")
    assert jobs.marks(path, "unsigned run") == []
    assert [e.reason for e in await list_failed(url)] == ["unsigned job"]
    assert HEADER.encode() not in record.job_data and record.job_data.startswith(b"NAQJ")

