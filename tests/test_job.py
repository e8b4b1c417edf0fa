"""Job and its wire format: every field round-trips, headers read without unpickling (no server needed)."""

from __future__ import annotations

import pickle
import struct
import types
from typing import Any

import cloudpickle
import pytest
from jobs import notebook_cell

from naq_ipy.client.job import JOB_OPTIONS, MAGIC, Job, dependency_ids, read_header, rewrite_header, serialize_many
from naq_ipy.client.queue import Queue, split_options
from naq_ipy.errors import ConfigurationError, SerializationError
from naq_ipy.rules.retry import ExponentialBackoff


def add(a: int, b: int = 0) -> int:
    return a + b


def _main_function(source: str, name: str) -> types.FunctionType:
    """Define a function the way a notebook cell does: in a module named `__main__` that is not importable."""
    func = notebook_cell(source)[name]
    assert isinstance(func, types.FunctionType)
    return func


def _all_fields(job: Job) -> dict[str, object]:
    names = ("args", "kwargs", "queue_name", "job_id", "max_retries", "retry_delay", "depends_on", "timeout",
             "result_ttl", "enqueue_time", "func_name", "schedule_key")
    return {name: getattr(job, name) for name in names}


@pytest.mark.parametrize("retry_delay", [0, 7.5, [1, 5, 30], ExponentialBackoff(base_s=2, max_s=60, jitter=True)])
def test_every_field_survives_a_round_trip(retry_delay: object) -> None:
    parent = Job(function=add, args=(1,))
    job = Job(
        function=add, args=(1, {"x": [1, 2]}), kwargs={"b": 2}, queue_name="reports", job_id="job-1",
        max_retries=3, retry_delay=retry_delay, depends_on=["a1", parent], timeout=12.5, result_ttl=60,
        enqueue_time=1_700_000_000.123456, schedule_key="nightly",
    )
    back = Job.deserialize(job.serialize())
    assert back == job
    assert _all_fields(back) == _all_fields(job)
    assert back.depends_on == ("a1", parent.job_id)
    assert back.enqueue_time == 1_700_000_000.123456  # exact float, not rounded
    assert back.function(*back.args[:1], **back.kwargs) == 3


def test_defaults_round_trip_and_ids_are_unique() -> None:
    one, two = Job(function=add), Job(function=add)
    assert one.job_id != two.job_id and len(one.job_id) == 32
    back = Job.deserialize(one.serialize())
    assert _all_fields(back) == _all_fields(one)
    assert back.func_name == f"{__name__}.add"


def test_function_from_main_travels_by_value() -> None:
    factor = 7
    func = _main_function("SECRET = 'by-value-marker'\ndef triple_plus(x):\n    return x * 3 + len(SECRET)\n",
                          "triple_plus")
    closure = _main_function(f"def make():\n    k = {factor}\n    return lambda x: x * k\nmul = make()\n", "mul")
    assert func.__module__ == "__main__"
    data = Job(function=func, args=(2,)).serialize()
    # by reference, unpickling would look up `triple_plus` in this process's __main__ (pytest): it is not there
    assert not hasattr(__import__("__main__"), "triple_plus")
    assert b"triple_plus" in data and b"by-value-marker" in data
    back = Job.deserialize(data)
    assert back.function(2) == 2 * 3 + len("by-value-marker")
    assert Job.deserialize(Job(function=closure, args=(6,)).serialize()).function(6) == 42


def test_importable_function_travels_by_reference() -> None:
    data = Job(function=add).serialize()
    _, body = read_header(data)
    assert pickle.loads(body)[0] is add


def test_read_header_does_not_unpickle() -> None:
    class Bomb:
        def __reduce__(self) -> tuple[object, ...]:
            return (exec, ("raise RuntimeError('unpickled!')",))

    job = Job(function=add, args=(Bomb(),), job_id="bomb", max_retries=2)
    data = job.serialize()
    header, body = read_header(data)
    assert header == job.header()
    assert header["job_id"] == "bomb" and header["max_retries"] == 2
    with pytest.raises(SerializationError, match="cannot unpickle"):
        Job.deserialize(data)


def test_rewrite_header_changes_fields_and_copies_the_pickle() -> None:
    job = Job(function=add, args=(1,), job_id="j1")
    data = job.serialize()
    changed = rewrite_header(data, queue_name="other", max_retries=4, timeout=9.0)
    header, body = read_header(changed)
    assert read_header(data)[1] == body
    assert (header["queue_name"], header["max_retries"], header["timeout"]) == ("other", 4, 9.0)
    back = Job.deserialize(changed)
    assert (back.queue_name, back.max_retries, back.timeout, back.job_id) == ("other", 4, 9.0, "j1")
    with pytest.raises(ConfigurationError, match="^unknown job fields: also, nope$"):
        rewrite_header(data, nope=1, also=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"NAQ", "too short"),
        (b"XXXX" + bytes(20), "bad magic"),
        (struct.pack(">4sBI", MAGIC, 99, 2) + b"{}x", "version 99"),
        (struct.pack(">4sBI", MAGIC, 1, 5) + b"{bad}x", "unreadable header"),
        (struct.pack(">4sBI", MAGIC, 1, 2) + b"{}", "truncated"),
        ("not bytes", "too short"),
    ],
)
def test_read_header_rejects_foreign_bytes(data: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        read_header(data)


def test_deserialize_rejects_an_invalid_header() -> None:
    data = rewrite_header(Job(function=add).serialize(), max_retries=-1)
    with pytest.raises(SerializationError, match="invalid header"):
        Job.deserialize(data)


def test_unpicklable_parts_are_named() -> None:
    import threading

    with pytest.raises(SerializationError, match=r"argument 1 \(lock\)"):
        Job(function=add, args=(1, threading.Lock())).serialize()
    with pytest.raises(SerializationError, match=r"keyword argument 'b' \(lock\)"):
        Job(function=add, kwargs={"b": threading.Lock()}).serialize()


def test_dependency_ids_accept_ids_jobs_and_lists() -> None:
    job = Job(function=add, job_id="dep-job")
    assert dependency_ids(None) == ()
    assert dependency_ids("a") == ("a",)
    assert dependency_ids(job) == ("dep-job",)
    assert dependency_ids(["a", job, "b"]) == ("a", "dep-job", "b")
    assert dependency_ids(("x",)) == ("x",)
    for bad in ([""], [3], "a b", ["a.."]):
        with pytest.raises(ConfigurationError):
            dependency_ids(bad)


def test_options_are_split_from_function_kwargs() -> None:
    kwargs = {name: 1 for name in JOB_OPTIONS} | {"b": 2, "retry_strategy": "x"}
    options, func_kwargs = split_options(kwargs)
    assert set(options) == JOB_OPTIONS
    assert func_kwargs == {"b": 2, "retry_strategy": "x"}


def test_queue_job_builds_without_sending_and_rejects_unknown_options() -> None:
    queue = Queue("q1", nats_url="nats://127.0.0.1:1", default_timeout=30)
    job = queue.job(add, (1,), {"timeout": "the function's own"}, max_retries=2)
    assert (job.queue_name, job.timeout, job.max_retries) == ("q1", 30.0, 2)
    assert job.kwargs == {"timeout": "the function's own"}  # a function kwarg named like an option, via job()
    with pytest.raises(ConfigurationError, match="unknown job options: retry_strategy"):
        queue.job(add, (), retry_strategy="linear")


def test_equality_covers_header_and_call() -> None:
    job = Job(function=add, args=(1,), job_id="same", enqueue_time=1.0)
    assert job == Job(function=add, args=(1,), job_id="same", enqueue_time=1.0)
    assert job != Job(function=add, args=(2,), job_id="same", enqueue_time=1.0)
    assert job != Job(function=add, args=(1,), job_id="same", enqueue_time=2.0)
    assert cloudpickle.loads(cloudpickle.dumps(job)) == job


def mul(a: int, b: int = 1) -> int:
    return a * b


def test_headers_of_jobs_sharing_options_stay_their_own() -> None:
    template = Job(function=add, args=(1,), queue_name="q", max_retries=2, retry_delay=[1, 2], timeout=5)
    twins = [template, template.for_call(add, (2,)), template.for_call(mul, (3,), {"b": 4})]
    headers = [read_header(job.serialize())[0] for job in twins]
    assert headers == [job.header() for job in twins]
    assert len({h["job_id"] for h in headers}) == 3
    assert headers[2]["func_name"] == f"{__name__}.mul" and headers[2]["max_retries"] == 2
    assert Job.deserialize(twins[2].serialize()).function(3, b=4) == 12
    template.max_retries, template.retry_delay = 7, [3]  # changed after a serialize: no stale header
    assert read_header(template.serialize())[0]["max_retries"] == 7
    assert read_header(template.serialize())[0]["retry_delay"] == [3]
    template.job_id = 'odd "id"'
    assert read_header(template.serialize())[0]["job_id"] == 'odd "id"'


def test_for_call_validates_what_changes() -> None:
    template = Job(function=add, job_id="fixed")
    with pytest.raises(ConfigurationError, match="callable"):
        template.for_call("add")
    with pytest.raises(ConfigurationError, match="job id"):
        template.for_call(add, job_id="no spaces")
    copy = template.for_call(mul, [2], job_id="fixed")
    assert (copy.job_id, copy.args, copy.func_name, template.func_name) == (
        "fixed", (2,), f"{__name__}.mul", f"{__name__}.add")
    assert copy.enqueue_time >= template.enqueue_time and template.args == ()


def test_serialize_many_pickles_a_shared_function_once() -> None:
    source = ("class Point:\n    def __init__(self, x):\n        self.x = x\n"
              "def shift(p, by):\n    return Point(p.x + by) if isinstance(p, Point) else None\n")
    namespace = notebook_cell(source)
    shift, point = namespace["shift"], namespace["Point"]
    jobs = [Job(function=shift, args=(point(i),), kwargs={"by": 10}) for i in range(3)] + [Job(function=add)]
    datas = serialize_many(jobs)
    assert datas[3] == jobs[3].serialize()  # a function used once takes the plain path
    by_reference = [Job(function=add, args=(i,)) for i in range(2)]
    assert serialize_many(by_reference) == [job.serialize() for job in by_reference]  # cheap to re-pickle
    for i, data in enumerate(datas[:3]):
        back = Job.deserialize(data)
        assert back.header() == jobs[i].header() and back.kwargs == {"by": 10}
        moved = back.function(*back.args, **back.kwargs)
        assert moved is not None and moved.x == i + 10  # the argument's class is the function's class
    plain = [Job(function=shift, args=(b"x" * 1024,), kwargs={"by": 1}) for _ in range(2)]
    assert abs(len(serialize_many(plain)[1]) - len(plain[1].serialize())) < 64  # same size on the wire


def test_serialize_many_names_what_cannot_be_pickled() -> None:
    import threading

    with pytest.raises(SerializationError, match="function test_job.Unpicklable"):
        serialize_many([Job(function=Unpicklable()), Job(function=Unpicklable())])
    shared = Unpicklable()
    with pytest.raises(SerializationError, match="cannot pickle function"):
        serialize_many([Job(function=shared), Job(function=shared)])
    with pytest.raises(SerializationError, match=r"argument 0 \(lock\)"):
        serialize_many([Job(function=add, args=(1,)), Job(function=add, args=(threading.Lock(),))])


class Unpicklable:
    def __call__(self) -> None:
        return None

    def __reduce__(self) -> Any:
        raise TypeError("refusing to be pickled")
