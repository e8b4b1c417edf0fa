"""Every wire name of naq_ipy: subjects, streams, KV buckets, headers, id formats (each next to its parser)
and the NATS error codes the code reacts to. Nothing else builds or parses these strings.
"""

from __future__ import annotations

import base64

from naq_ipy.wire.settings import validate_key, validate_queue_name

NAQ_PREFIX = "naq"

# -- streams, subjects, consumers -----------------------------------------------------------------
JOB_STREAM_NAME = f"{NAQ_PREFIX}_jobs"
QUEUE_SUBJECT_PREFIX = f"{NAQ_PREFIX}.queue"
FAILED_STREAM_NAME = f"{NAQ_PREFIX}_failed_jobs"
FAILED_SUBJECT_PREFIX = f"{NAQ_PREFIX}.failed"
WORKER_DURABLE_PREFIX = f"{NAQ_PREFIX}-worker-"
DUPLICATE_WINDOW_S = 600.0
LOGS_STREAM_NAME = f"{NAQ_PREFIX}_job_logs"  # a job's captured stdout/stderr/logging, in batches
LOGS_SUBJECT_PREFIX = f"{NAQ_PREFIX}.logs"
DIRECT_GET_API_PREFIX = "$JS.API.DIRECT.GET"  # stored messages read without a consumer (allow_direct streams)

# -- KV buckets -----------------------------------------------------------------------------------
SCHEDULED_JOBS_KV_NAME = f"{NAQ_PREFIX}_scheduled_jobs"
JOB_STATUS_KV_NAME = f"{NAQ_PREFIX}_job_status"
RESULTS_KV_NAME = f"{NAQ_PREFIX}_results"
WORKERS_KV_NAME = f"{NAQ_PREFIX}_workers"
SCHEDULER_CLOCK_KV_NAME = f"{NAQ_PREFIX}_scheduler_clock"
CANCEL_REQUESTS_KV_NAME = f"{NAQ_PREFIX}_cancel_requests"  # key = job id; value = `{"by", "at"}` JSON
PAYLOAD_BUCKET_NAME = f"{NAQ_PREFIX}_payloads"  # Object Store of large arguments and results, see naq_ipy.wire.payloads
PAYLOAD_STREAM_NAME = f"OBJ_{PAYLOAD_BUCKET_NAME}"
PAYLOAD_NAME_PREFIX = "sha256-"  # an object is named by its content: `sha256-<hex>`
KV_DELETE_OPERATIONS = ("DEL", "PURGE")  # a watch entry with one of these operations is a delete marker

# -- headers --------------------------------------------------------------------------------------
OUTPUT_STREAM_HEADER = "Naq-Output"  # which stream a batch of output came from: `stdout` or `stderr`
SIGNATURE_HEADER = "Naq-Signature"  # `<key id>:<hex HMAC-SHA256 of the job bytes>`, see naq_ipy.wire.signing
MSG_ID_HEADER = "Nats-Msg-Id"
ROLLUP_HEADER = "Nats-Rollup"  # `sub`: this message replaces the earlier ones of its subject (payload metas)
EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
STATUS_HEADER = "Status"  # a reply with no message in it: `204` end of a direct-get batch, `404` none, `503` ...
SEQUENCE_HEADER = "Nats-Sequence"  # a direct get's message: its stream sequence
NUM_PENDING_HEADER = "Nats-Num-Pending"  # a direct-get batch: messages on the subject after the last one sent
END_OF_BATCH_STATUS = "204"
HEADER_JOB_ID = "Naq-Job-Id"  # failed store: the job's id
HEADER_QUEUE = "Naq-Queue"  # failed store: the queue it came from
HEADER_FUNC = "Naq-Func"  # failed store: the function's name
HEADER_REASON = "Naq-Reason"  # failed store: why it failed or was rejected (one line)
HEADER_FAILED_AT = "Naq-Failed-At"  # failed store: unix seconds
PAYLOAD_KEEP_UNTIL_HEADER = "Naq-Keep-Until"  # payload meta: unix seconds before which the sweep keeps it
HEADER_TRUNCATED = "Naq-Truncated"  # failed store: the job bytes' full size when they were cut to fit

# -- stored values --------------------------------------------------------------------------------
JOB_SERIALIZER = "cloudpickle"

FAILED_MAX_MSG_BYTES = 8 << 20  # one failed-store entry; the job bytes kept in it are cut to fit

# -- NATS error codes -----------------------------------------------------------------------------
WRONG_LAST_SEQUENCE_CODES = (10071, 10164)  # JSStreamWrongLastSequence(Constant): a revision check lost


def queue_subject(queue_name: str) -> str:
    """The subject jobs of `queue_name` are published on: `naq.queue.<name>`."""
    return f"{QUEUE_SUBJECT_PREFIX}.{validate_queue_name(queue_name)}"


def worker_durable(queue_name: str) -> str:
    """The durable pull consumer shared by every worker of `queue_name`: `naq-worker-<queue>`."""
    return WORKER_DURABLE_PREFIX + queue_name


def durable_queue(durable: str) -> str | None:
    """The queue of a worker consumer's durable name, None for any other consumer."""
    return durable[len(WORKER_DURABLE_PREFIX):] if durable.startswith(WORKER_DURABLE_PREFIX) else None


def failed_subject(job_id: str) -> str:
    """The failed-store subject of a job id (or of a `rejected-<seq>` name): `naq.failed.<id>`."""
    return f"{FAILED_SUBJECT_PREFIX}.{validate_key(job_id, 'job id')}"


def logs_subject(job_id: str) -> str:
    """The subject a job's output is published on: `naq.logs.<job_id>`."""
    return f"{LOGS_SUBJECT_PREFIX}.{validate_key(job_id, 'job id')}"


def failed_subject_job_id(subject: str) -> str:
    """The job id in a failed-store subject."""
    return subject[len(FAILED_SUBJECT_PREFIX) + 1:]


def kv_stream(bucket: str) -> str:
    """The stream behind KV bucket `bucket`: `KV_<bucket>`."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject of `key` in KV bucket `bucket`: `$KV.<bucket>.<key>`."""
    return f"$KV.{bucket}.{key}"


def is_kv_subject(subject: str) -> bool:
    """True for a subject of a KV bucket."""
    return subject.startswith("$KV.")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def run_id(key: str, due_utc: float) -> str:
    """The job id of the run of schedule `key` due at `due_utc`: `<key>.<due ms>`."""
    return f"{key}.{_ms(due_utc)}"


def now_run_id(key: str, now_utc: float) -> str:
    """The job id of a run of schedule `key` asked for at `now_utc` (run now): `<key>.now-<ms>`."""
    return f"{key}.now-{_ms(now_utc)}"


def run_due_ms(job_id: str, key: str) -> int | None:
    """The due time (unix ms) in a run id of schedule `key` (`<key>.<ms>` or `<key>.now-<ms>`), else None."""
    rest = job_id.removeprefix(f"{key}.")
    digits = rest.removeprefix("now-")
    return int(digits) if rest != job_id and digits.isdigit() else None


def fire_msg_id(key: str, due_utc: float) -> str:
    """The `Nats-Msg-Id` of the fire of `key` due at `due_utc`: `<key>:<due ms>` (a second publish is dropped)."""
    return f"{key}:{_ms(due_utc)}"


def failed_msg_id(name: str, delivery_seq: int) -> str:
    """The `Nats-Msg-Id` of a failed-store record: `<job id>:failed:<stream seq>` (one record per delivery)."""
    return f"{name}:failed:{delivery_seq}"


def requeue_msg_id(job_id: str, now_ns: int) -> str:
    """The `Nats-Msg-Id` of a requeue of a failed job: `<job id>:requeue:<ns>` (every requeue is new)."""
    return f"{job_id}:requeue:{now_ns}"


def is_wrong_last_sequence(error: Exception) -> bool:
    """True if `error` is the server's answer to a revision-checked write that lost to a concurrent change."""
    return getattr(error, "err_code", None) in WRONG_LAST_SEQUENCE_CODES


def direct_get_subject(stream: str, last_by_subject: str | None = None) -> str:
    """`$JS.API.DIRECT.GET.<stream>` (a JSON request), or `....<stream>.<subject>`: the last message of `subject`."""
    return f"{DIRECT_GET_API_PREFIX}.{stream}" + (f".{last_by_subject}" if last_by_subject else "")


def payload_subjects(kind: str) -> str:
    """All subjects of the payload bucket of `kind` "M" (metas) or "C" (chunks): `$O.naq_payloads.<kind>.>`."""
    return f"{payload_subject_prefix(kind)}>"


def payload_subject_prefix(kind: str) -> str:
    """The prefix of the payload bucket's `kind` subjects: `$O.naq_payloads.<kind>.`."""
    return f"$O.{PAYLOAD_BUCKET_NAME}.{kind}."


def payload_meta_subject(name: str) -> str:
    """The subject of an object's meta record: `$O.naq_payloads.M.<base64url name>` (the Object Store's layout)."""
    return payload_subject_prefix("M") + base64.urlsafe_b64encode(name.encode()).decode()


def payload_chunk_subject(nuid: str) -> str:
    """The subject of an object's chunks: `$O.naq_payloads.C.<nuid>`."""
    return payload_subject_prefix("C") + nuid
