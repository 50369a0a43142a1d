"""Execute notebooks in place (each in its own folder), so their stored outputs are the ones nbval checks.

    python tools/run_notebooks.py solutions/02_attention.ipynb [...]

A notebook that fails is left untouched on disk, and the error is printed.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)
    return elapsed


def main(paths: list[str]) -> int:
    failed = 0
    for name in paths:
        path = Path(name)
        try:
            print(f"{path}: executed in {run(path):.1f} s", flush=True)
        except Exception as error:  # report and go on to the next notebook
            failed += 1
            print(f"{path}: FAILED\n{error}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
