"""Data-sized calls and results: pickle protocol 5, large buffers and large pickles to the payload store.

A value is pickled with out-of-band buffers: numpy, pandas and Arrow data stay where they are
(`PickleBuffer`s over the caller's memory) instead of being copied into one giant bytes object.
When the whole is under the payload threshold it is pickled in-band as always; above it, each
large buffer (and the pickle stream itself when it is large) is stored as its own object named by
its digest, and the job or status record carries only the spec `{"body": ref|null, "buffers":
[ref, ...]}` with `ref = [name, size]`. One buffer passed to a hundred jobs is one object, and a
batch hashes it once. A value over the cap is refused while packing: nothing has been written yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from naq_ipy.errors import SerializationError
from naq_ipy.wire import payloads
from naq_ipy.wire.connection import Connection
from naq_ipy.wire.payload_cache import fetch_cached
from naq_ipy.wire.payloads import PayloadRef
from naq_ipy.wire.settings import ConnectionSettings

ARGS_KEEP_S = 3600.0  # an uploaded argument outlives the sweep this long even before its job is queued
Spec = dict[str, Any]


def human_bytes(size: int | float) -> str:
    """`152 MB`, `8.0 MB`, `900 kB`: a size for people (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(size)} B"


@dataclass
class Packed:
    """A pickled value: its pickle stream (empty when stored as an object) and its payload spec, if any."""

    body: bytes
    spec: Spec | None = None
    packer: Packer | None = field(default=None, repr=False)  # holds the objects to upload

    @property
    def stored_bytes(self) -> int:
        """Bytes of this value that live in the payload store."""
        return spec_bytes(self.spec)


def spec_bytes(spec: Mapping[str, Any] | None) -> int:
    """Total size of the objects a payload spec refers to."""
    return sum(ref.size for ref in spec_refs(spec))


def spec_refs(spec: Mapping[str, Any] | None) -> list[PayloadRef]:
    """The objects a payload spec refers to (body first); SerializationError for a malformed spec."""
    if spec is None:
        return []
    if not isinstance(spec, Mapping) or not isinstance(spec.get("buffers"), list):
        raise SerializationError(f"invalid payload spec {spec!r}")
    body = spec.get("body")
    return [*([PayloadRef.from_json(body)] if body is not None else []),
            *map(PayloadRef.from_json, spec["buffers"])]


@dataclass
class Packer:
    """Pickles the values of one batch (a job, an `enqueue_many`, a result) and collects what to upload."""

    settings: ConnectionSettings
    uploads: dict[str, memoryview] = field(default_factory=dict)
    _seen: dict[tuple[int, int], PayloadRef] = field(default_factory=dict)
    _keep: list[Any] = field(default_factory=list)  # what `_seen` ids point at, alive until the batch is done

    def pack(self, dump: Callable[[list[pickle.PickleBuffer] | None], bytes], what: str, *,
             in_band: bool = True) -> Packed:
        """Pickle with `dump(buffers)` (it appends out-of-band buffers to `buffers`, or pickles in-band on None).

        `in_band=False`: `dump` cannot pickle in band (a stream made elsewhere): its buffers are stored even when small.
        """
        buffers: list[pickle.PickleBuffer] = []
        body = dump(buffers)
        views = [buffer.raw() for buffer in buffers]
        total = len(body) + sum(view.nbytes for view in views)
        if total > self.settings.payload_max_bytes:
            raise SerializationError(f"{what} is {human_bytes(total)} ({total:,} bytes), over the payload cap of "
                                     f"{human_bytes(self.settings.payload_max_bytes)} (NAQ_PAYLOAD_MAX)")
        if total <= self.settings.payload_threshold_bytes and (in_band or not views):
            return Packed(dump(None) if views else body)
        refs = [self._ref(buffer, view) for buffer, view in zip(buffers, views, strict=True)]
        body_ref = None
        if len(body) > self.settings.payload_threshold_bytes:
            body_ref = self._ref(body, memoryview(body))
            body = b""
        spec = {"body": body_ref.to_json() if body_ref else None, "buffers": [ref.to_json() for ref in refs]}
        return Packed(body, spec, self)

    def _ref(self, owner: Any, view: memoryview) -> PayloadRef:
        """The object for `view`, hashed once per batch for the same memory (`owner` keeps it alive)."""
        key = (id(view.obj), view.nbytes)
        ref = self._seen.get(key)
        if ref is None:
            ref = self._seen[key] = PayloadRef(payloads.NAME_PREFIX + hashlib.sha256(view).hexdigest(), view.nbytes)
            self._keep.append(view.obj)
        self.uploads.setdefault(ref.name, view)
        self._keep.append(owner)
        return ref

    async def upload(self, conn: Connection, keep_s: float = ARGS_KEEP_S) -> int:
        """Store every collected object not stored yet (a few at a time); returns bytes written."""
        if not self.uploads:
            return 0
        written = 0
        limit = asyncio.Semaphore(4)

        async def one(name: str, view: memoryview) -> None:
            nonlocal written
            async with limit:
                if await payloads.store(conn, PayloadRef(name, view.nbytes), view, keep_s):
                    written += view.nbytes

        await asyncio.gather(*(one(name, view) for name, view in self.uploads.items()))
        return written


@dataclass
class Loaded:
    """A payload read back: the pickle stream (None: the message carries it) and the out-of-band buffers."""

    body: memoryview | None
    buffers: list[memoryview]

    def loads(self, inline: bytes) -> Any:
        """Unpickle with these buffers (`inline` is the stream when the message carried it)."""
        return pickle.loads(self.body if self.body is not None else inline, buffers=self.buffers)


async def load(conn: Connection, spec: Mapping[str, Any], *, shared: bool) -> Loaded:
    """Read every object of `spec` (verified); `shared`: through the process cache, handed out read-only."""
    refs = spec_refs(spec)
    total = sum(ref.size for ref in refs)
    if total > conn.settings.payload_max_bytes:  # checked before allocating anything for it
        raise SerializationError(f"payload of {total:,} bytes is over the payload cap of "
                                 f"{conn.settings.payload_max_bytes:,} bytes (NAQ_PAYLOAD_MAX)")
    body = spec.get("body")

    async def one(ref: PayloadRef) -> memoryview:
        if shared:
            return memoryview(await fetch_cached(conn, ref)).toreadonly()
        return memoryview(await payloads.fetch(conn, ref))

    views = list(await asyncio.gather(*map(one, refs)))
    if body is not None:
        return Loaded(views[0], views[1:])
    return Loaded(None, views)


async def load_call(conn: Connection, header: Mapping[str, Any]) -> Loaded | None:
    """The payload of a job whose header was read (None when it has none), through the process cache."""
    spec = header.get("payload")
    return None if spec is None else await load(conn, spec, shared=True)


def load_call_sync(settings: ConnectionSettings, header: Mapping[str, Any]) -> Loaded | None:
    """`load_call` from plain code (a process-mode child), through this process's bridge and cache."""
    if header.get("payload") is None:
        return None
    from naq_ipy.client.bridge import run_sync  # the bridge starts a thread: only for children that need it
    from naq_ipy.wire.connection import get_connection

    async def read() -> Loaded | None:
        return await load_call(await get_connection(settings), header)

    return run_sync(read())
