"""A Job: one function call to run on a worker, and its wire format.

Wire format: `NAQJ` + a version byte + a 4-byte header length + a JSON header (every
option, readable without unpickling) + a cloudpickle of `(function, args, kwargs)`.
A worker can read, check and record a job's header without executing any pickle.
A data-sized call keeps its large parts in the payload store: the header's `payload` spec
names them by digest (inside the signed bytes), see naq_ipy.client.offload.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import cloudpickle

from naq_ipy.client.offload import Loaded, Packer, spec_bytes
from naq_ipy.client.pickling import PickledOnce, pickle_call, shared_pickle
from naq_ipy.client.sources import function_sources
from naq_ipy.errors import ConfigurationError, SerializationError
from naq_ipy.rules.retry import RetryDelay, retry_delay_from_json, retry_delay_to_json, validate_retry_delay
from naq_ipy.wire.settings import (
    DEFAULT_QUEUE_NAME,
    ConnectionSettings,
    strip_credentials,
    validate_key,
    validate_queue_name,
)

MAGIC = b"NAQJ"
WIRE_VERSION = 1
_PREFIX = struct.Struct(">4sBI")

_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps(separators=...) builds one per call
_JSON_SAFE_ID = re.compile(r"[A-Za-z0-9_=.-]+")
_HEADER_CACHE: dict[tuple[Any, ...], bytes] = {}
_HEADER_CACHE_SIZE = 256

JOB_OPTIONS = frozenset({"max_retries", "retry_delay", "depends_on", "timeout", "result_ttl", "job_id"})


def new_job_id() -> str:
    """A fresh random job id (32 hex characters, a valid KV key and message id)."""
    return os.urandom(16).hex()  # what uuid4().hex is made of, without the UUID object (hot path)


def function_name(func: Callable[..., Any]) -> str:
    """`module.qualname` of a callable, for display and logs."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"{module}.{name}"


def validate_max_retries(retries: Any) -> int:
    """Return `retries` if it is an integer >= 0, else raise ConfigurationError."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"max_retries must be an integer >= 0, got {retries!r}")
    return retries


def job_ids(jobs: Any, what: str) -> tuple[str, ...]:
    """The ids of an id, a Job, or an iterable of either (each checked); ConfigurationError `what, got x`."""
    if isinstance(jobs, str | Job):
        jobs = [jobs]
    elif not isinstance(jobs, Iterable):
        raise ConfigurationError(f"{what}, got {jobs!r}")
    ids = []
    for item in jobs:
        job_id = item.job_id if isinstance(item, Job) else item
        if not isinstance(job_id, str) or not job_id:
            raise ConfigurationError(f"{what}, got {item!r}")
        ids.append(validate_key(job_id, "job id"))
    return tuple(ids)


def dependency_ids(depends_on: Any) -> tuple[str, ...]:
    """Job ids from an id, a Job, or a list of either (None: no dependencies)."""
    return () if depends_on is None else job_ids(depends_on, "depends_on takes job ids or Jobs")


def _positive_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(eq=False)
class Job:
    """A function call to run on a worker, with its retry, timeout and dependency options.

    `timeout` and `result_ttl` are seconds; `enqueue_time` is a UTC unix timestamp.
    """

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue_name: str = DEFAULT_QUEUE_NAME
    job_id: str = field(default_factory=new_job_id)
    max_retries: int = 0
    retry_delay: RetryDelay = 0.0
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None
    result_ttl: float | None = None
    enqueue_time: float = field(default_factory=time.time)
    func_name: str = ""
    schedule_key: str | None = None
    url: str | ConnectionSettings | None = field(default=None, repr=False, compare=False)
    payload_bytes: int = field(default=0, repr=False, compare=False)  # of the call, in the payload store
    sources: dict[str, Any] | None = field(default=None, repr=False)  # notebook cells' lines, for tracebacks

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise ConfigurationError(f"a job needs a callable, got {self.function!r}")
        validate_queue_name(self.queue_name)
        validate_key(self.job_id, "job id")
        validate_max_retries(self.max_retries)
        self.args = tuple(self.args)
        self.kwargs = dict(self.kwargs)
        self.retry_delay = validate_retry_delay(self.retry_delay)
        self.depends_on = dependency_ids(self.depends_on)
        self.timeout = _positive_or_none("timeout", self.timeout)
        self.result_ttl = _positive_or_none("result_ttl", self.result_ttl)
        self.func_name = self.func_name or function_name(self.function)
        if self.sources is None:
            self.sources = function_sources(self.function)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with a reference to its server, never credentials (settings pickle without them too)."""
        state = dict(self.__dict__)
        if isinstance(self.url, str):
            state["url"] = strip_credentials(self.url)
        return state

    def header(self) -> dict[str, Any]:
        """Every field but the pickled call, as JSON-ready values (`sources` only when there are some)."""
        header: dict[str, Any] = {
            "job_id": self.job_id,
            "queue_name": self.queue_name,
            "func_name": self.func_name,
            "max_retries": self.max_retries,
            "retry_delay": retry_delay_to_json(self.retry_delay),
            "depends_on": list(self.depends_on),
            "timeout": self.timeout,
            "result_ttl": self.result_ttl,
            "enqueue_time": self.enqueue_time,
            "schedule_key": self.schedule_key,
        }
        if self.sources:
            header["sources"] = self.sources
        return header

    def serialize(self, packer: Packer | None = None) -> bytes:
        """The job as bytes for the wire; raises SerializationError naming what cannot be pickled.

        With a `packer`, a call above the payload threshold keeps its large parts there (to upload).
        """
        return self._serialize_call(self.function, packer)

    def _serialize_call(self, function: Any, packer: Packer | None = None) -> bytes:
        spec = None
        try:
            if packer is None:
                body = pickle_call(function, self.args, self.kwargs)
            else:
                packed = packer.pack(lambda buffers: pickle_call(function, self.args, self.kwargs, buffers),
                                     f"the call of job {self.job_id} ({self.func_name})")
                body, spec = packed.body, packed.spec
        except SerializationError:
            raise
        except Exception as e:
            raise SerializationError(f"cannot pickle {self._unpicklable_part()}: {e}") from e
        if spec is None:
            header = self._header_bytes()
        else:
            header = _HEADER_JSON.encode({**self.header(), "payload": spec}).encode()
        return _PREFIX.pack(MAGIC, WIRE_VERSION, len(header)) + header + body

    def _header_bytes(self) -> bytes:
        """`header()` as compact JSON; the part jobs with the same options share is encoded once."""
        # a bulk enqueue serializes thousands of jobs that differ only in id and time: its hot path
        if self.sources or not (type(self.enqueue_time) is float and math.isfinite(self.enqueue_time)
                and isinstance(self.job_id, str) and _JSON_SAFE_ID.fullmatch(self.job_id)):
            return _HEADER_JSON.encode(self.header()).encode()
        key = (self.queue_name, self.func_name, self.max_retries, self.retry_delay, self.depends_on, self.timeout,
               self.result_ttl, self.schedule_key)
        try:
            rest = _HEADER_CACHE.get(key)
        except TypeError:  # an unhashable value set on the job after it was made
            return _HEADER_JSON.encode(self.header()).encode()
        if rest is None:
            header = self.header()
            del header["job_id"], header["enqueue_time"]
            rest = _HEADER_JSON.encode(header)[1:].encode()
            if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[key] = rest
        return b'{"job_id":"%s","enqueue_time":%s,%s' % (self.job_id.encode(), repr(self.enqueue_time).encode(), rest)

    def _unpicklable_part(self) -> str:
        parts: Iterable[tuple[str, Any]] = [
            (f"function {self.func_name}", self.function),
            *((f"argument {i}", a) for i, a in enumerate(self.args)),
            *((f"keyword argument {k!r}", v) for k, v in self.kwargs.items()),
        ]
        for label, value in parts:
            try:
                cloudpickle.dumps(value)
            except Exception:
                return f"{label} ({type(value).__name__})"
        return "the job"

    @classmethod
    def deserialize(cls, data: bytes, loaded: Loaded | None = None) -> Job:
        """Rebuild a Job from `serialize()` bytes (and its payload, `loaded`); SerializationError for anything else."""
        header, body = read_header(data)
        job = cls.from_header(header, *load_call(header, body, loaded))
        job.payload_bytes = spec_bytes(header.get("payload"))
        return job

    @classmethod
    def options_only(cls, data: bytes) -> Job:
        """The Job of `serialize()` bytes with its call left unloaded (a placeholder): options and ids only.

        A worker reads this on its event loop; the call itself may take any time to unpickle, so
        `deserialize` runs where it cannot stall the loop (a thread, or the child process).
        """
        return cls.options_from_header(read_header(data)[0])

    @classmethod
    def options_from_header(cls, header: Mapping[str, Any]) -> Job:
        """`options_only` of a header already read (`read_header`)."""
        job = cls.from_header(header, _call_not_loaded, (), {})
        job.payload_bytes = spec_bytes(header.get("payload"))
        return job

    @classmethod
    def from_header(cls, header: Mapping[str, Any], function: Callable[..., Any], args: Any, kwargs: Any) -> Job:
        """A Job from a parsed header and its unpickled call."""
        values = {k: v for k, v in header.items() if k in _HEADER_FIELDS}
        try:  # the header comes off the wire: any bad value is an unreadable job, never a crash
            _check_header_types(values)
            values["retry_delay"] = retry_delay_from_json(values.get("retry_delay", 0))
            values["depends_on"] = tuple(values.get("depends_on") or ())
            return cls(function=function, args=tuple(args), kwargs=dict(kwargs), **values)
        except (ConfigurationError, TypeError, ValueError) as e:
            raise SerializationError(f"job {header.get('job_id')!r} has an invalid header: {e}") from e

    def for_call(self, function: Callable[..., Any], args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
                 job_id: str | None = None) -> Job:
        """A copy of this (already validated) job for another call, with a new id and time: bulk enqueues."""
        if not callable(function):
            raise ConfigurationError(f"a job needs a callable, got {function!r}")
        job = object.__new__(type(self))
        job.__dict__.update(self.__dict__)
        job.function, job.args, job.kwargs = function, tuple(args), dict(kwargs or {})
        job.job_id = new_job_id() if job_id is None else validate_key(job_id, "job id")
        job.enqueue_time = time.time()
        job.func_name = function_name(function)
        if function is not self.function:
            job.sources = function_sources(function)
        return job

    def with_call(self, function: Any, args: Any, kwargs: Any) -> Job:
        """A copy of this job with an unpickled call (a worker's options-only job made whole); SerializationError
        for a call that is no (callable, tuple, dict)."""
        if not callable(function) or not isinstance(args, tuple | list) or not isinstance(kwargs, dict):
            raise SerializationError(f"job {self.job_id!r}: its pickle holds no (function, args, kwargs) call")
        job = object.__new__(type(self))
        job.__dict__.update(self.__dict__)
        job.function, job.args, job.kwargs = function, tuple(args), kwargs
        return job

    def with_id(self, job_id: str, **changes: Any) -> Job:
        """A copy of this job under another id (one run of a schedule, a requeue)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(job_id=job_id, func_name=self.func_name, **changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        return self.header() == other.header() and (self.args, self.kwargs) == (other.args, other.kwargs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Job {self.job_id} {self.func_name} queue={self.queue_name}>"

    def _repr_html_(self) -> str:
        from naq_ipy.views.jobs import job_html

        return job_html(self.job_id, self.func_name, self.queue_name, None)

    async def status(self) -> Any:
        """This job's current status record (see `naq_ipy.status.results.JobStatus`)."""
        from naq_ipy.status.results import fetch_status

        return await fetch_status(self.job_id, url=self.url)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for this job to end and return its value; JobExecutionError if it failed."""
        from naq_ipy.status.results import fetch_result

        return await fetch_result(self.job_id, timeout=timeout, url=self.url)

    def result_sync(self, timeout: float | None = None) -> Any:
        """Blocking twin of `result` (through the sync bridge)."""
        from naq_ipy.client.bridge import run_sync

        return run_sync(self.result(timeout))

    def status_sync(self) -> Any:
        """Blocking twin of `status`."""
        from naq_ipy.client.bridge import run_sync

        return run_sync(self.status())

    async def logs(self) -> str:
        """The job's captured output so far (stdout, stderr, logging, warnings), finished or running."""
        from naq_ipy.status.output import fetch_output

        return await fetch_output(self.job_id, self.url)

    def logs_sync(self) -> str:
        """Blocking twin of `logs`."""
        from naq_ipy.client.bridge import run_sync

        return run_sync(self.logs())

    async def cancel(self) -> Any:
        """Cancel this job (queued: never starts; running: stopped); `cancelled`, `cancel requested` (no worker
        recorded it yet), `already finished` or `not found`."""
        from naq_ipy.status.cancel import cancel

        return (await cancel(self, url=self.url))[self.job_id]

    def cancel_sync(self) -> Any:
        """Blocking twin of `cancel`."""
        from naq_ipy.client.bridge import run_sync

        return run_sync(self.cancel())


def serialize_many(jobs: Sequence[Job], packer: Packer | None = None) -> list[bytes]:
    """`[job.serialize() for job in jobs]`, but a function shared by several jobs is pickled once.

    A notebook function travels by value, which costs several times the rest of a job. The wire
    format is unchanged (a worker unpickles the same `(function, args, kwargs)`); only a function
    and its job's arguments no longer share objects (dynamic classes still unpickle as one class).
    """
    counts = Counter(id(job.function) for job in jobs)
    shared: dict[int, PickledOnce | None] = {}
    out: list[bytes] = []
    for job in jobs:
        key = id(job.function)  # stable: every job holds its function until the batch is done
        if counts[key] > 1 and key not in shared:
            shared[key] = shared_pickle(job.function)
        once = shared.get(key)
        out.append(job._serialize_call(once if once is not None else job.function, packer))
    return out


_HEADER_FIELDS = frozenset(f.name for f in fields(Job)) - {"function", "args", "kwargs", "url", "payload_bytes"}


def _call_not_loaded(*args: Any, **kwargs: Any) -> Any:
    raise SerializationError("this job's call was not unpickled (Job.options_only)")


def load_call(header: Mapping[str, Any], body: bytes,
              loaded: Loaded | None = None) -> tuple[Callable[..., Any], Any, Any]:
    """Unpickle a job's `(function, args, kwargs)`: runs code of whoever made the pickle, and may take any time.

    A data-sized call needs its payload read first (`loaded`, see naq_ipy.client.offload.load_call).
    """
    if header.get("payload") is not None and loaded is None:
        raise SerializationError(f"job {header.get('job_id')!r}: its payload was not read")
    try:
        function, args, kwargs = loaded.loads(body) if loaded is not None else pickle.loads(body)
    except Exception as e:
        raise SerializationError(f"job {header.get('job_id')!r}: cannot unpickle its call: {e}") from e
    return function, args, kwargs


_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "enqueue_time": (int, float), "func_name": (str,), "schedule_key": (str, type(None)),
    "sources": (dict, type(None)),
}


def _check_header_types(values: Mapping[str, Any]) -> None:
    """TypeError for header fields a Job does not check itself (they are only displayed and logged)."""
    for name, types in _HEADER_TYPES.items():
        if name in values and (not isinstance(values[name], types) or isinstance(values[name], bool)):
            raise TypeError(f"{name} must be {' or '.join(t.__name__ for t in types)}, got {values[name]!r}")


def rewrite_header(data: bytes, **changes: Any) -> bytes:
    """The same job bytes with header fields changed; the pickled call is copied, never loaded."""
    header, body = read_header(data)
    unknown = set(changes) - set(header)
    if unknown:
        raise ConfigurationError(f"unknown job fields: {', '.join(sorted(unknown))}")
    header.update(changes)
    encoded = _HEADER_JSON.encode(header).encode()
    return _PREFIX.pack(MAGIC, WIRE_VERSION, len(encoded)) + encoded + body


def _body_stored(header: Mapping[str, Any]) -> bool:
    """Whether the job's pickle stream itself is in the payload store (its message then ends with the header)."""
    spec = header.get("payload")
    return isinstance(spec, dict) and spec.get("body") is not None


def read_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split wire bytes into (header dict, pickled call) without unpickling anything."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < _PREFIX.size:
        raise SerializationError("not a naq job: message too short")
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SerializationError("not a naq job: bad magic bytes")
    if version != WIRE_VERSION:
        raise SerializationError(f"unsupported naq job format version {version}")
    end = _PREFIX.size + length
    try:
        header = json.loads(bytes(data[_PREFIX.size:end]))
    except RecursionError:  # deeply nested JSON: the decoder stops at the recursion limit
        raise SerializationError("not a naq job: unreadable header (nested too deep)") from None
    except ValueError as e:
        raise SerializationError(f"not a naq job: unreadable header ({e})") from e
    if not isinstance(header, dict) or (len(data) <= end and not _body_stored(header)):
        raise SerializationError("not a naq job: truncated")
    return header, bytes(data[end:])
