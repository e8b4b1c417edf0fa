"""A testing IPython shell for the magics (errors re-raised, history off) and store helpers; fixtures in conftest."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import nats
import nats.js.errors
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import naq_ipy.client.bridge
from naq_ipy.schedules.store import ScheduledJobManager

SCHEDULE_LINE = re.compile(
    r"^(created|updated) schedule '(\w+)'( \(paused\))?: (.+), next run "
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+ \((in .+|now)\)$", re.M
)


class RaisingShell(InteractiveShell):
    """A shell whose `run_cell` re-raises the cell's error (jupysql's testing shell)."""

    def run_cell(self, *args: Any, **kwargs: Any) -> Any:
        result = super().run_cell(*args, **kwargs)
        result.raise_error()
        return result


def make_shell(**naq: Any) -> RaisingShell:
    config = Config()
    config.HistoryAccessor.enabled = False
    for name, value in naq.items():
        setattr(config.NaqMagics, name, value)
    return RaisingShell.instance(config=config)


def stream_messages(url: str, stream: str = "naq_jobs") -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def schedules(url: str) -> list[Any]:
    return naq_ipy.client.bridge.run_sync(ScheduledJobManager(url).list())


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


