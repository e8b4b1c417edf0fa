"""Turn a `%%naq_schedule` cell body into a picklable callable that a worker can run.

The body is transformed like a normal cell (IPython syntax becomes Python) and compiled
now, so mistakes show when the cell is scheduled. Names it reads from the notebook and
never assigns are captured by value; modules are captured by name and imported on the
worker. On the worker the body runs at module level in a fresh namespace, like a cell,
and the value of its last expression is the result.

This module never imports IPython: workers import it to unpickle a cell.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import linecache
import types
from collections.abc import Mapping
from typing import Any, Protocol

from naq_ipy.client.pickling import dumps_value
from naq_ipy.errors import ConfigurationError, SerializationError

# The name IPython's transformer calls for magics (`%x`) and shell escapes (`!x`).
_SHELL_HOOK = "get_ipython"


class CellShell(Protocol):
    """What this module needs from an IPython shell."""

    user_ns: dict[str, Any]

    def transform_cell(self, raw_cell: str) -> str: ...


_MISSING = object()


class CellFunction:
    """A cell body plus the notebook values it reads; calling it runs the body and returns its last value."""

    def __init__(self, name: str, source: str, captured: Mapping[str, Any], imports: Mapping[str, str]) -> None:
        self.name = name
        self.source = source
        self.captured = dict(captured)
        self.imports = dict(imports)
        # read by naq_ipy.client.job.function_name for displays: `%%naq_schedule.tick`
        self.__module__ = "%%naq_schedule"
        self.__qualname__ = name

    @property
    def filename(self) -> str:
        """The pseudo file name tracebacks show for this body."""
        return f"<%%naq_schedule {self.name}>"

    def __repr__(self) -> str:
        names = ", ".join(sorted([*self.captured, *self.imports])) or "nothing"
        return f"<CellFunction {self.name!r} captures {names}>"

    def __call__(self) -> Any:
        """Run the body in a fresh module namespace; return the value of its last expression (or None)."""
        lines = self.source.splitlines(keepends=True)
        linecache.cache[self.filename] = (len(self.source), None, lines, self.filename)
        tree = ast.parse(self.source, self.filename)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        namespace.update({name: importlib.import_module(module) for name, module in self.imports.items()})
        namespace.update(self.captured)
        exec(compile(tree, self.filename, "exec"), namespace)
        if not isinstance(last, ast.Expr):
            return None
        return eval(compile(ast.Expression(last.value), self.filename, "eval"), namespace)


def make_cell_function(shell: CellShell, name: str, body: str) -> CellFunction:
    """The cell `body` as a CellFunction, checked now: syntax, undefined names, unpicklable values."""
    source = shell.transform_cell(body)
    filename = f"<%%naq_schedule {name}>"
    try:
        tree = ast.parse(source, filename)
        compile(tree, filename, "exec")
    except SyntaxError as e:
        raise ConfigurationError(f"syntax error in the cell body, line {e.lineno}: {e.msg}") from None
    if not tree.body:
        raise ConfigurationError("the cell body is empty: there is nothing to schedule")
    captured: dict[str, Any] = {}
    imports: dict[str, str] = {}
    for var in rebound_names(tree):  # `df = df.dropna()`: read from the notebook before the cell rebinds it
        value = shell.user_ns.get(var, _MISSING)
        if value is not _MISSING and not isinstance(value, types.ModuleType) and _picklable(value):
            captured[var] = value
    for var in free_names(tree):
        if var == _SHELL_HOOK:
            raise ConfigurationError("IPython magics and shell commands (% and !) cannot run on a worker")
        if var in shell.user_ns:
            value = shell.user_ns[var]
            if isinstance(value, types.ModuleType):
                imports[var] = value.__name__
            else:
                captured[var] = value
        elif not hasattr(builtins, var):
            raise ConfigurationError(f"name {var!r} is used in the cell but not defined in the notebook")
    check_picklable(captured)
    return CellFunction(name, source, captured, imports)


def free_names(tree: ast.AST) -> list[str]:
    """Names the code reads but never binds anywhere (assignment, def, import, argument, ...), sorted."""
    loaded, bound = _loaded_and_bound(tree)
    return sorted(loaded - bound)


def rebound_names(tree: ast.AST) -> list[str]:
    """Names the code both reads and binds: they may be read from the notebook before being rebound."""
    loaded, bound = _loaded_and_bound(tree)
    return sorted(loaded & bound)


def _picklable(value: Any) -> bool:
    try:
        dumps_value(value, [])  # large buffers out of band: checked, never copied
    except Exception:
        return False
    return True


def _loaded_and_bound(tree: ast.AST) -> tuple[set[str], set[str]]:
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return loaded, bound


def check_picklable(captured: Mapping[str, Any]) -> None:
    """Raise SerializationError naming the first captured notebook variable that cannot be pickled."""
    try:
        dumps_value(dict(captured), [])
        return
    except Exception:  # find which one below; any pickling failure counts
        pass
    for var, value in captured.items():
        try:
            dumps_value(value, [])
        except Exception as e:
            raise SerializationError(
                f"cannot pickle notebook variable {var!r} ({type(value).__name__}) used by the cell: {e}"
            ) from None
