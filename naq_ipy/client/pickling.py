"""Pickle the call of a job: C pickle where it means the same as cloudpickle, notebook functions once.

C pickle refers to every function and class by module and name, as cloudpickle does for
importable ones; where that would not do (something of the notebook's `__main__`, a module
registered to travel by value, or anything C pickle refuses) the call goes through cloudpickle.

cloudpickle sends a function defined in a notebook by value (its code, the globals it reads,
defaults, closure), which costs ~50 µs every time. Such a function is re-pickled only when
something cloudpickle would read from it may have changed: the cache keeps, by identity,
everything it reads, and gives up on functions that read mutable values (a list, another
notebook function), whose contents could change without their identity changing.
"""

from __future__ import annotations

import builtins
import operator
import pickle
import sys
import types
import weakref
from collections.abc import Callable
from itertools import repeat
from typing import Any

import cloudpickle

_STABLE_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes})
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")  # cloudpickle sends these too
_MISSING = object()
_NO_BASE_GLOBALS = (_MISSING,) * len(_BASE_GLOBALS)
_BUILTINS = vars(builtins)


class PickledOnce:
    """A function pickled ahead of its jobs; plain `pickle.loads` turns it back into the function."""

    __slots__ = ("data", "mentions")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.mentions = _mentions(data)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.data,)


def pickle_call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    """Pickle `(function, args, kwargs)`; the bytes unpickle the same whichever path made them.

    A notebook function that did not change since its last job is not pickled again. With
    `buffers`, large buffers (numpy, pandas, Arrow data) are left out of band and appended there.
    """
    dump = _dumper(buffers)
    if isinstance(function, types.FunctionType) and not by_reference(function):
        pickled = _cached(function)
        if pickled is None:  # by value, and not cacheable: all of it through cloudpickle
            return dump(cloudpickle.dumps, (function, args, kwargs))
        function = pickled
    call = (function, args, kwargs)
    try:
        data = dump(pickle.dumps, call)
    except Exception:  # a lambda, a local class, a lock: cloudpickle pickles it or names the culprit
        return dump(cloudpickle.dumps, call)
    known = function.mentions if isinstance(function, PickledOnce) else 0
    if _mentions(data) > known:  # C pickle referred to the notebook's objects by name: send them by value
        return dump(cloudpickle.dumps, call)
    return data


def dumps_value(value: Any, buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    """cloudpickle `value` (a result); with `buffers`, large buffers are left out of band and appended there."""
    return _dumper(buffers)(cloudpickle.dumps, value)


def _dumper(buffers: list[pickle.PickleBuffer] | None) -> Callable[[Callable[..., bytes], Any], bytes]:
    if buffers is None:
        return lambda dumps, value: dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def dump(dumps: Callable[..., bytes], value: Any) -> bytes:
        buffers.clear()  # an attempt that failed half-way may have collected some
        return dumps(value, protocol=5, buffer_callback=_out_of_band(buffers))
    return dump


OUT_OF_BAND_MIN_BYTES = 64 * 1024  # smaller buffers stay inside the pickle stream


def _out_of_band(buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    def callback(buffer: pickle.PickleBuffer) -> bool:
        try:
            if buffer.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
                return True  # true means: in band
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        buffers.append(buffer)
        return False
    return callback


def shared_pickle(function: Any) -> PickledOnce | None:
    """`function` pickled once for many jobs when it travels by value (cached while unchanged).

    None when it goes by reference (re-pickling a name is cheap) or cannot be pickled (each job's
    own pickling then names the culprit).
    """
    if isinstance(function, types.FunctionType) and not by_reference(function):
        cached = _cached(function)
        if cached is not None:
            return cached
    try:
        pickled = PickledOnce(cloudpickle.dumps(function, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return None
    return pickled if pickled.mentions else None


def _mentions(data: bytes) -> int:
    """How often pickle bytes name a module whose objects must travel by value (`__main__` and registered ones)."""
    count = data.count(b"__main__")
    registered = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if registered:
        count += sum(data.count(name.encode()) for name in registered)
    return count


def by_reference(func: Any) -> bool:
    """True when cloudpickle pickles `func` by reference (importable, not from `__main__`)."""
    name = getattr(func, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or name == "__main__" or _by_value(module):
        return False
    found: Any = module
    for part in str(getattr(func, "__qualname__", "<")).split("."):
        found = getattr(found, part, None)
    return found is func


def _by_value(module: types.ModuleType) -> bool:
    """Whether `cloudpickle.register_pickle_by_value` was asked to send this module's code by value."""
    return module.__name__ in getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", ())


_cache: weakref.WeakKeyDictionary[types.FunctionType, tuple[int, tuple[Any, ...], PickledOnce]] = (
    weakref.WeakKeyDictionary()
)


def _cached(func: types.FunctionType) -> PickledOnce | None:
    """`func` pickled by value, from the cache while nothing it reads changed; None if it cannot be cached."""
    if func.__dict__:  # attributes set on the function: mutable, and they travel with it
        return None
    meta, values = _read(func)
    state = (*meta, *values)
    # a new import can add submodules cloudpickle lists with the function: any import re-pickles it
    imported = len(sys.modules)
    hit = _cache.get(func)
    if hit is not None and hit[0] == imported and len(hit[1]) == len(state) and all(map(operator.is_, hit[1], state)):
        return hit[2]
    if not all(map(_stable, values)):  # checked on a miss only: a hit holds the very same objects
        return None
    pickled = PickledOnce(cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL))
    _cache[func] = (imported, state, pickled)
    return pickled


def _read(func: types.FunctionType) -> tuple[tuple[Any, ...], list[Any]]:
    """What cloudpickle reads from `func`: (its own attributes, the values it reads), to compare by identity."""
    known = func.__globals__
    names = _global_names(func.__code__)
    values = [*map(known.get, names, repeat(_MISSING, len(names))), *map(known.get, _BASE_GLOBALS, _NO_BASE_GLOBALS),
              *map(_contents, func.__closure__ or ()), *(func.__defaults__ or ())]
    keywords, annotations = func.__kwdefaults__ or {}, func.__annotations__
    values += keywords.values()
    values += annotations.values()
    return (func.__code__, func.__name__, func.__qualname__, func.__module__, func.__doc__, *keywords,
            *annotations), values


def _contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return _MISSING


_names: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name `code` and the code nested in it may read as a global (a superset is fine)."""
    names = _names.get(code)
    if names is None:
        found = dict.fromkeys(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(dict.fromkeys(_global_names(const)))
        names = _names[code] = tuple(found)
    return names


def _stable(value: Any) -> bool:
    """Pickles the same as long as it is the same object: immutable, or pickled by reference."""
    if value is _MISSING or type(value) in _STABLE_TYPES:
        return True
    if type(value) is tuple or type(value) is frozenset:
        return all(_stable(item) for item in value)
    if _BUILTINS.get(getattr(value, "__name__", None)) is value:  # int, len, ... in annotations and defaults
        return True
    if isinstance(value, types.BuiltinFunctionType):  # a module's C function; `DATA.append` carries DATA
        return isinstance(value.__self__, types.ModuleType | None) and by_reference(value)
    if isinstance(value, types.ModuleType):  # an imported module goes by name; any other one by value
        return value.__name__ != "__main__" and sys.modules.get(value.__name__) is value and not _by_value(value)
    return isinstance(value, type | types.FunctionType) and by_reference(value)
