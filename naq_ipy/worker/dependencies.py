"""A held job's wait for the jobs it depends on: KV watches on their status records, no slot taken."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.js.kv import KeyValue

from naq_ipy.status import results
from naq_ipy.status.results import JobStatus, watch_until_ended


async def wait_for_dependencies(kv: KeyValue, job_ids: Sequence[str], also: str | None = None) -> JobStatus | None:
    """Wait (KV watches on the status bucket `kv`) until every job ended; the first that did not finish, or None.

    `also`: a job whose cancel ends the wait at once (then its record is returned).
    """
    # a `stopping` dependency can only end `cancelled`: its dependents need not wait for its thread
    waits = [asyncio.ensure_future(watch_until_ended(kv, job_id, ends=results.TERMINAL | results.CANCELS))
             for job_id in job_ids]
    if also is not None:
        waits.append(asyncio.ensure_future(watch_until_ended(kv, also, ends=results.CANCELS)))
    try:
        left = len(job_ids)
        for next_end in asyncio.as_completed(waits):
            status = await next_end
            if status.status != results.FINISHED or status.job_id == also:
                return status
            left -= 1
            if not left:
                return None
        return None
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
