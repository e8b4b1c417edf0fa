"""Old module paths of release 0.1 (before the layer folders) keep working for one release, with a warning.

`import naq_ipy.results` gives a stand-in module that forwards every attribute to
`naq_ipy.status.results` and warns once per name; pickles that name an old path (scheduled
cells stored in KV, jobs already queued) still load on a worker.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

OLD_PATHS: dict[str, str] = {
    "naq_ipy.timeutils": "naq_ipy.rules.times", "naq_ipy.retry": "naq_ipy.rules.retry",
    "naq_ipy.settings": "naq_ipy.wire.settings", "naq_ipy.connection": "naq_ipy.wire.connection",
    "naq_ipy.batch": "naq_ipy.wire.publish", "naq_ipy.signing": "naq_ipy.wire.signing",
    "naq_ipy.server": "naq_ipy.wire.server", "naq_ipy.bridge": "naq_ipy.client.bridge",
    "naq_ipy.job": "naq_ipy.client.job", "naq_ipy.funcpickle": "naq_ipy.client.pickling",
    "naq_ipy.queue": "naq_ipy.client.queue", "naq_ipy.helpers": "naq_ipy.client.shortcuts",
    "naq_ipy.ipython.cellfunc": "naq_ipy.client.cells", "naq_ipy.display": "naq_ipy.views.jobs",
    "naq_ipy.results": "naq_ipy.status.results", "naq_ipy.waiting": "naq_ipy.status.waiting",
    "naq_ipy.progress": "naq_ipy.status.progress", "naq_ipy.schedule": "naq_ipy.schedules.record",
    "naq_ipy.scheduled": "naq_ipy.schedules.store", "naq_ipy.modify": "naq_ipy.schedules.changes",
    "naq_ipy.firing": "naq_ipy.schedules.fires", "naq_ipy.scheduler": "naq_ipy.schedules.scheduler",
    "naq_ipy.runner": "naq_ipy.worker.runner", "naq_ipy.executor": "naq_ipy.worker.executor",
    "naq_ipy.failed": "naq_ipy.worker.failed_store", "naq_ipy.processes": "naq_ipy.local.processes",
    "naq_ipy.stack": "naq_ipy.local.stack", "naq_ipy.admin": "naq_ipy.cli.admin",
    "naq_ipy.demo": "naq_ipy.cli.demo", "naq_ipy.lab": "naq_ipy.cli.lab",
    "naq_ipy.ipython.jobs_panel": "naq_ipy.ipython.schedules_panel",
    "naq_ipy.ipython.jobs_model": "naq_ipy.ipython.schedules_model",
    "naq_ipy.ipython.jobs_form": "naq_ipy.ipython.schedules_form",
    "naq_ipy.ipython.table": "naq_ipy.ipython.schedules_table",
    "naq_ipy.ipython.jobview": "naq_ipy.views.jobs",
}


class MovedModule(types.ModuleType):
    """A module at an old path that forwards attribute reads to the module's new path."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Moved to {new}.")
        self.__dict__["_new_path"] = new

    def __getattr__(self, name: str) -> Any:
        new = self.__dict__["_new_path"]
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(f"{self.__name__}.{name} moved to {new}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of `OLD_PATHS` and loads a `MovedModule` for each."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old module path, None for every other name."""
        if fullname not in OLD_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        """The stand-in module for `spec.name`."""
        return MovedModule(spec.name, OLD_PATHS[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: attributes are read from the new module on demand."""


def install() -> None:
    """Register the finder once per interpreter."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
