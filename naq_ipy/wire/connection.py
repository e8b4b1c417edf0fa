"""NATS connections pooled per (event loop, settings), the streams and buckets naq needs, publishing.

A connection belongs to the loop it was made on and is only ever handed out on that
loop. Helpers never close pooled connections; `close_all()` does, for the calling loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from naq_ipy.errors import ConflictError, NaqConnectionError, NaqException, PermissionDeniedError, SerializationError
from naq_ipy.wire import names
from naq_ipy.wire.acks import AckInbox
from naq_ipy.wire.server import Answer, first_address, probe
from naq_ipy.wire.settings import DEFAULT_RESULT_TTL_S, ConnectionSettings

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
NOT_NATS_PROBE_S = 0.25

_BUCKETS: dict[str, dict[str, Any]] = {
    names.SCHEDULED_JOBS_KV_NAME: {"history": 1, "description": "naq scheduled jobs"},
    names.JOB_STATUS_KV_NAME: {"history": 1, "description": "naq job status"},
    names.RESULTS_KV_NAME: {"history": 1, "description": "naq job results"},
    names.WORKERS_KV_NAME: {"history": 1, "description": "naq worker heartbeats"},
    names.SCHEDULER_CLOCK_KV_NAME: {"history": 1, "ttl": 3600.0, "description": "naq scheduler clock probes"},
    # a request outlives no result: it keeps a queued job from running as long as a `cancelled` status would
    names.CANCEL_REQUESTS_KV_NAME: {"history": 1, "ttl": DEFAULT_RESULT_TTL_S, "description": "naq cancel requests"},
}


@dataclass
class Connection:
    """One pooled NATS connection with its JetStream context and the buckets opened on it."""

    settings: ConnectionSettings
    nc: Client
    js: JetStreamContext
    _kvs: dict[str, KeyValue] = field(default_factory=dict)
    _streams: set[str] = field(default_factory=set)
    _acks: AckInbox | None = None

    @property
    def acks(self) -> AckInbox:
        """Where this connection's JetStream publishes wait for their acks (made on first use)."""
        if self._acks is None:
            self._acks = AckInbox(self.nc)
        return self._acks

    @property
    def max_payload(self) -> int:
        """The server's max message size in bytes."""
        return self.nc.max_payload

    async def kv(self, bucket: str) -> KeyValue:
        """The KV bucket `bucket`, created with naq's settings if it does not exist yet."""
        if bucket not in self._kvs:
            async with nats_errors(self.settings):
                self._kvs[bucket] = await _open_or_create_kv(self.js, bucket, self.settings.replicas)
        return self._kvs[bucket]

    async def ensure_stream(self, name: str = names.JOB_STREAM_NAME,
                            create: Callable[[], Awaitable[object]] | None = None) -> None:
        """Create the stream `name` if missing, once per connection; an existing one is left as it is.

        `create`: how to make it (an Object Store's stream); by default naq's jobs, failed-jobs or logs stream.
        """
        if name in self._streams:
            return
        async with nats_errors(self.settings):
            try:
                await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                if create is None:
                    await _add_stream(self.js, _stream_config(name, self.settings, self.max_payload))
                else:
                    await create()
        self._streams.add(name)

    async def recreate_stream_for(self, subject: str) -> bool:
        """After 'no stream' for `subject`: forget cached facts and recreate naq's stream or bucket."""
        self._streams.clear()
        if names.is_kv_subject(subject):
            bucket = subject.split(".")[1]
            self._kvs.pop(bucket, None)
            await self.kv(bucket)
            return True
        for name, prefix in ((names.JOB_STREAM_NAME, names.QUEUE_SUBJECT_PREFIX),
                             (names.FAILED_STREAM_NAME, names.FAILED_SUBJECT_PREFIX),
                             (names.LOGS_STREAM_NAME, names.LOGS_SUBJECT_PREFIX)):
            if subject.startswith(prefix + "."):
                await self.ensure_stream(name)
                return True
        return False


_STREAM_SHAPES: dict[str, dict[str, Any]] = {
    names.JOB_STREAM_NAME: {"subjects": [f"{names.QUEUE_SUBJECT_PREFIX}.*"],
                            "retention": api.RetentionPolicy.WORK_QUEUE, "duplicate_window": names.DUPLICATE_WINDOW_S},
    names.FAILED_STREAM_NAME: {"subjects": [f"{names.FAILED_SUBJECT_PREFIX}.>"],
                               "retention": api.RetentionPolicy.LIMITS, "discard": api.DiscardPolicy.OLD},
    # a job's output lives as long as its result (per-message TTL; max_age is the ceiling)
    names.LOGS_STREAM_NAME: {"subjects": [f"{names.LOGS_SUBJECT_PREFIX}.>"], "retention": api.RetentionPolicy.LIMITS,
                             "max_age": DEFAULT_RESULT_TTL_S, "allow_msg_ttl": True},
}


def _stream_config(name: str, settings: ConnectionSettings, max_payload: int) -> api.StreamConfig:
    if name not in _STREAM_SHAPES:
        raise NaqException(f"unknown naq stream {name!r}")
    limits: dict[str, Any] = {}
    if name == names.FAILED_STREAM_NAME:
        # whoever may publish jobs may fill it with rejects: bounded, the oldest entries go first
        limits = {"max_bytes": settings.failed_max_bytes, "max_age": settings.failed_max_age_s,
                  "max_msg_size": min(names.FAILED_MAX_MSG_BYTES, max_payload)}
    return api.StreamConfig(name=name, storage=api.StorageType.FILE, num_replicas=settings.replicas,
                            **_STREAM_SHAPES[name], **limits)


async def _add_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.stream_info(config.name or "")  # created concurrently by someone else: fine if it exists now


async def _open_or_create_kv(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=bucket, replicas=replicas, **_BUCKETS.get(bucket, {}))
    except nats.js.errors.BadRequestError:
        return await js.key_value(bucket)  # lost a creation race; use the winner's bucket as it is


def _tls_context(settings: ConnectionSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca_file)
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def _log_nats_error(error: Exception) -> None:
    # reconnect attempts fail every 250 ms while a server is down: keep those at debug level
    quiet = isinstance(error, OSError | nats.errors.UnexpectedEOF | nats.errors.StaleConnectionError)
    logger.log(logging.DEBUG if quiet else logging.WARNING, "nats: %s",
               type(error).__name__ if "@" in str(error) else error)


def _is_auth_error(error: BaseException) -> bool:
    # nats-py reports a refused CONNECT as a plain Error("nats: 'Authorization Violation'")
    return isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in str(error).lower()


# The last "permissions violation" NATS reported per settings: (monotonic time, what was refused).
# The server answers a refused publish or subscribe with an asynchronous -ERR only (nats-py hands it
# to error_cb); the request itself then times out, and `nats_errors` turns that timeout into this.
_denials: dict[ConnectionSettings, tuple[float, str]] = {}


def _record_denial(settings: ConnectionSettings, error: Exception) -> None:
    text = str(error).removeprefix("nats: ").strip()
    if "permissions violation" in text.lower():
        _denials[settings] = (time.monotonic(), text)


def _raise_if_denied(settings: ConnectionSettings, since: float) -> None:
    """PermissionDeniedError if NATS refused something on these settings' connections after `since`."""
    denial = _denials.get(settings)
    if denial is not None and denial[0] >= since:
        raise PermissionDeniedError(f"permission denied by NATS at {settings.safe_url}: {denial[1]}") from None


def _connection_callbacks(settings: ConnectionSettings, clients: list[Client],
                          first_errors: list[Exception]) -> dict[str, Any]:
    async def on_error(error: Exception) -> None:
        if not clients:
            first_errors.append(error)
        _record_denial(settings, error)
        await _log_nats_error(error)

    async def disconnected() -> None:
        if clients and clients[0].is_closed:  # closed on purpose (close_all, end of a loop): not news
            logger.debug("closed connection to NATS at %s", settings.safe_url)
            return
        logger.warning("lost connection to NATS at %s; reconnecting", settings.safe_url)

    async def reconnected() -> None:
        logger.warning("reconnected to NATS at %s", settings.safe_url)

    return {"error_cb": on_error, "disconnected_cb": disconnected, "reconnected_cb": reconnected}


async def connect(settings: ConnectionSettings, *, name: str = "naq_ipy", retry_s: float = 0.0) -> Connection:
    """Open a new, unpooled connection; raises NaqConnectionError naming the (redacted) URL.

    `retry_s` keeps retrying the first connection that long (for clients that may start
    before their server); reconnects after a first success are always automatic.
    """
    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "connect_timeout": max(1, int(settings.connect_timeout_s)),
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.25,
        "tls": _tls_context(settings),
        "user": settings.user,
        "password": settings.password,
        "token": settings.token,
        "user_credentials": settings.credentials_file,
    }
    clients: list[Client] = []
    first_errors: list[Exception] = []
    options = {k: v for k, v in options.items() if v is not None} | _connection_callbacks(
        settings, clients, first_errors)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(retry_s, 0.0)
    while True:
        try:
            nc = await asyncio.wait_for(
                nats.connect(**options), settings.connect_timeout_s * len(settings.servers) + 1.0
            )
            break
        except (TimeoutError, OSError, nats.errors.Error) as e:
            if loop.time() < deadline:
                await asyncio.sleep(0.25)
                continue
            if any(map(_is_auth_error, [e, *first_errors])):
                raise NaqConnectionError(f"NATS server at {settings.safe_url} authorization failed") from None
            await _raise_if_not_nats(settings)
            raise NaqConnectionError(f"NATS server at {settings.safe_url} not reachable") from None
    # the first connect tries each server once; after a success, reconnect forever
    # (nats-py reads this option at reconnect time)
    nc.options["max_reconnect_attempts"] = -1
    clients.append(nc)
    return Connection(settings=settings, nc=nc, js=nc.jetstream())


async def _raise_if_not_nats(settings: ConnectionSettings) -> None:
    """After a failed connect to one server: NaqConnectionError if what answers there is not NATS."""
    if len(settings.servers) != 1:
        return
    # nats-py already waited connect_timeout_s for an INFO line: a short look is enough here
    if await asyncio.to_thread(probe, settings.url, NOT_NATS_PROBE_S) is Answer.OTHER:
        host, port = first_address(settings.url)
        raise NaqConnectionError(f"{host}:{port} is not a NATS server: it accepts connections "
                                 "but sends no NATS INFO line") from None


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ConnectionSettings, Connection]] = (
    weakref.WeakKeyDictionary()
)
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
_keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = weakref.WeakKeyDictionary()


async def get_connection(url: str | ConnectionSettings | None = None) -> Connection:
    """The pooled connection for this event loop and these settings, made on first use."""
    settings = ConnectionSettings.resolve(url)
    loop = asyncio.get_running_loop()
    pool = _pools.setdefault(loop, {})
    conn = pool.get(settings)
    if conn is not None and not conn.nc.is_closed:
        return conn
    lock = _locks.setdefault(loop, asyncio.Lock())
    async with lock:
        pool = _pools.setdefault(loop, pool)
        conn = pool.get(settings)
        if conn is None or conn.nc.is_closed:
            conn = pool[settings] = await connect(settings)
        keeper = _keepers.get(loop)
        if keeper is None or keeper.done():
            _keepers[loop] = loop.create_task(_close_pool_at_loop_end(), name="naq-connection-pool")
    return conn


async def _close_pool_at_loop_end() -> None:
    # `asyncio.run` (and pytest's loops) cancel every task before closing the loop: that is
    # the last moment the pooled sockets of this loop can be closed cleanly instead of leaking
    loop = asyncio.get_running_loop()
    try:
        await loop.create_future()
    finally:
        if _keepers.get(loop) is asyncio.current_task():  # else close_all() retired it: the pool may be new
            del _keepers[loop]
            await _close_pool(loop)


async def _close_pool(loop: asyncio.AbstractEventLoop) -> None:
    for conn in _pools.pop(loop, {}).values():
        with contextlib.suppress(Exception):
            await conn.nc.close()


async def close_all() -> None:
    """Close every pooled connection of the calling loop (at shutdown)."""
    loop = asyncio.get_running_loop()
    keeper = _keepers.pop(loop, None)
    if keeper is not None and keeper is not asyncio.current_task():
        keeper.cancel()
    await _close_pool(loop)


def nats_errors(settings: ConnectionSettings) -> NatsErrors:
    """`async with nats_errors(settings):` turns nats-py errors raised in the block into naq errors."""
    return NatsErrors(settings)


class NatsErrors:
    """Turn nats-py errors into naq errors, without credentials (a class: it wraps every publish).

    A request that timed out (or found no responders) after NATS reported a permissions
    violation on these settings becomes PermissionDeniedError, within the request's timeout.
    """

    __slots__ = ("settings", "started")

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.started = 0.0

    async def __aenter__(self) -> None:
        self.started = time.monotonic()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if error is not None:
            _translate(error, self.settings, self.started)


def _translate(error: BaseException, settings: ConnectionSettings, started: float) -> None:
    """Raise the naq error for a nats-py `error`; return to let it through as it is."""
    if isinstance(error, nats.js.errors.APIError):
        # KV errors (KeyNotFoundError, KeyDeletedError, ...) skip APIError.__init__: no code/description
        code, description = getattr(error, "code", None), getattr(error, "description", None) or ""
        if code == 403 or "permission" in description.lower():
            raise PermissionDeniedError(f"permission denied by NATS at {settings.safe_url}: {description}") from None
        _raise_if_denied(settings, started)
    elif isinstance(error, nats.errors.MaxPayloadError):
        raise SerializationError(f"message over the max payload of NATS at {settings.safe_url}") from None
    elif isinstance(error, nats.errors.NoRespondersError | NaqConnectionError):
        _raise_if_denied(settings, started)
    elif isinstance(error, nats.errors.ConnectionClosedError | nats.errors.NoServersError | nats.errors.TimeoutError
                    | nats.js.errors.NoStreamResponseError):
        _raise_if_denied(settings, started)
        raise NaqConnectionError(f"NATS at {settings.safe_url} did not answer ({type(error).__name__})") from None


def check_payload(conn: Connection, data: bytes, what: str = "job", headers: dict[str, str] | None = None) -> None:
    """Raise before writing anything if `data` plus its headers exceed the server's max payload."""
    # the server counts headers in max_payload and drops the whole connection on a violation,
    # while nats-py checks the body only
    if len(data) + _HEADERS_ALLOWANCE < conn.max_payload:
        return  # the common case, without encoding the headers to measure them
    size = len(data) + _headers_size(headers)
    if size > conn.max_payload:
        raise SerializationError(
            f"{what} is {size:,} bytes, over the NATS server's max payload of {conn.max_payload:,} bytes"
        )


_HEADERS_ALLOWANCE = 8192


def _headers_size(headers: dict[str, str] | None) -> int:
    if not headers:
        return 0
    return len(b"NATS/1.0\r\n\r\n") + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items())


def message_headers(msg_id: str | None, headers: dict[str, str] | None,
                    ttl_s: float | None = None) -> dict[str, str] | None:
    """The NATS headers of one message: `headers` plus its message id and per-message TTL."""
    hdrs = dict(headers or {})
    if msg_id:
        hdrs["Nats-Msg-Id"] = msg_id
    if ttl_s is not None:
        hdrs["Nats-TTL"] = str(int(ttl_s))  # what nats-py adds for msg_ttl; counted here for the size check
    return hdrs or None


async def publish(
    conn: Connection, subject: str, data: bytes, *, msg_id: str | None = None,
    headers: dict[str, str] | None = None, ttl_s: float | None = None,
) -> api.PubAck:
    """Publish one message to JetStream and wait for its ack (one round trip)."""
    hdrs = message_headers(msg_id, headers, ttl_s)
    check_payload(conn, data, headers=hdrs)
    async with nats_errors(conn.settings):
        try:
            return await conn.acks.publish(subject, data, hdrs, PUBLISH_TIMEOUT_S)
        except nats.js.errors.NoStreamResponseError:
            if not await conn.recreate_stream_for(subject):
                raise
            return await conn.acks.publish(subject, data, hdrs, PUBLISH_TIMEOUT_S)


async def kv_put(conn: Connection, bucket: str, key: str, value: bytes, ttl_s: float | None = None, *,
                 revision: int | None = None) -> int:
    """Put `value` under `key`, with a per-message TTL when given (server >= 2.11).

    `revision`: write only if the key is still at that revision (0: only if it has no value);
    ConflictError otherwise.
    """
    if revision is not None:
        try:
            ack = await publish(conn, names.kv_subject(bucket, key), value,
                                headers={names.EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: str(revision)},
                                ttl_s=None if ttl_s is None else max(1.0, ttl_s))
        except nats.js.errors.APIError as e:
            if names.is_wrong_last_sequence(e):
                raise ConflictError(f"{bucket} key {key!r} changed since revision {revision}") from None
            raise
        return ack.seq
    kv = await conn.kv(bucket)
    if ttl_s is None:
        async with nats_errors(conn.settings):
            return await kv.put(key, value)
    ack = await publish(conn, names.kv_subject(bucket, key), value, ttl_s=max(1.0, ttl_s))
    return ack.seq


async def kv_write_checked(kv: KeyValue, settings: ConnectionSettings, key: str, value: bytes | None,
                           revision: int) -> int | None:
    """Write `value` under `key` (None: delete it) only if the entry is still at `revision`.

    Returns the entry's new revision (a delete: `revision`), or None when someone wrote in between.
    """
    try:
        async with nats_errors(settings):
            if value is None:
                await kv.delete(key, last=revision)
                return revision
            return await kv.update(key, value, last=revision)
    except nats.js.errors.APIError as e:
        # `kv.update` raises KeyWrongLastSequenceError, `kv.delete` the plain APIError with the code
        if isinstance(e, nats.js.errors.KeyWrongLastSequenceError) or names.is_wrong_last_sequence(e):
            return None
        raise
