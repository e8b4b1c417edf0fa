"""Process helpers for the tests that start whole stacks: is a pid alive, wait for pids to go, descendants."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], within_s: float = 15.0) -> list[int]:
    """Wait until none of `pids` runs; returns those still running after `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def descendants(root: int) -> dict[int, str]:
    """{pid: command line} of every live process below `root` (children, their children, ...)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found and alive(pid):
                found[pid] = commands.get(pid, "")
                frontier.append(pid)
    return found


def environ(pid: int) -> dict[str, str]:
    """The environment `pid` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def kill_all(pids: list[int]) -> None:
    """SIGKILL whatever of `pids` still runs (test cleanup after a failure)."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def outlived(pids: list[int], within_s: float = 10.0) -> list[int]:
    """Wait up to `within_s` for `pids` to end; SIGKILL those still running and return them."""
    left = wait_gone(pids, within_s)
    kill_all(left)
    return left
