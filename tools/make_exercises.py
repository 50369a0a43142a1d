"""Write exercises/NN_topic.ipynb from solutions/NN_topic.ipynb, the single source of every exercise.

In a code cell, the lines between `# BEGIN SOLUTION` and `# END SOLUTION` become
`raise NotImplementedError(...)` at the same indentation; comments above them (the hints) stay.
A stub at top level (not inside a function) is tagged `raises-exception` so nbval accepts the raise.
A markdown cell tagged `answer` becomes a prompt to write one's own answer.
Outputs and execution counts are cleared.
After the title cell comes a generated header: how to open the notebook, and a table of its
exercises (the heading above each, the function to write, the `check_*` call under it) and written
questions, read from the solutions notebook so it cannot fall out of step with it.

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
STUB_MESSAGE = "exercise: write your code here (see the hint above)"
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


HEADING = re.compile(r"^#+\s+(?P<title>.+?)\s*$", re.M)
DEF = re.compile(r"^def (?P<name>\w+)\(", re.M)
CHECK_CALL = re.compile(r"^(?P<checker>check_\w+)\((?P<name>\w+)\b", re.M)
NUMBERED = re.compile(r"^(Exercise \d+(?: \(written\))?|Question)\s*:\s*", re.I)
HEADER_TAG = "exercise-header"


def exercise_table(solution: nbformat.NotebookNode, where: str) -> list[tuple[str, str, str]]:
    """(title, what to write, how it is checked) for each exercise and written question, in order.

    An exercise is a function whose body is a solution block, checked by a later `check_*(name)`
    cell; a written question is a markdown cell tagged `answer`. A function with a solution block
    and no checker call is an error, so the table lists every exercise the notebook has.
    """
    rows: list[tuple[str, str, str]] = []
    pending: dict[str, str] = {}  # function -> the heading it sits under, until its checker is seen
    title = ""
    for index, cell in enumerate(solution.cells):
        if cell.cell_type == "markdown":
            if "answer" in cell.get("metadata", {}).get("tags", []):
                rows.append((title, "a written answer", "compare with the solutions notebook"))
            else:
                headings = HEADING.findall(cell.source)
                title = NUMBERED.sub("", headings[-1]) if headings else title
            continue
        if cell.cell_type != "code":
            continue
        if re.search(r"^\s*# BEGIN SOLUTION\s*$", cell.source, re.M):
            for name in DEF.findall(cell.source):
                pending[name] = title
        for checker, name in CHECK_CALL.findall(cell.source):
            if name not in pending:
                raise ValueError(
                    f"{where}, cell {index}: {checker}({name}) checks a function no exercise defines"
                )
            rows.append((pending.pop(name), f"`{name}`", f"`{checker}({name})`"))
    if pending:
        missing = ", ".join(sorted(pending))
        raise ValueError(f"{where}: no check_*(...) call for the exercise function(s) {missing}")
    return rows


def header_source(name: str, rows: list[tuple[str, str, str]]) -> str:
    """The markdown cell that opens an exercise notebook: how to open it, then what it asks."""
    lines = [
        "## How to open this notebook",
        "",
        "Run it where the `companion` library is installed, since the exercises import it and the",
        "checkers compare your code with it:",
        "",
        "- **Jupyter on your computer.** Clone the course repository; in its folder run",
        "  `pip install -e . jupyterlab` (in a virtual environment; `make venv` makes one), then",
        f"  `jupyter lab exercises/{name}` (or open the file in VS Code).",
        "- **A notebook service** (JupyterHub, Colab, Kaggle, Binder). Put a copy of the repository",
        "  there (clone it, or upload its folder), and in a first cell run",
        "  `%pip install -e <the repository's folder>`; then open this notebook.",
        "",
        "Write each function's body where it says `raise NotImplementedError`, then run the",
        "checker cell under it: it prints what passed or names the likely mistake. Everything runs",
        "on a laptop CPU.",
        "",
        "| | exercise | you write | checked by |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {title} | {what} | {check} |" for n, (title, what, check) in enumerate(rows, 1)]
    return "\n".join(lines)


def make_exercise(solution: nbformat.NotebookNode, where: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(solution)
    rows = exercise_table(solution, where)
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
    header = nbformat.v4.new_markdown_cell(
        header_source(Path(where).name, rows), metadata={"tags": [HEADER_TAG]}
    )
    header["id"] = HEADER_TAG  # a fixed id, so the generated notebook is the same on every run
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0  # after the title
    nb.cells.insert(at, header)
    nb.metadata.pop("widgets", None)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; fail if exercises/ is out of date"
    )
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="solutions notebooks to convert (default: all)"
    )
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
    extra = (
        []
        if args.notebooks
        else sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb") if p.name not in expected_names)
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
