"""A scheduler process living at another date, run by tests/test_scheduler_dst.py; naq_ipy never imports this.

`python tests/clock_hooks.py [naq scheduler options]` runs `naq scheduler` whose clock reads
`NAQ_TEST_CLOCK_START` (UTC seconds) at the moment it starts and runs on from there at real speed.
The scheduler corrects its host clock to the NATS server's (`Scheduler.now`), so the shift is applied
to that corrected time: it fires, plans and advances entries as it would on that date.
"""

from __future__ import annotations

import os
import sys
import time

from naq_ipy.cli.main import main
from naq_ipy.schedules.scheduler import Scheduler

_server_now = Scheduler.now
_shift_s = float(os.environ.get("NAQ_TEST_CLOCK_START", time.time())) - time.time()


def shifted_now(self: Scheduler) -> float:
    """The server's time, moved to the test's date."""
    return _server_now(self) + _shift_s


if __name__ == "__main__":
    Scheduler.now = shifted_now  # type: ignore[method-assign]
    sys.exit(main(["scheduler", *sys.argv[1:]]))
