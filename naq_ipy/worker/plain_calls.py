"""Calls that can be unpickled on the worker's loop: plain data around an already-imported coroutine function.

Unpickling may run any code (a `__reduce__`, a `__setstate__`, an import) and take any time, so
calls are unpickled in a pool thread. That hop costs more than a no-op job itself. A pickle whose
only global is a coroutine function of a module this process has imported (found in the module's
`__dict__`: no import, no module `__getattr__`) runs no code while it is read — calling a
coroutine function only makes a coroutine — and is small, so it is read on the loop and awaited
there. Anything else (a class, a notebook function pickled by value, a large pickle) returns None
and takes the thread.
"""

from __future__ import annotations

import inspect
import io
import pickle
import sys
from collections.abc import Callable
from typing import Any

MAX_PLAIN_BYTES = 16 * 1024  # larger pickles may take long to read even as plain data


class _NotPlain(Exception):
    """The pickle names something other than an imported coroutine function."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = vars(sys.modules[module]).get(name) if module in sys.modules and "." not in name else None
        if found is None or not inspect.iscoroutinefunction(found):
            raise _NotPlain
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _NotPlain


def plain_coroutine_call(body: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None:
    """`(function, args, kwargs)` of a job's pickled call when it is plain data around an imported coroutine
    function; None when it must be unpickled off the loop (or is not a readable call at all)."""
    if len(body) > MAX_PLAIN_BYTES:
        return None
    try:
        call = _PlainUnpickler(io.BytesIO(body)).load()
    except Exception:  # _NotPlain, or unreadable: the thread reads it again and reports why
        return None
    if not (isinstance(call, tuple) and len(call) == 3 and inspect.iscoroutinefunction(call[0])
            and type(call[1]) is tuple and type(call[2]) is dict):
        return None
    return call
