"""`pickle_call`: the C-pickle fast path is taken only where cloudpickle would pickle by reference."""

from __future__ import annotations

import pickle
import sys
import types
import zlib

import cloudpickle

from naq_ipy.client.job import pickle_call


def _uses_cloudpickle(data: bytes) -> bool:
    return b"cloudpickle" in data


def test_the_fast_path_gives_the_bytes_cloudpickle_would() -> None:
    call = (zlib.crc32, (b"abc", 7), {"nested": [1, 2.5, ("x", None)], "flag": True})
    data = pickle_call(*call)
    assert data == cloudpickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    func, args, _ = pickle.loads(data)
    assert func(*args) == zlib.crc32(b"abc", 7)


def test_a_main_function_travels_by_value() -> None:
    main = types.ModuleType("__main__")
    exec("def double(x):\n    return 2 * x\n", main.__dict__)
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = main
    try:
        data = pickle_call(main.double, (21,), {})
    finally:
        sys.modules["__main__"] = saved
    assert _uses_cloudpickle(data)
    func, args, _ = pickle.loads(data)
    assert func(*args) == 42


def test_a_non_plain_argument_goes_through_cloudpickle() -> None:
    data = pickle_call(zlib.crc32, (lambda: 1,), {})
    assert _uses_cloudpickle(data)
    assert pickle.loads(data)[1][0]() == 1
