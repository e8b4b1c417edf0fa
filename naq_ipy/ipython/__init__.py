"""The IPython face of naq_ipy: `%load_ext naq_ipy` registers the magics, `%unload_ext` undoes it all.

Importing this package does not import IPython; the magics module is imported by
`load_ipython_extension` only.
"""

from __future__ import annotations

import logging
from typing import Any

from naq_ipy.ipython.closing import close_registered, register_closable

__all__ = ["close_registered", "load_ipython_extension", "register_closable", "unload_ipython_extension"]

from naq_ipy.errors import JobExecutionError

logger = logging.getLogger(__name__)


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
    from naq_ipy.wire.settings import clear_default_url

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
    clear_default_url()
    stop_bridge()
