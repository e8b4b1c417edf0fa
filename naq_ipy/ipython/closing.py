"""The registry of what the extension closes when it unloads (panels, live displays, their watches)."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Protocol

logger = logging.getLogger(__name__)


class Closable(Protocol):
    """Anything with a `close()`: panels, live watches."""

    def close(self) -> None: ...


# weak: a panel that is gone (closed, output cleared, collected) is not kept alive by this registry
_closables: weakref.WeakSet[Closable] = weakref.WeakSet()
_closables_lock = threading.Lock()


def register_closable(obj: Closable) -> None:
    """Have `obj.close()` called when the extension unloads (panels register their watches here)."""
    with _closables_lock:
        _closables.add(obj)


def close_registered() -> None:
    """Close everything registered so far; a failing close is logged, never raised."""
    with _closables_lock:
        items = list(_closables)
        _closables.clear()
    for obj in items:
        try:
            obj.close()
        except Exception:  # one broken panel must not stop the unload
            logger.warning("closing %r failed", obj, exc_info=True)
