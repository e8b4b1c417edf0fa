"""Run one job's call with its timeout: coroutines on the loop, plain functions in threads or processes.

Coroutine functions are awaited on the worker's loop and cancelled at their timeout. Plain
functions run in a thread pool (an overrun cannot be stopped: it is reported at the
deadline and its thread keeps its slot until it returns) or, in process mode, in one
single-process `ProcessPoolExecutor` per slot, so an overrunning child can be killed by
pid without touching the jobs of other slots. A cancelled job is stopped through its
`StopHandle` (worker/stopping.py): its task cancelled, its thread interrupted, or its child killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from typing import Any

import cloudpickle

from naq_ipy.client.job import Job, load_call, read_header
from naq_ipy.client.offload import Loaded, load_call_sync
from naq_ipy.client.pickling import dumps_value
from naq_ipy.errors import NaqConnectionError, SerializationError
from naq_ipy.status.progress import child_reporting, delegate_to_child
from naq_ipy.status.results import PickledValue
from naq_ipy.wire.settings import ConnectionSettings
from naq_ipy.worker import output
from naq_ipy.worker.plain_calls import plain_coroutine_call
from naq_ipy.worker.stopping import JobCancelled, StopHandle, ThreadCall
from naq_ipy.worker.tracebacks import register_sources, remote_traceback

ERROR_LINE_MAX = 500


def one_line(text: str, limit: int = ERROR_LINE_MAX) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(`Type: message` on one line, the full traceback text) of an exception raised by a job."""
    return one_line(f"{type(exc).__name__}: {exc}"), remote_traceback(exc)


def is_async_callable(func: Callable[..., Any]) -> bool:
    """True for coroutine functions, partials of them and objects with an `async def __call__`."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


class UnreadableCall(Exception):
    """The job's call could not be unpickled: unreadable input, rejected like a bad header."""


class JobFailure(Exception):
    """A job's call raised or overran; `error` is one line, `traceback` the remote traceback text.

    `still_running` is the future of an overrunning thread that could not be stopped: its
    slot is free only once that future is done.
    """

    def __init__(self, error: str, traceback_text: str = "", still_running: asyncio.Future[Any] | None = None):
        super().__init__(error)
        self.error = error
        self.traceback = traceback_text
        self.still_running = still_running

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobFailure:
        """The failure describing `exc`."""
        return cls(*describe_exception(exc))


def _timeout_failure(timeout_s: float | None, what: str, still_running: asyncio.Future[Any] | None = None,
                     ) -> JobFailure:
    error = f"TimeoutError: job exceeded its timeout of {timeout_s or 0:g}s; {what}"
    return JobFailure(error, still_running=still_running)


def _consume(future: asyncio.Future[Any] | Future[Any]) -> None:
    """Retrieve an abandoned future's exception so it is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


def _settings(fields: dict[str, Any] | None) -> ConnectionSettings | None:
    return None if fields is None else ConnectionSettings(**fields)


def _fields(settings: ConnectionSettings | None) -> dict[str, Any] | None:
    """`settings` as a plain dict for a child (pickled settings carry no credentials)."""
    return None if settings is None else asdict(settings)


def run_in_child(data: bytes, progress_to: dict[str, Any] | None = None,
                 output_to: dict[str, Any] | None = None) -> tuple[str, bytes | tuple[bytes, list[bytes]] | str, str]:
    """Process-mode entry: unpickle the job bytes here (never in the worker), run the call (a coroutine
    function on its own loop), return ("ok", pickled value) or an error.

    `progress_to`: the fields of the settings the job's `progress` calls are written with from this
    process; `output_to`: those its output is published with (None: not captured). Plain dicts:
    pickled settings carry no credentials. A data-sized call's payload is read here too (bytes,
    verified by digest, through this child's own cache), never by the worker.
    """
    try:
        settings = _settings(progress_to) or ConnectionSettings.resolve()
        job = Job.deserialize(data, load_call_sync(settings, read_header(data)[0]))
    except SerializationError as e:
        return "unreadable", str(e), ""
    except NaqConnectionError as e:  # its payload could not be read now: a failure, retried
        return ("error", *describe_exception(e))
    try:
        register_sources(job.sources, job.function)
        with (child_reporting(job.job_id, _settings(progress_to)),
              output.child_capture(job.job_id, _settings(output_to), job.result_ttl)):
            call = functools.partial(job.function, *job.args, **job.kwargs)
            value = asyncio.run(call()) if is_async_callable(job.function) else call()
    except (Exception, SystemExit) as e:
        return ("error", *describe_exception(e))
    try:
        return "ok", _pickled_result(value, settings), ""
    except Exception as e:
        return "unpicklable", f"result of job {job.job_id} cannot be pickled: {e}", ""


def _pickled_result(value: Any, settings: ConnectionSettings) -> bytes | tuple[bytes, list[bytes]]:
    """A child's result for the worker: in band, or (stream, out-of-band buffers) above the payload threshold."""
    buffers: list[pickle.PickleBuffer] = []
    stream = dumps_value(value, buffers)
    if not buffers:
        return stream
    if len(stream) + sum(buffer.raw().nbytes for buffer in buffers) <= settings.payload_threshold_bytes:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return stream, [buffer.raw().tobytes() for buffer in buffers]  # bytes: the pool's pipe pickles at protocol 4


def _exit_with_parent() -> None:
    """Pool initializer: end this child when the worker that made it dies.

    A pool child holds both ends of its own call queue, so a killed worker would leave it (and,
    through it, the forkserver) waiting forever; the parent's sentinel closes when the worker dies.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when_ready, args=(parent.sentinel,), name="naq-parent-watch", daemon=True).start()


def _exit_when_ready(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


Split = tuple[dict[str, Any], bytes]  # a job message as read_header splits it: (header, pickled call)


@dataclass(frozen=True)
class _CoroutineCall:
    """A loaded job whose function is a coroutine function: it runs on the worker's loop."""

    job: Job


def _load_and_call(job: Job, data: bytes, loaded: Loaded | None = None, split: Split | None = None) -> Any:
    """Thread-mode entry: unpickle the job's call here (with its payload's buffers, `loaded`), off the
    worker's loop, and make it unless it is async."""
    try:
        header, body = split or read_header(data)
        job = job.with_call(*load_call(header, body, loaded))
    except SerializationError as e:
        raise UnreadableCall(str(e)) from None
    register_sources(job.sources, job.function)
    if is_async_callable(job.function):
        return _CoroutineCall(job)
    return job.function(*job.args, **job.kwargs)


@dataclass
class _Child:
    """A single-process pool and the pid of its one process."""

    pool: ProcessPoolExecutor
    pid: int

    def kill(self) -> None:
        """Kill the process at once and drop the pool."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.pool.shutdown(wait=False, cancel_futures=True)


class _ProcessSlots:
    """Up to `size` child processes, each reused job after job until it must be killed."""

    def __init__(self) -> None:
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._idle: list[_Child] = []
        self._busy: list[_Child] = []

    async def _take(self) -> _Child:
        if self._idle:
            child = self._idle.pop()
        else:
            pool = ProcessPoolExecutor(max_workers=1, mp_context=self._context, initializer=_exit_with_parent)
            try:
                # a one-process pool never replaces its process, so this pid stays valid
                child = _Child(pool, await asyncio.get_running_loop().run_in_executor(pool, os.getpid))
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        self._busy.append(child)
        return child

    async def run(self, data: bytes, timeout_s: float | None, stop: StopHandle | None = None) -> Any:
        """Run the job bytes in a child; kill it at the timeout, at a `stop` or when the caller is cancelled."""
        child = await self._take()
        if stop is not None:
            stop.set_stopper(child.kill)
        future = asyncio.get_running_loop().run_in_executor(child.pool, run_in_child, data,
                                                            _fields(delegate_to_child()),
                                                            _fields(output.delegate_to_child()))
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout_s)
        finally:
            if stop is not None:
                stop.clear()
            self._busy.remove(child)
            if future.done() and not future.cancelled() and future.exception() is None:
                self._idle.append(child)
            else:
                future.add_done_callback(_consume)
                child.kill()
        if not done:
            raise _timeout_failure(timeout_s, "its process was killed")
        try:
            kind, payload, tb = future.result()
        except BrokenProcessPool:
            raise JobFailure("ProcessError: the job's worker process died") from None
        if kind == "ok":  # passed on as it is: the worker never unpickles what a job's code made
            return PickledValue(payload[0], tuple(payload[1])) if isinstance(payload, tuple) \
                else PickledValue(payload)  # type: ignore[arg-type]
        if kind == "unreadable":
            raise UnreadableCall(str(payload))
        if kind == "unpicklable":
            raise SerializationError(str(payload))
        raise JobFailure(str(payload), tb)

    def shutdown(self) -> None:
        """Kill running children, let idle ones exit."""
        for child in self._busy:
            child.kill()
        for child in self._idle:
            child.pool.shutdown(wait=False)
        self._idle, self._busy = [], []


async def _stoppable(coro: Any, stop: StopHandle) -> Any:
    """Await `coro` in its own task, which `stop` cancels (then JobCancelled here)."""
    task = asyncio.ensure_future(coro)
    stop.set_stopper(task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if stop.requested and (current is None or not current.cancelling()):
            raise JobCancelled from None
        raise


class Executor:
    """Runs job calls for one worker: `concurrency` threads, or child processes with `process_pool`."""

    def __init__(self, concurrency: int, process_pool: bool = False) -> None:
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="naq-job")
        self._processes = _ProcessSlots() if process_pool else None

    @property
    def loads_in_child(self) -> bool:
        """Whether calls are unpickled in child processes (which then read their payloads themselves)."""
        return self._processes is not None

    async def run(self, job: Job, data: bytes, stop: StopHandle | None = None, buffers: Loaded | None = None,
                  split: Split | None = None) -> Any:
        """The call's return value; JobFailure if it raised or overran, SerializationError for a bad result,
        UnreadableCall if its call cannot be unpickled.

        `job` may carry its options only (`Job.options_only`): the call is unpickled from `data` in a
        pool thread, or in process mode in the child, never on the worker's event loop. `stop` lets the
        worker stop the call when the job is cancelled (JobCancelled, or a JobFailure of a killed child,
        with `stop.requested` set). `buffers`: the call's payload, read (bytes only) on the loop, for
        the thread that unpickles it; a child reads its own. `split`: `data` as `read_header` split it,
        when the caller did; a call of plain data around an imported coroutine function is then read
        here and awaited without a thread (see worker/plain_calls.py).
        """
        if self._processes is not None:
            return await self._processes.run(data, job.timeout, stop)
        plain = plain_coroutine_call(split[1]) if split is not None and buffers is None else None
        if plain is not None:
            job = job.with_call(*plain)
            register_sources(job.sources, job.function)
            return await self._await(job, stop)
        value = await self._run_thread(job, data, stop, buffers, split)
        if isinstance(value, _CoroutineCall):
            return await self._await(value.job, stop)
        return value

    async def _await(self, job: Job, stop: StopHandle | None) -> Any:
        coroutine = self._run_coroutine(job)
        return await (coroutine if stop is None else _stoppable(coroutine, stop))

    async def _run_coroutine(self, job: Job) -> Any:
        deadline = asyncio.timeout(job.timeout)
        try:
            async with deadline:
                return await job.function(*job.args, **job.kwargs)
        except (Exception, SystemExit) as e:
            if deadline.expired():
                raise _timeout_failure(job.timeout, "it was cancelled") from None
            raise JobFailure.from_exception(e) from None

    async def _run_thread(self, job: Job, data: bytes, stop: StopHandle | None = None,
                          buffers: Loaded | None = None, split: Split | None = None) -> Any:
        """Unpickle the call and make it in one pool thread (a coroutine function comes back as `_CoroutineCall`)."""
        # a copy of this task's context: `progress` and the output capture in the thread see the current job
        call: Callable[[], Any] = functools.partial(contextvars.copy_context().run, _load_and_call, job, data,
                                                       buffers, split)
        if stop is not None:
            call = ThreadCall(call, stop)
        future = asyncio.get_running_loop().run_in_executor(self._threads, call)
        done, _ = await asyncio.wait({future}, timeout=job.timeout)
        if not done:
            future.add_done_callback(_consume)
            raise _timeout_failure(job.timeout, "its thread is still running", still_running=future)
        try:
            return future.result()
        except UnreadableCall:
            raise
        except (Exception, SystemExit) as e:
            raise JobFailure.from_exception(e) from None

    def shutdown(self) -> None:
        """Stop taking work: threads still running finish on their own; child processes are stopped."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown()
