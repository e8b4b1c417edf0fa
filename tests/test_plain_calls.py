"""Calls read on the worker's loop: only plain data around an imported coroutine function, nothing that runs code."""

from __future__ import annotations

import asyncio
import pickle
import sys
import threading

import cloudpickle
import jobs

from naq_ipy.client.job import Job, read_header
from naq_ipy.worker.executor import Executor
from naq_ipy.worker.plain_calls import MAX_PLAIN_BYTES, plain_coroutine_call

LOADED: list[str] = []


class Loud:
    """Records every unpickling: a plain call must never run it on the loop."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return LOADED.append, ("loaded",)


def body(function: object, *args: object, **kwargs: object) -> bytes:
    return read_header(Job(function, args=args, kwargs=kwargs).serialize())[1]


def test_an_imported_coroutine_function_with_plain_arguments_is_read_on_the_loop() -> None:
    call = plain_coroutine_call(body(jobs.square_async, 7))
    assert call == (jobs.square_async, (7,), {})
    nested = {"a": [1, 2.5, None, True, b"x", ("t", frozenset({1}))], "s": {3}}
    assert plain_coroutine_call(body(jobs.square_async, x=nested)) == (jobs.square_async, (), {"x": nested})


def test_anything_that_could_run_code_or_take_long_goes_to_the_thread() -> None:
    assert plain_coroutine_call(body(jobs.add, 1, 2)) is None  # a plain function: its call runs in a thread anyway
    assert plain_coroutine_call(body(jobs.square_async, Loud())) is None
    assert LOADED == []  # refused before the object's reduce ran
    assert plain_coroutine_call(body(jobs.square_async, b"x" * MAX_PLAIN_BYTES)) is None

    async def local(x: int) -> int:  # pickled by value (cloudpickle): its code is rebuilt by cloudpickle's functions
        return x
    assert plain_coroutine_call(body(local, 1)) is None
    assert plain_coroutine_call(b"not a pickle") is None


def test_a_module_not_imported_yet_is_never_imported_on_the_loop() -> None:
    assert "this" not in sys.modules  # importing it prints the Zen of Python: code run by an unpickle
    crafted = b"(cthis\ns\n(t(dt."  # protocol 0: the tuple (this.s, (), {})
    assert plain_coroutine_call(crafted) is None
    assert "this" not in sys.modules
    assert pickle.loads(crafted)[0] is sys.modules["this"].s  # what a plain unpickle would have done


def test_a_crafted_pickle_calling_the_function_gets_no_call_shape() -> None:
    # REDUCE on the coroutine function itself only makes a coroutine object, which is not a call
    crafted = cloudpickle.dumps(_CallsIt())
    assert plain_coroutine_call(crafted) is None


class _CallsIt:
    def __reduce__(self) -> tuple[object, tuple[int]]:
        return jobs.square_async, (3,)


def test_a_plain_coroutine_job_runs_without_a_pool_thread() -> None:
    async def run() -> list[object]:
        executor = Executor(2)
        try:
            values = []
            for x in range(5):
                job = Job(jobs.square_async, args=(x,))
                data = job.serialize()
                values.append(await executor.run(Job.options_only(data), data, split=read_header(data)))
            return values
        finally:
            executor.shutdown()

    before = {t.name for t in threading.enumerate()}
    assert asyncio.run(run()) == [0, 1, 4, 9, 16]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("naq-job") and t.name not in before]
