"""The magics' declarations: `%naq_enqueue`, `%%naq_schedule`, `%naq`, and their configuration.

Each magic only parses its line and hands off to `NaqEngine` (commands.py); naq errors
become `UsageError` here and nowhere else.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments
from traitlets import Bool, Enum, TraitError, Unicode, default, observe, validate

from naq_ipy.client.bridge import LOOP_MODES, get_loop_mode, set_loop_mode
from naq_ipy.errors import JobExecutionError, NaqException
from naq_ipy.ipython.commands import EnqueueCommand, NaqCommand, NaqEngine, ScheduleCommand
from naq_ipy.ipython.control import Control
from naq_ipy.rules.times import resolve_zone
from naq_ipy.wire.settings import DEFAULT_QUEUE_NAME, DEFAULT_URL, validate_queue_name

_ACTION: tuple[tuple[str, ...], dict[str, Any]] = (("action",), {"choices": ("start", "stop", "status")})
_KEY: tuple[tuple[str, ...], dict[str, Any]] = (("key",), {"metavar": "NAME_OR_ID"})
# name: (help, [(flags, argparse keywords), ...])
SUBCOMMANDS: dict[str, tuple[str, list[tuple[tuple[str, ...], dict[str, Any]]]]] = {
    "status": ("URL, server, streams, workers and schedulers at a glance", []),
    "server": ("start|stop|status the nats-server this kernel runs", [_ACTION]),
    "worker": ("start|stop|status worker processes of this kernel", [
        _ACTION,
        (("-q", "--queue"), {"dest": "queues", "action": "extend", "nargs": "+", "metavar": "Q"}),
        (("-c", "--concurrency"), {"type": int, "metavar": "N"}),
    ]),
    "scheduler": ("start|stop|status the scheduler process of this kernel", [_ACTION]),
    "list": ("scheduled jobs as a table", []),
    "pause": ("pause a scheduled job", [_KEY]),
    "resume": ("resume a paused scheduled job", [_KEY]),
    "cancel": ("cancel a job (its id, or a variable holding a Job or a list of Jobs), or delete a schedule",
               [(("key",), {"metavar": "JOB_OR_SCHEDULE"})]),
    "run": ("fire a scheduled job once now", [(("key",), {"metavar": "NAME"})]),
    "result": ("a job's result (or its state)", [
        (("job",), {"metavar": "JOB_ID_OR_VAR"}),
        (("--wait",), {"nargs": "?", "type": float, "const": math.inf, "metavar": "SECONDS"}),
    ]),
    "jobs": ("the scheduled-jobs panel", []),
    "monitor": ("the queue monitor panel", []),
    "wait": ("wait for the Job(s) in a variable; the value is their results", [(("var",), {"metavar": "VAR"})]),
    "logs": ("a job's output (stdout, stderr, logging); --follow prints it until the job ends", [
        (("job",), {"metavar": "JOB_ID_OR_VAR"}),
        (("-f", "--follow"), {"action": "store_true"}),
    ]),
}
SUBCOMMAND_HELP = "; ".join(f"{name}: {text}" for name, (text, _) in SUBCOMMANDS.items())


def _parser(name: str, text: str, arguments: list[tuple[tuple[str, ...], dict[str, Any]]]) -> MagicArgumentParser:
    parser = MagicArgumentParser(prog=f"%naq {name}", description=text)
    for flags, options in arguments:
        parser.add_argument(*flags, **options)
    return parser


SUBCOMMAND_PARSERS = {name: _parser(name, text, arguments) for name, (text, arguments) in SUBCOMMANDS.items()}


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a naq error as one line (`UsageError`); a job's own failure keeps its remote traceback."""
    try:
        yield
    except JobExecutionError:
        raise
    except NaqException as e:
        raise UsageError(str(e)) from None


@magics_class
class NaqMagics(Magics):
    """Send notebook work to naq queues and schedule cells; `%config NaqMagics` lists the settings."""

    url = Unicode(help="NATS URL of the naq server (default: $NAQ_URL, else nats://127.0.0.1:4222); "
                       "set, it is also the URL of every call without one").tag(config=True)
    default_queue = Unicode(DEFAULT_QUEUE_NAME, help="queue used when a magic gets no -q/--queue").tag(config=True)
    timezone = Unicode("UTC", help="IANA zone in which naive --at times are read and times are shown").tag(
        config=True)
    auto_start = Bool(True, help="start a local nats-server when nothing answers at a local URL").tag(config=True)
    loop_mode = Enum(LOOP_MODES, help="how blocking calls run: 'thread' (a bridge thread) or 'nest' "
                                      "(nest_asyncio on the kernel's loop)").tag(config=True)

    # True once the user set `url` (`%config`, profile config): it then wins over $NAQ_URL everywhere
    url_given = False

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)  # config values set here already call _url_set
        self.engine = NaqEngine(shell, self)
        self.engine.publish_url()
        self.subcommands = Control(self.engine).handlers()

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("NAQ_URL") or DEFAULT_URL

    @observe("url")
    def _url_set(self, change: dict[str, Any]) -> None:
        self.url_given = True
        if hasattr(self, "engine"):
            self.engine.publish_url()

    @default("loop_mode")
    def _default_loop_mode(self) -> str:
        return get_loop_mode()

    @observe("loop_mode")
    def _apply_loop_mode(self, change: dict[str, Any]) -> None:
        set_loop_mode(change["new"])

    @validate("timezone")
    def _check_timezone(self, proposal: dict[str, Any]) -> str:
        try:
            resolve_zone(proposal["value"])
        except NaqException as e:
            raise TraitError(str(e)) from None
        return str(proposal["value"])

    @validate("default_queue")
    def _check_queue(self, proposal: dict[str, Any]) -> str:
        try:
            return validate_queue_name(proposal["value"])
        except NaqException as e:
            raise TraitError(str(e)) from None

    @magic_arguments()
    @argument("-q", "--queue", help="queue name (default: NaqMagics.default_queue)")
    @argument("--at", metavar="WHEN", help="run once at this ISO 8601 time (naive: NaqMagics.timezone)")
    @argument("--in", dest="delay", metavar="DURATION", help="run once after this delay: 90s, 5m, 1h30m, 2d")
    @argument("--retries", type=int, default=0, metavar="N", help="retries after a failure (default 0)")
    @argument("--retry-delay", metavar="SPEC", help="seconds before a retry: 10, 5,30,120 or exp:2:300")
    @argument("--depends-on", metavar="ID_OR_VAR[,..]", help="job ids, or variables holding Jobs, to wait for")
    @argument("--timeout", metavar="SECONDS", help="stop the job after this long on the worker")
    @argument("-o", "--out", metavar="VAR", help="also store the Job in this variable")
    @argument("--wait", nargs="?", type=float, const=math.inf, metavar="SECONDS",
              help="wait for the job (at most SECONDS): the value is its result, a failure re-raises")
    @argument("call", nargs=argparse.REMAINDER, metavar="CALL", help="a call evaluated here: f(x, y=2)")
    @no_var_expand
    @line_magic
    def naq_enqueue(self, line: str) -> Any:
        """Send a call to a worker: `%naq_enqueue [options] f(x, y=2)`; the value is the Job."""
        with user_errors():
            return self.engine.enqueue(EnqueueCommand.parse(self.naq_enqueue.parser, line))

    @magic_arguments()
    @argument("--cron", metavar="EXPR", help="run by cron, e.g. --cron '*/5 * * * *'")
    @argument("--tz", metavar="ZONE", help="zone of --cron (and of a naive --at); default NaqMagics.timezone")
    @argument("--interval", metavar="DURATION", help="run every DURATION: 30s, 5m, 1h")
    @argument("--at", metavar="WHEN", help="run once at this ISO 8601 time")
    @argument("--in", dest="delay", metavar="DURATION", help="run once after this delay")
    @argument("--repeat", type=int, metavar="N", help="runs in total (default: forever)")
    @argument("-q", "--queue", help="queue name (default: NaqMagics.default_queue)")
    @argument("--retries", type=int, default=0, metavar="N", help="retries after a failure (default 0)")
    @argument("--retry-delay", metavar="SPEC", help="seconds before a retry: 10, 5,30,120 or exp:2:300")
    @argument("--timeout", metavar="SECONDS", help="stop a run after this long on the worker")
    @argument("--misfire", choices=("once", "skip", "all"), default="once",
              help="runs missed while nothing fired: run once (default), skip, or run all")
    @argument("--paused", action="store_true", help="create the schedule paused")
    @argument("--run-now", action="store_true", help="also run the cell once right away")
    @argument("name", metavar="NAME", help="the schedule's name: running the cell again updates it")
    @no_var_expand
    @cell_magic
    def naq_schedule(self, line: str, cell: str) -> None:
        """Run this cell's body on a worker by cron, interval or once; names it reads are captured now."""
        with user_errors():
            self.engine.schedule(ScheduleCommand.parse(self.naq_schedule.parser, line, cell))

    @magic_arguments()
    @argument("subcommand", metavar="SUBCOMMAND", help=SUBCOMMAND_HELP)
    @argument("args", nargs=argparse.REMAINDER, metavar="...", help="the subcommand's arguments")
    @line_magic
    def naq(self, line: str) -> Any:
        """Servers, workers, schedules and results: `%naq status`, `%naq worker start -q default`, ..."""
        with user_errors():
            cmd = NaqCommand.parse(line, SUBCOMMAND_PARSERS)
            return self.subcommands[cmd.key](cmd.args)
