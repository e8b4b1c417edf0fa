#!/usr/bin/env python3
"""Strip outputs from notebooks before they are committed: outputs, execution counts, run metadata.

    python tools/strip_outputs.py                 # every notebooks/*.ipynb, in place
    python tools/strip_outputs.py --check [NB..]  # exit 1 and name those not stripped (tests run this)

Kept: sources, cell ids, cell tags (e.g. `raises-exception`), the kernelspec. The file is written
the way Jupyter writes it (one-space indent, sorted keys), so a stripped notebook is unchanged.
Plain standard library: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KEPT_CELL_METADATA = ("tags",)
KEPT_NOTEBOOK_METADATA = ("kernelspec",)


def stripped(nb: dict[str, Any]) -> dict[str, Any]:
    """A copy of notebook `nb` without outputs, counts and metadata a run adds."""
    nb = json.loads(json.dumps(nb))
    for cell in nb.get("cells", []):
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in KEPT_CELL_METADATA}
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        elif not cell.get("attachments"):
            cell.pop("attachments", None)
    metadata = {k: v for k, v in nb.get("metadata", {}).items() if k in KEPT_NOTEBOOK_METADATA}
    metadata["language_info"] = {"name": nb.get("metadata", {}).get("language_info", {}).get("name", "python")}
    nb["metadata"] = metadata
    return nb


def dumps(nb: dict[str, Any]) -> str:
    """The notebook as nbformat writes it."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not stripped")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    dirty = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        clean = dumps(stripped(json.loads(text)))
        if clean == text:
            continue
        dirty.append(path)
        if not args.check:
            path.write_text(clean, encoding="utf-8")
    for path in dirty:
        print(f"{'not stripped' if args.check else 'stripped'}: {path}")
    return 1 if dirty and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
