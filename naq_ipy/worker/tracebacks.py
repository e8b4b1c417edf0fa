"""Remote tracebacks that read like local ones: the job's own frames, with the notebook's source lines.

A job carries the source lines of notebook functions (`Job.sources`, see
`naq_ipy.client.sources`); `register_sources` puts them into `linecache` under the cell's file
name, so a traceback shows `File "<ipython-input-3-…>", line 3, in boom` followed by the line.
`remote_traceback` drops the leading frames of the worker itself (naq_ipy, the thread pool,
asyncio) and says how many it hid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import linecache
import os
import threading
import traceback
import types
from collections import OrderedDict
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from naq_ipy.client.sources import code_key

SOURCES_KEPT = 256  # cells registered in linecache at most (oldest forgotten first)
DYNAMIC_CODE = "<dynamic-code>"  # the file name cloudpickle gives every code object it ships
_HEADER = "Traceback (most recent call last):\n"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # naq_ipy/
_INTERNAL_DIRS = (_PACKAGE_DIR + os.sep,
                  *(os.path.dirname(module.__file__ or "") + os.sep for module in (concurrent.futures, asyncio)))
_registered: OrderedDict[str, None] = OrderedDict()
_registering = threading.Lock()  # jobs' pool threads register side by side (their calls are unpickled there)


def register_sources(sources: Mapping[str, Any] | None, function: Any = None) -> None:
    """Make the shipped lines of notebook cells readable by `linecache`, and `function`'s code point at them."""
    if not isinstance(sources, Mapping):
        return
    files, names = sources.get("files"), sources.get("code")
    if isinstance(files, Mapping):
        with _registering:
            for filename, lines in files.items():
                _register(filename, lines)
    if isinstance(names, Mapping) and function is not None:
        _rename_files(function, names, set())


def _register(filename: Any, lines: Any) -> None:
    if not isinstance(filename, str) or not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        return
    entry = linecache.cache.get(filename)
    if entry is not None and len(entry) == 4 and entry[1] is not None:
        return  # a real file of this process: never shadow it
    # mtime None: linecache.checkcache leaves the entry alone, as IPython's own cell entries
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    _registered[filename] = None
    _registered.move_to_end(filename)
    while len(_registered) > SOURCES_KEPT:
        linecache.cache.pop(_registered.popitem(last=False)[0], None)


def _rename_files(function: Any, names: Mapping[str, Any], seen: set[int]) -> None:
    """Give the cell's file name back to `function` and the notebook functions it names (cloudpickle dropped it)."""
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)
    if not isinstance(function, types.FunctionType) or id(function) in seen:
        return
    seen.add(id(function))
    code = function.__code__
    filename = names.get(code_key(code))
    if code.co_filename == DYNAMIC_CODE and isinstance(filename, str):
        function.__code__ = _renamed(code, filename)
    for name in code.co_names:
        other = function.__globals__.get(name)
        if isinstance(other, types.FunctionType):
            _rename_files(other, names, seen)


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _internal(tb: TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith(_INTERNAL_DIRS)


def user_frames(tb: TracebackType | None) -> tuple[TracebackType | None, int]:
    """The traceback from the first frame that is not the worker's own, and how many frames were dropped."""
    hidden = 0
    while tb is not None and tb.tb_next is not None and _internal(tb):
        tb, hidden = tb.tb_next, hidden + 1
    return tb, hidden


def remote_traceback(exc: BaseException) -> str:
    """The traceback text of a job's exception without the worker's leading frames (their count is said)."""
    tb, hidden = user_frames(exc.__traceback__)
    lines = traceback.format_exception(type(exc), exc, tb)
    if hidden:
        last = max((i for i, line in enumerate(lines) if line == _HEADER), default=None)
        if last is not None:
            lines.insert(last + 1, f"  [{hidden} frames of the naq worker hidden]\n")
    return "".join(lines)
