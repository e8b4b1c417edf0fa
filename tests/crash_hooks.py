"""Fault-injection hooks, run as processes by tests/test_faults.py; naq_ipy never imports this.

`python tests/crash_hooks.py [naq scheduler options]` runs a scheduler that SIGKILLs itself right
after its Nth run is published, before it can advance the entry in `naq_scheduled_jobs`
(N from env `NAQ_TEST_CRASH_AFTER_PUBLISH`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from nats.js import api

import naq_ipy.schedules.scheduler as scheduler
from naq_ipy.cli.main import main

_publish_run = scheduler.publish_run
_published = 0


async def publish_run_then_crash(*args: Any, **kwargs: Any) -> api.PubAck:
    """Publish one run as usual; at the Nth publish, die by SIGKILL before the caller goes on."""
    global _published
    ack = await _publish_run(*args, **kwargs)
    _published += 1
    if _published >= int(os.environ["NAQ_TEST_CRASH_AFTER_PUBLISH"]):
        print(f"crash hook: SIGKILL after publish {_published}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return ack


if __name__ == "__main__":
    scheduler.publish_run = publish_run_then_crash
    verbose = [arg for arg in sys.argv[1:] if arg in ("-v", "--verbose")]  # the `naq` command's own option
    sys.exit(main([*verbose, "scheduler", *(arg for arg in sys.argv[1:] if arg not in verbose)]))
