"""A notebook function is pickled once while unchanged, and re-pickled after any change a job could see."""

from __future__ import annotations

import importlib
import pickle
import sys
import types
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from jobs import notebook_cell

from naq_ipy.client import pickling as funcpickle
from naq_ipy.client.job import Job, read_header, serialize_many
from naq_ipy.client.pickling import pickle_call

SOURCE = """
import math
SCALE = 3
DATA = [1, 2]
def helper():
    return SCALE
def make_counter():
    step = 1
    def count(x):
        return x + step
    def set_step(value):
        nonlocal step
        step = value
    return count, set_step
count, set_step = make_counter()
def job(x: int, offset=0, *, extra=0) -> int:
    return x * SCALE + offset + extra + len(math.__name__)
def job_reading_a_list(x):
    return x + sum(DATA)
grow = DATA.append
def job_reading_a_list_through_a_method(x):
    return x + sum(grow.__self__)
def job_calling_a_notebook_function(x):
    return x + helper()
"""


def run(data: bytes) -> Any:
    """What a worker does with the bytes: unpickle the call and make it."""
    function, args, kwargs = pickle.loads(data)
    return function(*args, **kwargs)


@pytest.fixture
def cell() -> dict[str, Any]:
    return notebook_cell(SOURCE)


@pytest.fixture
def function_pickles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every function cloudpickle pickles by value on its own from now on (the cost the cache saves)."""
    seen: list[object] = []
    dumps = cloudpickle.dumps

    def counting(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        if isinstance(obj, types.FunctionType):
            seen.append(obj)
        return dumps(obj, *args, **kwargs)

    monkeypatch.setattr(funcpickle.cloudpickle, "dumps", counting)
    return seen


def test_an_unchanged_notebook_function_is_pickled_once(cell: dict[str, Any], function_pickles: list[object]) -> None:
    job = cell["job"]
    assert [run(pickle_call(job, (x,), {})) for x in range(5)] == [4, 7, 10, 13, 16]
    assert function_pickles == [job]
    assert run(pickle_call(job, (1,), {"offset": 10})) == 17 and function_pickles == [job]


CHANGES: dict[str, tuple[Callable[[dict[str, Any]], None], float]] = {
    # change made between two jobs of `job(1)`, and what the second must return
    "global rebound": (lambda ns: ns.update(SCALE=10), 14),
    "global to an equal value of another type": (lambda ns: ns.update(SCALE=3.0), 7.0),
    "global shadowing a builtin": (lambda ns: ns.update(len=bool), 4),
    "module rebound": (lambda ns: ns.update(math=__import__("cmath")), 8),
    "default changed": (lambda ns: setattr(ns["job"], "__defaults__", (7,)), 14),
    "keyword default changed": (lambda ns: setattr(ns["job"], "__kwdefaults__", {"extra": 20}), 27),
    "code replaced": (lambda ns: setattr(ns["job"], "__code__", (lambda x, offset=0, *, extra=0: -x).__code__), -1),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_the_job_could_see_is_pickled_again(cell: dict[str, Any], change: str) -> None:
    apply, expected = CHANGES[change]
    assert run(pickle_call(cell["job"], (1,), {})) == 7
    apply(cell)
    result = run(pickle_call(cell["job"], (1,), {}))
    assert (result, type(result)) == (expected, type(expected))


def test_a_closure_variable_changed_is_seen(cell: dict[str, Any]) -> None:
    count, set_step = cell["count"], cell["set_step"]
    assert run(pickle_call(count, (1,), {})) == 2
    set_step(5)
    assert run(pickle_call(count, (1,), {})) == 6


def test_functions_reading_mutable_values_are_pickled_every_time(cell: dict[str, Any],
                                                                 function_pickles: list[object]) -> None:
    assert run(pickle_call(cell["job_reading_a_list"], (1,), {})) == 4
    assert run(pickle_call(cell["job_reading_a_list_through_a_method"], (1,), {})) == 4
    cell["DATA"].append(10)  # same list object, new contents
    assert run(pickle_call(cell["job_reading_a_list"], (1,), {})) == 14
    assert run(pickle_call(cell["job_reading_a_list_through_a_method"], (1,), {})) == 14
    assert run(pickle_call(cell["job_calling_a_notebook_function"], (1,), {})) == 4
    cell["SCALE"] = 30  # read by the helper, not by the function itself
    assert run(pickle_call(cell["job_calling_a_notebook_function"], (1,), {})) == 31
    assert len(function_pickles) == 0  # neither went through the cache: pickled with the whole call


def test_a_module_sent_by_value_is_pickled_every_time(cell: dict[str, Any]) -> None:
    cell["math"] = module = types.ModuleType("unimportable")
    module.__name__ = "a"  # the name the job reads; the module's contents travel by value
    assert run(pickle_call(cell["job"], (1,), {})) == 4
    module.__name__ = "abcdef"
    assert run(pickle_call(cell["job"], (1,), {})) == 9


def test_attributes_set_on_the_function_travel_with_it(cell: dict[str, Any]) -> None:
    job = cell["job"]
    pickle_call(job, (1,), {})
    job.tag = ["nightly"]
    function, _, _ = pickle.loads(pickle_call(job, (1,), {}))
    assert function.tag == ["nightly"]
    job.tag.append("again")
    function, _, _ = pickle.loads(pickle_call(job, (1,), {}))
    assert function.tag == ["nightly", "again"]


def test_an_import_after_the_first_job_pickles_again(cell: dict[str, Any], function_pickles: list[object],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # cloudpickle sends the submodules a function's packages have loaded: a new import can change them
    pickle_call(cell["job"], (1,), {})
    monkeypatch.setitem(sys.modules, "naq_test_newly_imported", types.ModuleType("naq_test_newly_imported"))
    pickle_call(cell["job"], (1,), {})
    assert function_pickles == [cell["job"], cell["job"]]


def test_importable_calls_take_c_pickle_whatever_their_arguments() -> None:
    call = (zlib.crc32, (Fraction(1, 3), datetime(2026, 11, 28, tzinfo=UTC), [b"x"] * 3), {"value": Decimal("2.5")})
    assert pickle_call(*call) == pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)


def test_an_argument_of_a_notebook_class_travels_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    point = notebook_cell("class Point:\n    MARK = 'by-value-marker'\n"
                          "    def __init__(self, x):\n        self.x = x\n")
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "Point", point["Point"], raising=False)  # C pickle would find it by name here
    data = pickle_call(zlib.crc32, (point["Point"](3),), {})
    assert b"by-value-marker" in data
    monkeypatch.delattr(main, "Point")  # as on a worker, where the notebook's __main__ is not
    _, (back,), _ = pickle.loads(data)
    assert back.x == 3 and back.MARK == "by-value-marker"


def test_a_module_registered_by_value_travels_by_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "naq_notes_module.py").write_text("def shout(text):\n    return text.upper() + '!'\n"
                                                  "class Box:\n    def __init__(self, v):\n        self.v = v\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("naq_notes_module")
    cloudpickle.register_pickle_by_value(module)
    try:
        data = pickle_call(module.shout, ("hi",), {})
        boxed = pickle_call(zlib.crc32, (module.Box(2),), {})
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules["naq_notes_module"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    assert run(data) == "HI!"
    assert pickle.loads(boxed)[1][0].v == 2


def test_batches_share_the_cached_pickle_of_an_unchanged_notebook_function(
    cell: dict[str, Any], function_pickles: list[object]
) -> None:
    for _ in range(3):
        datas = serialize_many([Job(function=cell["job"], args=(x,)) for x in range(4)])
        assert [run(read_header(data)[1]) for data in datas] == [4, 7, 10, 13]
    assert function_pickles == [cell["job"]]
