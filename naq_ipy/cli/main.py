"""The `naq` command: one subcommand per module, each providing `add_arguments(parser)` and `run(args)`.

Exit codes: 0 success, 1 a job or operation failed, 2 bad usage or input, 3 NATS unreachable.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from naq_ipy.errors import ConfigurationError, JobExecutionError, JobNotFoundError, NaqConnectionError, NaqException

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# name: (module, add_arguments attribute, run attribute, help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "server": ("naq_ipy.cli.serve", "add_server_arguments", "run_server",
               "run a nats-server with JetStream in the foreground"),
    "worker": ("naq_ipy.cli.serve", "add_worker_arguments", "run_worker", "run a worker on one or more queues"),
    "scheduler": ("naq_ipy.cli.serve", "add_scheduler_arguments", "run_scheduler",
                  "run the scheduler that fires scheduled jobs"),
    "list-scheduled": ("naq_ipy.cli.admin", "add_list_scheduled_arguments", "list_scheduled", "list scheduled jobs"),
    "job-control": ("naq_ipy.cli.admin", "add_job_control_arguments", "job_control",
                    "cancel, pause, resume or reschedule a scheduled job"),
    "cancel": ("naq_ipy.cli.admin", "add_cancel_arguments", "cancel",
               "cancel jobs by id: queued ones never start, running ones are stopped"),
    "list-workers": ("naq_ipy.cli.admin", "add_url_argument", "list_workers", "list live workers"),
    "result": ("naq_ipy.cli.admin", "add_result_arguments", "result", "show a job's status and result"),
    "logs": ("naq_ipy.cli.admin", "add_logs_arguments", "logs", "print a job's output (stdout, stderr, logging)"),
    "failed": ("naq_ipy.cli.admin", "add_failed_arguments", "failed", "list failed jobs, or requeue one"),
    "purge": ("naq_ipy.cli.admin", "add_purge_arguments", "purge", "remove every waiting job of a queue"),
    "demo": ("naq_ipy.cli.demo", "add_arguments", "run", "run an end-to-end demo on an embedded server"),
    "lab": ("naq_ipy.cli.lab", "add_arguments", "run",
            "start a server, a worker and a scheduler, then JupyterLab on the demo notebooks"),
    "dashboard": ("naq_ipy.cli.dashboard", "add_arguments", "run",
                  "serve the scheduled-jobs panel and the queue monitor as one web page (Voilà)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The `naq` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="naq", description="naq_ipy: jobs and schedules on NATS JetStream")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, add_name, _, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        getattr(importlib.import_module(module), add_name)(command)
    return parser


def setup_logging(verbose: bool = False) -> None:
    """Log lines of one fixed shape to stderr (only the CLI configures logging)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `naq` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    module, _, run_name, _ = COMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_name)(args) or EXIT_OK)
    except NaqConnectionError as e:
        print(f"naq: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ConfigurationError, JobNotFoundError) as e:
        print(f"naq: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (JobExecutionError, NaqException) as e:
        print(f"naq: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
