"""The source lines of notebook functions, shipped with a job so its remote traceback shows them.

A function defined in a notebook cell has a file name (`<ipython-input-3-…>`, `<cell 12>`, or
ipykernel's `/tmp/ipykernel_…/….py`) that exists only in the kernel's `linecache`, registered
there with no mtime. `function_sources` collects those lines for the job's function and the
notebook functions it names, so the worker can register them under the same names.
"""

from __future__ import annotations

import functools
import inspect
import linecache
from collections.abc import Callable
from types import CodeType
from typing import Any

SOURCE_CHARS_MAX = 64 * 1024  # per job: a huge cell is shipped without its lines rather than slowing enqueue


def _code_of(func: Any) -> tuple[CodeType | None, dict[str, Any]]:
    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)  # bound methods
    code = getattr(func, "__code__", None)
    if code is None and not inspect.isfunction(func):
        call = type(func).__call__
        code = getattr(call, "__code__", None)
        func = call
    return code, getattr(func, "__globals__", None) or {}


def _cell_lines(filename: str) -> list[str] | None:
    """The lines of a file known only to linecache (a notebook cell), else None."""
    entry = linecache.cache.get(filename)
    if entry is None or len(entry) != 4 or entry[1] is not None:
        return None
    return list(entry[2])


def code_key(code: CodeType) -> str:
    """How a function's code is recognised after cloudpickle renamed its file to `<dynamic-code>`."""
    return f"{code.co_qualname}:{code.co_firstlineno}"


def function_sources(func: Callable[..., Any]) -> dict[str, Any] | None:
    """The cells of `func` and of the notebook functions it names: {"files": {name: lines}, "code": {key: name}}.

    None when no cell is involved. cloudpickle ships code with the file name `<dynamic-code>`:
    `code` maps each function's `code_key` to its cell, so the worker can give the name back.
    """
    code, namespace = _code_of(func)
    if code is None:
        return None
    codes = [code]
    for name in code.co_names:
        other = namespace.get(name)
        if inspect.isfunction(other) and other.__module__ == "__main__":
            codes.append(other.__code__)
    files: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    size = 0
    for one in codes:
        lines = files.get(one.co_filename) or _cell_lines(one.co_filename)
        if lines is None:
            continue
        if one.co_filename not in files:
            size += sum(map(len, lines))
            if size > SOURCE_CHARS_MAX:
                break
            files[one.co_filename] = lines
        names[code_key(one)] = one.co_filename
    return {"files": files, "code": names} if files else None
