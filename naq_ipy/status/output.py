"""Reading a job's captured output (stream `naq_job_logs`, subject `naq.logs.<job_id>`), whole or followed.

Each message is one batch of text; its `Naq-Output` header says `stdout` or `stderr`. The worker
publishes a job's last batch before it writes the job's outcome, so once the status says ended,
reading up to the subject's last message gives all of it. Reads use an ordered consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors

from naq_ipy.client.bridge import run_sync
from naq_ipy.errors import JobExecutionError
from naq_ipy.status.results import fetch_result, wait_for_end
from naq_ipy.wire.connection import Connection, get_connection, nats_errors
from naq_ipy.wire.names import LOGS_STREAM_NAME, OUTPUT_STREAM_HEADER, logs_subject
from naq_ipy.wire.settings import ConnectionSettings

logger = logging.getLogger(__name__)

STDOUT, STDERR = "stdout", "stderr"
POLL_S = 0.25  # a follow looks at the job's status this often while no output comes
DRAIN_TIMEOUT_S = 5.0
TAIL_LINES = 20


@dataclass(frozen=True)
class OutputChunk:
    """One batch of a job's output: `stream` is "stdout" or "stderr"."""

    stream: str
    text: str


async def _last_seq(conn: Connection, subject: str) -> int:
    """The stream sequence of the subject's last message, 0 if it has none."""
    try:
        async with nats_errors(conn.settings):
            msg = await conn.js.get_last_msg(LOGS_STREAM_NAME, subject)
    except nats.js.errors.NotFoundError:
        return 0
    return msg.seq or 0


async def iter_output(job_id: str, *, follow: bool = False,
                      url: str | ConnectionSettings | None = None) -> AsyncIterator[OutputChunk]:
    """The job's output so far; with `follow`, also what comes until the job has ended."""
    conn = await get_connection(url)
    subject = logs_subject(job_id)
    await conn.ensure_stream(LOGS_STREAM_NAME)
    ended = asyncio.ensure_future(wait_for_end(job_id, url=conn.settings)) if follow else None
    try:
        last = None if follow else await _last_seq(conn, subject)
        if last == 0:
            return
        async with nats_errors(conn.settings):
            sub = await conn.js.subscribe(subject, stream=LOGS_STREAM_NAME, ordered_consumer=True)
        try:
            seen = 0
            while last is None or seen < last:
                if last is None and ended is not None and ended.done():
                    ended.result()
                    last = await _last_seq(conn, subject)
                    continue
                try:
                    msg = await sub.next_msg(timeout=POLL_S if last is None else DRAIN_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    if last is not None:
                        return  # expired while being read
                    continue
                seen = msg.metadata.sequence.stream
                yield OutputChunk((msg.headers or {}).get(OUTPUT_STREAM_HEADER, STDOUT),
                                  msg.data.decode("utf-8", "replace"))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
    finally:
        if ended is not None:
            ended.cancel()
            await asyncio.gather(ended, return_exceptions=True)


async def read_output(job_id: str, url: str | ConnectionSettings | None = None) -> list[OutputChunk]:
    """The job's output so far, batch by batch."""
    return [chunk async for chunk in iter_output(job_id, url=url)]


async def fetch_output(job_id: str, url: str | ConnectionSettings | None = None) -> str:
    """The job's output so far (stdout and stderr as they were written), '' if none."""
    return "".join(chunk.text for chunk in await read_output(job_id, url))


def fetch_output_sync(job_id: str, url: str | ConnectionSettings | None = None) -> str:
    """Blocking twin of `fetch_output`."""
    return run_sync(fetch_output(job_id, url))


def last_lines(text: str, count: int) -> str:
    """The last `count` lines of `text`."""
    return "".join(text.splitlines(keepends=True)[-count:])


async def output_tails(job_ids: Sequence[str], count: int = TAIL_LINES,
                       url: str | ConnectionSettings | None = None) -> dict[str, str]:
    """The last `count` lines of output of each job ('' for none or unreadable), for panels listing runs."""
    found = await asyncio.gather(*(fetch_output(job_id, url) for job_id in job_ids), return_exceptions=True)
    return {job_id: last_lines(text, count) if isinstance(text, str) else ""
            for job_id, text in zip(job_ids, found, strict=True)}


async def relay_output(job_id: str, on_output: Callable[[OutputChunk], None],
                       url: str | ConnectionSettings | None = None) -> None:
    """Call `on_output(chunk)` for the job's output, from the start until the job has ended."""
    async for chunk in iter_output(job_id, follow=True, url=url):
        on_output(chunk)


async def result_with_output(job_id: str, on_output: Callable[[OutputChunk], None], timeout: float | None = None,
                             url: str | ConnectionSettings | None = None) -> Any:
    """`fetch_result`, with the job's output handed to `on_output` as it comes, all of it before the outcome."""
    relay = asyncio.ensure_future(relay_output(job_id, on_output, url))
    try:
        value = await fetch_result(job_id, timeout, url)
    except JobExecutionError:
        await _finish(relay, job_id)
        raise
    except BaseException:  # the wait ended (time limit, Ctrl-C), not the job: stop following it
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        raise
    await _finish(relay, job_id)
    return value


async def _finish(relay: asyncio.Future[None], job_id: str) -> None:
    """Let the relay read the job's last output (it stops by itself once the job ended)."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            await relay
    except Exception as e:  # output is best effort: the result still comes
        relay.cancel()
        logger.warning("job %s: output not read to its end: %s", job_id, e)
