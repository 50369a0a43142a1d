"""Prove that a run wrote nothing into the source tree.

    python tools/tree_guard.py snapshot   # before: remember every changed, untracked or ignored file
    python tools/tree_guard.py check      # after: fail, naming them, if any file was added, changed or removed

`make test` brackets the whole suite with these two calls. Files git tracks but the developer has
changed, untracked files and ignored ones all count (a stray `x` or `model.pt` is caught, even
though `*.pt` is ignored); only the places a run is meant to write are left out: the virtual
environment, `_build/`, Python's bytecode caches and pytest's cache.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {".venv", "_build", ".pytest_cache", "companion.egg-info", "__pycache__", ".ipynb_checkpoints"}


def state(root: Path = ROOT) -> dict[str, str]:
    """{path: content hash} of every file that differs from the last commit, is untracked or ignored."""
    out = subprocess.run(
        ["git", "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching"],
        cwd=root,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode()
    files: dict[str, str] = {}
    entries = out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":  # a rename is followed by its old name
            i += 1
        if ALLOWED & set(Path(path).parts):
            continue
        file = root / path
        files[path] = f"{status} " + (hashlib.sha1(file.read_bytes()).hexdigest() if file.is_file() else "-")
    return files


def main(argv: list[str], root: Path = ROOT) -> int:
    snapshot = root / "_build" / "tree-snapshot.json"
    if argv not in (["snapshot"], ["check"]):
        print(f"usage: tree_guard.py snapshot|check (got {' '.join(argv) or 'nothing'})", file=sys.stderr)
        return 2
    if argv == ["snapshot"]:
        snapshot.parent.mkdir(exist_ok=True)
        snapshot.write_text(json.dumps(state(root), indent=1))
        return 0
    if not snapshot.exists():
        print(
            f"tree_guard.py: no snapshot at {snapshot}; run `tree_guard.py snapshot` before the run",
            file=sys.stderr,
        )
        return 2
    before, after = json.loads(snapshot.read_text()), state(root)

    def what(status: str) -> str:
        return {"??": "added", "!!": "added", " D": "removed", "D ": "removed"}.get(status[:2], "changed")

    changes = [f"  {what(after[p]) + ':':8} {p}" for p in sorted(after.keys() - before.keys())]
    changes += [
        f"  {'changed:' if (root / p).exists() else 'removed:':8} {p}"
        for p in sorted(before.keys() - after.keys())
    ]
    changes += [
        f"  {what(after[p]) + ':':8} {p}"
        for p in sorted(before.keys() & after.keys())
        if before[p] != after[p]
    ]
    if changes:
        print(
            "The run wrote into the source tree (it may write only to .venv/ and _build/):",
            *changes,
            sep="\n",
            file=sys.stderr,
        )
        return 1
    print(
        f"The source tree is as it was before the run ({len(after)} changed or untracked files, none touched)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
