"""Job functions of the payload tests: importable by worker subprocesses (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def doubled(value: Any) -> Any:
    """The value doubled (arrays, DataFrames), or repeated twice (bytes)."""
    return value * 2


def total(value: Any, offset: int = 0) -> float:
    """Sum of an array plus `offset`."""
    return float(np.sum(value)) + offset


def ones(n: int) -> np.ndarray:
    """A fresh array of `n` ones (a large result from a small call)."""
    return np.ones(n)


def reader_pid(value: Any, path: str) -> int:
    """Write this process's pid and the id of the array's memory to `path`; returns the pid."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {value.__array_interface__['data'][0]}\n")
    return os.getpid()


def fails_once(value: Any, path: str) -> float:
    """Fail the first time (a marker file says so), then return the sum of `value`."""
    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first attempt fails")
    return float(np.sum(value))
