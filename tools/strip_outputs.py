"""Clear what running a notebook leaves in it: outputs, execution counts, widget state, cell timings.

The pre-commit hook runs it on exercises/, which tools/make_exercises.py writes without outputs, so
an exercise notebook a contributor ran in Jupyter goes back to the generated file. solutions/ keeps
its outputs (nbval checks them against a fresh run), and a path there is refused.

    python tools/strip_outputs.py exercises/02_attention.ipynb ...   # exit 1 if it changed a file
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from make_exercises import render

KEEP_OUTPUTS = "solutions"  # the folder whose notebooks keep their stored outputs


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook with every code cell's outputs and count cleared (in place, and returned)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # per-cell timings some front ends record
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: strip_outputs.py NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    changed = []
    for name in argv:
        path = Path(name)
        if KEEP_OUTPUTS in path.resolve().parts:
            print(
                f"{name}: notebooks in {KEEP_OUTPUTS}/ keep their outputs (nbval checks them)",
                file=sys.stderr,
            )
            return 2
        before = path.read_text()
        after = render(strip(nbformat.reads(before, as_version=4)))
        if after != before:
            path.write_text(after)
            changed.append(name)
    for name in changed:
        print(f"stripped outputs from {name}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
