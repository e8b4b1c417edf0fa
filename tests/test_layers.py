"""The architecture as rules a tool checks: import-linter's contracts in pyproject.toml (docs/DESIGN.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """Run `lint-imports` on `project` (a folder holding pyproject.toml and naq_ipy/)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=project, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)})


def test_contracts_are_kept() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("rules/times.py", "import naq_ipy.wire.settings", "Pure rules import nothing"),
    ("worker/runner.py", "import naq_ipy.cli.main", "Nothing below the face"),
    ("status/waiting.py", "import IPython", "Nothing below the face"),
    ("wire/connection.py", "import naq_ipy.client.queue", "Layers point one way"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "naq_ipy", tmp_path / "naq_ipy", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "naq_ipy" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout


def test_the_package_root_holds_few_modules() -> None:
    modules = sorted(path.name for path in (ROOT / "naq_ipy").glob("*.py"))
    assert len(modules) <= 15, modules


def import_graph(*, inside_functions: bool) -> dict[str, set[str]]:
    """naq_ipy's import graph (grimp), `if TYPE_CHECKING:` imports left out; imports inside functions
    only with `inside_functions` (an import statement on an indented line)."""
    import grimp

    graph = grimp.build_graph("naq_ipy", exclude_type_checking_imports=True)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        source = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        lines = (source if source.exists() else source.with_suffix("") / "__init__.py").read_text().splitlines()
        edges[module] = {
            imported for imported in graph.find_modules_directly_imported_by(module)
            if inside_functions or any(not lines[d["line_number"] - 1].startswith((" ", "\t"))
                                       for d in graph.get_import_details(importer=module, imported=imported))
        }
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_level_import_cycle() -> None:
    assert cycles(import_graph(inside_functions=False)) == []


def test_imports_inside_functions_close_only_the_known_cycle() -> None:
    """`Job.cancel` imports `status.cancel`, which needs the schedule store and so `Job`: the one cycle
    an import inside a function closes; a new one must be a decision, not an accident."""
    assert cycles(import_graph(inside_functions=True)) == [sorted([
        "naq_ipy.client.job", "naq_ipy.schedules.changes", "naq_ipy.schedules.record", "naq_ipy.schedules.store",
        "naq_ipy.status.cancel", "naq_ipy.status.queued"])]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
