"""The worker: the fetch loop (`consumer`), running one job (`runner`), where calls run (`executor`), failed jobs."""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = {"Worker": "naq_ipy.worker.consumer", "list_workers": "naq_ipy.status.workers"}


def __getattr__(name: str) -> Any:
    """`naq_ipy.worker.Worker` of the single-module release, with a `DeprecationWarning`."""
    if name not in _MOVED:
        raise AttributeError(f"module 'naq_ipy.worker' has no attribute {name!r}")
    import importlib

    warnings.warn(f"naq_ipy.worker.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
