"""The long-running commands: `naq server`, `naq worker` and `naq scheduler`, each in the foreground.

The runners know nothing of the command line: this module turns parsed arguments into a
`NatsServer`, `Worker` or `Scheduler` and runs it until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

from naq_ipy.errors import NaqException
from naq_ipy.schedules.scheduler import Scheduler
from naq_ipy.wire.server import NatsServer, default_store_dir
from naq_ipy.wire.settings import DEFAULT_QUEUE_NAME
from naq_ipy.worker.consumer import Worker

URL_HELP = "NATS URL (default: $NAQ_URL or nats://127.0.0.1:4222)"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `naq server` options (`--port`, `--store-dir`, `--host`) to `parser`."""
    parser.add_argument("--port", type=int, default=4222, help="client port (default 4222)")
    parser.add_argument("--store-dir", type=Path, help=f"data dir (default {default_store_dir()})")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")


def run_server(args: argparse.Namespace) -> int:
    """Run a server in the foreground until SIGINT or SIGTERM, then stop it cleanly."""
    stop_requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = NatsServer(port=args.port, store_dir=args.store_dir, host=args.host)
    try:
        server.start()
        print(f"nats-server ready at {server.url}, data in {server.store_dir}", flush=True)
        while not stop_requested.wait(0.5):
            if not server.running:
                print(f"nats-server exited unexpectedly\n{server.log_tail()}", file=sys.stderr)
                return 1
    except NaqException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("nats-server stopped", flush=True)
    return 0


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `naq worker` arguments to `parser`."""
    parser.add_argument("queues", nargs="*", metavar="QUEUE", help=f"queues to serve (default {DEFAULT_QUEUE_NAME})")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="jobs run at once (default 10)")
    parser.add_argument("--process-pool", action="store_true", help="run plain functions in child processes")
    parser.add_argument("--url", default=None, help=URL_HELP)
    parser.add_argument("--worker-id", default=None, help="worker id (default <host>-<pid>-<random>)")
    parser.add_argument("--ack-wait", type=float, default=30.0, metavar="S", help="consumer ack wait (default 30)")
    parser.add_argument("--grace", type=float, default=30.0, metavar="S",
                        help="seconds running jobs get to finish at a stop (default 30)")
    parser.add_argument("--heartbeat", type=float, default=5.0, metavar="S", help="heartbeat interval (default 5)")
    parser.add_argument("--no-capture", dest="capture_output", action="store_false",
                        help="leave jobs' stdout, stderr and logging in the worker's own output")


async def _serve(worker: Worker) -> None:
    worker.install_signal_handlers()
    await worker.run()


def run_worker(args: argparse.Namespace) -> int:
    """`naq worker`: run until SIGTERM or SIGINT, then stop gracefully."""
    worker = Worker(args.queues or [DEFAULT_QUEUE_NAME], concurrency=args.concurrency, url=args.url,
                    process_pool=args.process_pool, worker_id=args.worker_id, heartbeat_s=args.heartbeat,
                    ack_wait_s=args.ack_wait, grace_s=args.grace, capture_output=args.capture_output)
    asyncio.run(_serve(worker))
    return 0


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `naq scheduler` options to `parser`."""
    parser.add_argument("--url", help=URL_HELP)
    parser.add_argument("--id", dest="scheduler_id", help="scheduler id for logs (default: random)")
    parser.add_argument("--misfire-grace", type=float, default=60.0, metavar="SECONDS",
                        help="how late a run may fire before it counts as missed (default 60)")
    parser.add_argument("--max-catch-up", type=int, default=100, metavar="N",
                        help="most missed runs fired at once for misfire=all entries (default 100)")


def run_scheduler(args: argparse.Namespace) -> int:
    """Run a scheduler in the foreground until SIGINT or SIGTERM."""
    scheduler = Scheduler(args.url, scheduler_id=args.scheduler_id, misfire_grace_s=args.misfire_grace,
                          max_catch_up=args.max_catch_up)
    asyncio.run(scheduler.run(handle_signals=True))
    return 0
