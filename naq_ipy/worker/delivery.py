"""One fetched message on its way from fetch to ack or nak: its state, and what its subject and header say."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nats.aio.msg import Msg

from naq_ipy.client.job import read_header
from naq_ipy.errors import ConfigurationError, SerializationError
from naq_ipy.status import results
from naq_ipy.status.results import JobStatus
from naq_ipy.wire.names import QUEUE_SUBJECT_PREFIX, SIGNATURE_HEADER
from naq_ipy.wire.settings import validate_key
from naq_ipy.worker.stopping import StopHandle


class Stopping(Exception):
    """The worker began to stop while a message waited."""


class DeliveryState(StrEnum):
    """Where a fetched message is: just fetched, held for its dependencies, or running."""

    NEW = "new"
    WAITING = "waiting"
    RUNNING = "running"


@dataclass(eq=False)
class Delivery:
    """One fetched message from fetch to ack or nak."""

    msg: Msg
    job_id: str | None = None
    state: DeliveryState = DeliveryState.NEW
    settled: bool = False  # acked or nak'ed: no more progress acks
    revision: int = 0  # of the job's status record as this worker last saw or wrote it (0: none)
    stop: StopHandle | None = None  # set while the job runs
    split: tuple[dict[str, Any], bytes] | None = None  # the message as read_header split it (header, pickled call)


def signature(msg: Msg) -> str | None:
    return (msg.headers or {}).get(SIGNATURE_HEADER)


def settled_elsewhere(record: JobStatus, delivery: Delivery) -> bool:
    """Whether a record the worker's write lost to settles the job: a cancel, or an outcome of this job's run.

    An ended record met by the first delivery before it runs is from an earlier job of the same id
    (enqueued again after the duplicate window): it is written over, and the job runs.
    """
    if record.status in results.CANCELS:
        return True
    return record.ended and (delivery.state == DeliveryState.RUNNING or delivery.msg.metadata.num_delivered > 1)


def queue_of(msg: Msg) -> str:
    return msg.subject[len(QUEUE_SUBJECT_PREFIX) + 1:]


def header_job_id(data: bytes) -> str | None:
    """The job id in an unusable job's header, if it has a readable header with a valid id."""
    try:
        return validate_key(read_header(data)[0].get("job_id"), "job id")
    except (SerializationError, ConfigurationError):
        return None
