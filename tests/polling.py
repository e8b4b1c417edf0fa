"""Polling helpers for tests: wait until a check holds, or fail saying what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


def wait_until(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    """Poll `check()` until it returns something truthy (its value); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
    return value


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """`wait_until` for async tests: the loop runs on between polls."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def eventually_async(read: Callable[[], Awaitable[Any]], expected: Any, what: str,
                           timeout_s: float = 20.0) -> None:
    """Poll the coroutine function `read` until it returns `expected`; fail naming `what`."""
    latest: list[Any] = []

    async def poll() -> None:
        while True:
            latest[:] = [await read()]
            if latest[0] == expected:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {latest})")
