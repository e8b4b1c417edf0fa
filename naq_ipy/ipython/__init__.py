"""The IPython face of naq_ipy: `%load_ext naq_ipy` registers the magics, `%unload_ext` undoes it all.

Importing this package does not import IPython (workers import `cellfunc` from it to run
scheduled cells); the magics module is imported by `load_ipython_extension` only.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Protocol

from naq_ipy.errors import JobExecutionError

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


def load_ipython_extension(ipython: Any) -> None:
    """Register `%naq_enqueue`, `%%naq_schedule` and `%naq` on `ipython` (once), and the live Job display."""
    from naq_ipy.ipython.livejob import register_formatter
    from naq_ipy.ipython.magics import NaqMagics

    if ipython.magics_manager.registry.get(NaqMagics.__name__) is not None:
        print("naq_ipy is already loaded; use %reload_ext naq_ipy to reload it")
        return
    ipython.register_magics(NaqMagics(shell=ipython))
    register_formatter(ipython)
    # a failed job shows its remote traceback only, unless `%xmode Verbose` asks for everything
    JobExecutionError.show_local_frames = staticmethod(  # type: ignore[method-assign]
        lambda: getattr(ipython.InteractiveTB, "mode", "") == "Verbose")


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics, close panels, stop the subprocesses this kernel started and the sync bridge."""
    from naq_ipy.client.bridge import stop_bridge
    from naq_ipy.ipython.livejob import unregister_formatter
    from naq_ipy.ipython.magics import NaqMagics
    from naq_ipy.local.processes import PROCESSES

    unregister_formatter(ipython)
    JobExecutionError.show_local_frames = staticmethod(lambda: False)  # type: ignore[method-assign]
    magics = ipython.magics_manager.registry.pop(NaqMagics.__name__, None)
    for kind, names in NaqMagics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    if magics is not None and magics in ipython.configurables:
        ipython.configurables.remove(magics)
    close_registered()
    PROCESSES.stop_all()
    stop_bridge()
