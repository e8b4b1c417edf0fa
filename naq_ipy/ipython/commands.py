"""Parsed magic lines, and `NaqEngine`: what the magics do, as a plain class.

A line is parsed once into a small command object (every option converted and checked,
nothing sent yet); the engine then evaluates, builds and sends. Every blocking call goes
through the sync bridge, so the magics work inside a kernel whose event loop is running.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import functools
import math
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import CodeType
from typing import Any, NamedTuple, Protocol

from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import display

from naq_ipy.client.bridge import run_sync
from naq_ipy.client.cells import free_names, make_cell_function
from naq_ipy.client.job import job_ids
from naq_ipy.client.queue import Queue
from naq_ipy.errors import ConfigurationError
from naq_ipy.ipython.livejob import result_live
from naq_ipy.local.processes import PROCESSES, loopback_port
from naq_ipy.rules.retry import NormalRetryDelay, parse_retry_delay
from naq_ipy.rules.times import parse_duration, parse_iso_time, resolve_zone, to_timestamp, validate_cron
from naq_ipy.schedules.record import validate_interval
from naq_ipy.schedules.scheduler import run_now
from naq_ipy.views.schedules import schedule_line
from naq_ipy.views.schedules import when as time_text
from naq_ipy.views.tables import Note
from naq_ipy.wire.server import is_reachable
from naq_ipy.wire.settings import clear_default_url, redact_url, set_default_url, validate_key, validate_queue_name

_OPEN, _CLOSE, _QUOTES = "([{", ")]}", "'\""
_COLLECT = "__naq_collect__"


def split_words(line: str) -> list[tuple[int, str]]:
    """Split `line` at whitespace outside quotes and brackets into (offset, word) pairs.

    Quotes around text outside brackets are dropped (`--at "2026-11-28 09:00"`); inside
    brackets everything is kept as typed, so `f(a, "b c")` stays one word.
    """
    words: list[tuple[int, str]] = []
    chars: list[str] = []
    start: int | None = None
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(line):
        if start is None and ch.isspace():
            continue
        start = i if start is None else start
        if quote:
            escaped, closing = (not escaped and ch == "\\"), (not escaped and ch == quote)
            quote = "" if closing else quote
            if not (closing and depth == 0):
                chars.append(ch)
            continue
        if ch.isspace() and depth == 0:
            words.append((start, "".join(chars)))
            chars, start = [], None
            continue
        quote = ch if ch in _QUOTES else ""
        depth += (ch in _OPEN) - (ch in _CLOSE and depth > 0)
        if not (quote and depth == 0):
            chars.append(ch)
    if start is not None:
        words.append((start, "".join(chars)))
    return words


def bare_wait(words: list[str]) -> list[str]:
    """`--wait` not followed by a number (but by the CALL or a job id) means: wait with no limit."""
    out = list(words)
    for i, word in enumerate(out):
        if word == "--wait" and (i + 1 == len(out) or not _is_number(out[i + 1])):
            out[i] = "--wait=inf"
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def wait_seconds(value: float | None) -> float | None:
    """The `--wait` limit in seconds: None = no limit."""
    if value is None or math.isinf(value):
        return None
    if not value > 0:
        raise ConfigurationError(f"--wait takes a number of seconds > 0, got {value}")
    return value


def _optional(convert: Callable[[str], Any], text: str | None) -> Any:
    return None if text is None else convert(text)


def _variable(name: str | None) -> str | None:
    if name is not None and not name.isidentifier():
        raise ConfigurationError(f"-o/--out takes a variable name, got {name!r}")
    return name


@dataclass(frozen=True)
class EnqueueCommand:
    """`%naq_enqueue [options] CALL`, parsed: the call's text and every option converted."""

    call: str
    queue: str | None = None
    at: datetime | None = None
    delay_s: float | None = None
    retries: int = 0
    retry_delay: NormalRetryDelay = 0.0
    depends_on: tuple[str, ...] = ()
    timeout_s: float | None = None
    out: str | None = None
    wait: bool = False
    wait_s: float | None = None

    @classmethod
    def parse(cls, parser: MagicArgumentParser, line: str) -> EnqueueCommand:
        """Options first, then the CALL (kept exactly as typed, to be parsed as Python)."""
        words = split_words(line)
        ns = parser.parse_args(bare_wait([word for _, word in words]))
        rest = ns.call[1:] if ns.call[:1] == ["--"] else ns.call
        if not rest:
            raise ConfigurationError("no CALL given: use %naq_enqueue [options] f(x, y=2)")
        if ns.at is not None and ns.delay is not None:
            raise ConfigurationError("use only one of --at and --in")
        return cls(
            call=line[words[len(words) - len(rest)][0]:].strip(),
            queue=_optional(validate_queue_name, ns.queue),
            at=_optional(parse_iso_time, ns.at),
            delay_s=_optional(parse_duration, ns.delay),
            retries=ns.retries,
            retry_delay=_optional(parse_retry_delay, ns.retry_delay) or 0.0,
            depends_on=tuple(item.strip() for item in (ns.depends_on or "").split(",") if item.strip()),
            timeout_s=_optional(parse_duration, ns.timeout),
            out=_variable(ns.out),
            wait=ns.wait is not None,
            wait_s=wait_seconds(ns.wait),
        )


@dataclass(frozen=True)
class ScheduleCommand:
    """`%%naq_schedule [options] NAME` plus the cell body, parsed and checked."""

    name: str
    body: str
    cron: str | None = None
    tz: str | None = None
    interval_s: float | None = None
    at: datetime | None = None
    delay_s: float | None = None
    repeat: int | None = None
    queue: str | None = None
    retries: int = 0
    retry_delay: NormalRetryDelay = 0.0
    timeout_s: float | None = None
    misfire: str = "once"
    paused: bool = False
    run_now: bool = False

    @classmethod
    def parse(cls, parser: MagicArgumentParser, line: str, body: str) -> ScheduleCommand:
        """Exactly one of --cron, --interval, --at, --in; values checked before anything is built."""
        ns = parser.parse_args([word for _, word in split_words(line)])
        timing = {"--cron": ns.cron, "--interval": ns.interval, "--at": ns.at, "--in": ns.delay}
        given = [flag for flag, value in timing.items() if value is not None]
        if len(given) != 1:
            raise ConfigurationError(f"use only one of {' and '.join(given)}" if given
                                     else "say when: give --cron, --interval, --at or --in")
        if ns.tz is not None and ns.interval is not None:
            raise ConfigurationError("--tz applies to --cron and --at only")
        if ns.tz is not None:
            resolve_zone(ns.tz)
        return cls(
            name=validate_key(ns.name), body=body,
            cron=_optional(validate_cron, ns.cron), tz=ns.tz,
            interval_s=_optional(validate_interval, ns.interval),
            at=_optional(parse_iso_time, ns.at), delay_s=_optional(parse_duration, ns.delay),
            repeat=ns.repeat, queue=_optional(validate_queue_name, ns.queue), retries=ns.retries,
            retry_delay=_optional(parse_retry_delay, ns.retry_delay) or 0.0,
            timeout_s=_optional(parse_duration, ns.timeout), misfire=ns.misfire,
            paused=ns.paused, run_now=ns.run_now,
        )


@dataclass(frozen=True)
class NaqCommand:
    """`%naq SUBCOMMAND ...`, parsed: `key` picks the handler (`worker start`, `list`, ...)."""

    key: str
    args: argparse.Namespace

    @classmethod
    def parse(cls, line: str, parsers: Mapping[str, MagicArgumentParser]) -> NaqCommand:
        """The first word picks the parser of the rest."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise ConfigurationError(f"cannot split the line: {e}") from None
        if not words or words[0] not in parsers:
            got = f"unknown subcommand {words[0]!r}" if words else "a subcommand is needed"
            raise ConfigurationError(f"%naq: {got}; use one of {', '.join(parsers)}")
        args = parsers[words[0]].parse_args(bare_wait(words[1:]))
        action = getattr(args, "action", None)
        return cls(f"{words[0]} {action}" if action else words[0], args)


class EngineConfig(Protocol):
    """The settings the engine reads (NaqMagics' traits)."""

    url: str
    url_given: bool  # set by the user (`%config NaqMagics.url`, profile config), not the default
    default_queue: str
    timezone: str
    auto_start: bool


class CompiledCall(NamedTuple):
    """CALL ready to evaluate: code returning (callable, args, kwargs), the names it reads, the callee's text."""

    code: CodeType
    names: tuple[str, ...]
    callee: str


@functools.lru_cache(maxsize=256)
def compile_call(text: str) -> CompiledCall:
    """CALL compiled once per distinct text."""
    try:
        tree = ast.parse(text.strip(), "<naq_enqueue>", mode="eval")
    except SyntaxError as e:
        raise ConfigurationError(f"cannot parse CALL {text!r}: {e.msg}") from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise ConfigurationError(f"CALL must be one call like f(x, y=2), got {text!r}")
    collect = ast.Call(ast.Name(_COLLECT, ast.Load()), [node.func, *node.args], node.keywords)
    code = compile(ast.fix_missing_locations(ast.Expression(collect)), "<naq_enqueue>", "eval")
    return CompiledCall(code, tuple(free_names(tree)), ast.unparse(node.func))


def _collect(func: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    return func, args, kwargs


def zone_or_none(name: str | None) -> str | None:
    """A zone name to store: None for UTC."""
    return None if name is None or name.upper() == "UTC" else name


class NaqEngine:
    """What the magics do: evaluate calls, build jobs and schedules, send them, run `%naq` subcommands."""

    def __init__(self, shell: Any, config: EngineConfig) -> None:
        self.shell = shell
        self.config = config
        self._queues: dict[tuple[str, str], Queue] = {}
        self._checked_urls: set[str] = set()

    def say(self, text: str | Note, level: str = "info") -> None:
        """Show one line (text and HTML)."""
        display(text if isinstance(text, Note) else Note(text, level))

    def url(self, *, start: bool = True) -> str:
        """The URL to talk to: the configured one, or the local server this kernel started in its place.

        The first time a local URL does not answer, and auto_start is on, a nats-server is
        started for it (only when `start`); a remote URL is never checked here.
        """
        configured = self.config.url
        server = PROCESSES.server
        if server is not None and PROCESSES.served_url == configured:
            if server.running:
                return server.url
            PROCESSES.stop_server()  # it died: calls without a URL must not keep going to it
            self.publish_url()
        if configured in self._checked_urls or not start:
            return configured
        if self.config.auto_start and loopback_port(configured) is not None and not is_reachable(configured):
            return self.start_server(configured).url
        self._checked_urls.add(configured)
        return configured

    def start_server(self, configured: str) -> Any:
        """Start the embedded nats-server standing in for `configured`, and say which URL the kernel now uses."""
        server = PROCESSES.start_server(configured)
        self.publish_url()
        elsewhere = "" if server.url == configured else (
            f": port {loopback_port(configured)} there is held by something that is not a NATS server, "
            f"so every call of this kernel without a URL now goes to {server.url}")
        self.say(f"started a local NATS server at {server.url} for {redact_url(configured)}{elsewhere} "
                 f"(pid {server.pid}, data in {server.store_dir}, log {server.log_file})")
        return server

    def publish_url(self) -> None:
        """Make the kernel's URL the default of calls given none (`Queue()`, the helpers, panels, `Job`s).

        A URL the user configured applies always (it ranks above `$NAQ_URL`); the local server
        standing in for the configured URL applies in place of that URL only, while it runs.
        """
        server, stand_in = PROCESSES.server, None
        if server is not None and server.running and PROCESSES.served_url == self.config.url:
            stand_in = server.url
        if self.config.url_given:
            set_default_url(stand_in or self.config.url)
        elif stand_in is not None:
            set_default_url(stand_in, instead_of=self.config.url)
        else:
            clear_default_url()

    def queue(self, name: str | None) -> Queue:
        """The Queue `name` (default queue if None) at the current URL, cached."""
        name = validate_queue_name(name or self.config.default_queue)
        key = (name, self.url())
        if key not in self._queues:
            self._queues[key] = Queue(name, key[1])
        return self._queues[key]

    def evaluate(self, call: str) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """CALL's callable and arguments, evaluated in the notebook's namespace."""
        compiled = compile_call(call)
        namespace = self.shell.user_ns
        missing = [n for n in compiled.names if n not in namespace and not hasattr(builtins, n)]
        if missing:
            raise ConfigurationError(f"name {missing[0]!r} is not defined in the notebook")
        func, args, kwargs = eval(compiled.code, namespace, {_COLLECT: _collect})
        if not callable(func):
            raise ConfigurationError(f"{compiled.callee} is not callable (its type is {type(func).__name__})")
        return func, args, kwargs

    def dependencies(self, items: tuple[str, ...]) -> tuple[str, ...]:
        """Job ids from `--depends-on` items: ids, or names of variables holding a Job or a list of Jobs."""
        ids: list[str] = []
        for item in items:
            value = self.shell.user_ns.get(item, item) if item.isidentifier() else item
            values = value if isinstance(value, list | tuple) else [value]
            ids += job_ids(values, f"--depends-on {item}: expected job ids or Jobs")
        return tuple(ids)

    def run_at(self, at: datetime | None, delay_s: float | None, tz: str | None) -> float | None:
        """Unix seconds of `--at` (naive read in `tz`, else NaqMagics.timezone) or `--in`; None = now."""
        if at is not None:
            return to_timestamp(at, tz or self.config.timezone)
        return None if delay_s is None else time.time() + delay_s

    def enqueue(self, cmd: EnqueueCommand) -> Any:
        """`%naq_enqueue`: the Job, or with --wait its result."""
        func, args, kwargs = self.evaluate(cmd.call)
        depends_on = self.dependencies(cmd.depends_on)
        when = self.run_at(cmd.at, cmd.delay_s, None)
        queue = self.queue(cmd.queue)
        job = queue.job(func, args, kwargs, max_retries=cmd.retries, retry_delay=cmd.retry_delay,
                        depends_on=depends_on, timeout=cmd.timeout_s)
        if when is None:
            queue.enqueue_job_sync(job)
        else:
            queue.schedule_job_sync(job, at=when)
            self.say(f"job {job.job_id} will run at {time_text(when, self.config.timezone)}")
        if cmd.out:
            self.shell.user_ns[cmd.out] = job
        if not cmd.wait:
            return job
        with self.waiting(f"job {job.job_id}", f"%naq result {job.job_id} --wait"):
            return result_live(job, cmd.wait_s)
        return job

    @contextmanager
    def waiting(self, what: str, again: str) -> Iterator[None]:
        """Around a blocking wait: Ctrl-C or the time limit end the wait (never the work) and say so."""
        later = f"it keeps running; `{again}` waits again"
        try:
            yield
        except KeyboardInterrupt:
            self.say(f"stopped waiting for {what}: {later}", "warning")
        except TimeoutError:
            self.say(f"{what} has not ended yet: {later}", "warning")

    def schedule(self, cmd: ScheduleCommand) -> None:
        """`%%naq_schedule`: create or update the schedule NAME with the cell body as its job."""
        func = make_cell_function(self.shell, cmd.name, cmd.body)
        zone = zone_or_none(cmd.tz or self.config.timezone)
        at = self.run_at(cmd.at, cmd.delay_s, zone)
        queue = self.queue(cmd.queue)
        job = queue.job(func, (), {}, max_retries=cmd.retries, retry_delay=cmd.retry_delay, timeout=cmd.timeout_s)
        record, created = queue.schedule_job_sync(
            job, cron=cmd.cron, interval=cmd.interval_s, repeat=cmd.repeat, tz=zone if cmd.cron else None,
            name=cmd.name, misfire=cmd.misfire, paused=cmd.paused, at=at,
        )
        self.say(schedule_line(record, created, self.config.timezone))
        if cmd.run_now:
            self.fire_now(record.key)

    def fire_now(self, key: str) -> str:
        """Fire the scheduled job `key` once now, leaving its timing alone; returns the run id."""
        run_id = run_sync(run_now(key, self.url()))
        self.say(f"fired {key!r} now as job {run_id}")
        return run_id
