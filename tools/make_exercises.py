"""Write exercises/NN_topic.ipynb from solutions/NN_topic.ipynb, the single source of every exercise.

In a code cell, the lines between `# BEGIN SOLUTION` and `# END SOLUTION` become
`raise NotImplementedError(...)` at the same indentation; comments above them (the hints) stay.
A stub at top level (not inside a function) is tagged `raises-exception` so nbval accepts the raise.
A markdown cell tagged `answer` becomes a prompt to write one's own answer.
Outputs and execution counts are cleared.

    python tools/make_exercises.py                                # write every exercises/ notebook
    python tools/make_exercises.py solutions/02_attention.ipynb   # only this one
    python tools/make_exercises.py --check                        # exit 1 if exercises/ is out of date
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
STUB_MESSAGE = "exercise: replace this line with your code (see the hint above)"
ANSWER_PROMPT = "**Your answer:** *(write it here, then compare with the solutions notebook)*"


def stub_source(source: str, where: str) -> tuple[str, bool]:
    """Return the cell source with solution blocks stubbed, and whether a stub sits at top level."""
    out: list[str] = []
    inside = False
    top_level = False
    for number, line in enumerate(source.splitlines(), 1):
        begin = BEGIN.match(line)
        if begin:
            if inside:
                raise ValueError(f"{where}, line {number}: BEGIN SOLUTION inside another solution block")
            inside = True
            indent = begin.group("indent")
            top_level = top_level or indent == ""
            out.append(f'{indent}raise NotImplementedError("{STUB_MESSAGE}")')
        elif END.match(line):
            if not inside:
                raise ValueError(f"{where}, line {number}: END SOLUTION without a BEGIN SOLUTION")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "\n".join(out), top_level


def make_exercise(solution: nbformat.NotebookNode, where: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(solution)
    stubs = 0
    for index, cell in enumerate(nb.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if cell.cell_type == "code":
            source, top_level = stub_source(cell.source, f"{where}, cell {index}")
            stubs += source != cell.source
            cell.source = source
            cell.outputs = []
            cell.execution_count = None
            if top_level and "raises-exception" not in tags:
                tags.append("raises-exception")
        elif cell.cell_type == "markdown" and "answer" in tags:
            cell.source = ANSWER_PROMPT
        cell.metadata.pop("execution", None)
        if tags:
            cell.metadata["tags"] = tags
    if stubs == 0:
        raise ValueError(f"{where} has no '# BEGIN SOLUTION' block: nothing for a learner to write")
    nb.metadata.pop("widgets", None)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; fail if exercises/ is out of date")
    parser.add_argument("notebooks", nargs="*", type=Path, help="solutions notebooks to convert (default: all)")
    args = parser.parse_args(argv)
    every = sorted((ROOT / "solutions").glob("*.ipynb"))
    solutions = [p.resolve() for p in args.notebooks] or every
    for path in solutions:
        if path.parent != ROOT / "solutions" or not path.exists():
            print(f"{path} is not a notebook in solutions/", file=sys.stderr)
            return 1
    if not solutions:
        print("no notebooks in solutions/", file=sys.stderr)
        return 1
    stale: list[str] = []
    expected_names = set()
    for path in solutions:
        target = ROOT / "exercises" / path.name
        expected_names.add(path.name)
        text = render(make_exercise(nbformat.read(path, as_version=4), str(path.relative_to(ROOT))))
        if target.exists() and target.read_text() == text:
            continue
        if args.check:
            stale.append(str(target.relative_to(ROOT)))
        else:
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_suffix(".ipynb.tmp")
            tmp.write_text(text)
            tmp.replace(target)  # atomic: a failed run never leaves half a notebook
            print(f"wrote {target.relative_to(ROOT)}")
    extra = [] if args.notebooks else sorted(
        p.name for p in (ROOT / "exercises").glob("*.ipynb") if p.name not in expected_names
    )
    if args.check and (stale or extra):
        for name in stale:
            print(f"out of date: {name} (run `make exercises`)", file=sys.stderr)
        for name in extra:
            print(f"exercises/{name} has no solutions/{name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
