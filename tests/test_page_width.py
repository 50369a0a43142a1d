"""Every code cell a page shows fits the site's content column, so nothing hides behind a sideways scroll.

The column shows about 88 characters of code. The chapters (`book/*.md`), the solutions and the
exercises are all pages of the site; their code lines, and the solutions' stored outputs, must fit.
A cell whose input or output the page removes (`remove-input`, `remove-cell`, `remove-output`) is not
shown and not checked. The browser test checks the built pages themselves; this test is the fast
one that names the file, the cell and the line.
"""

from __future__ import annotations

import nbformat
import pytest

from helpers import ROOT
from run_notebooks import read_notebook

WIDTH = 88
PAGES = sorted((ROOT / "book").glob("*.md"))
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "exercises").glob("*.ipynb"))
# Chapter 3's explorer cells (draw_sinusoids, sinusoid_explorer) are being rewritten on the
# `explorers` branch, which fits them; until it lands they are the page's only wide lines. Strict:
# once they fit, this marker fails the test, so it is removed with them.


def cases():
    for path in PAGES + NOTEBOOKS:
        yield pytest.param(path, id=f"{path.parent.name}/{path.name}")


def output_text(output: nbformat.NotebookNode) -> str:
    """What an output shows as text: a stream, or a result's plain-text form."""
    text = (
        output.get("text") if output.output_type == "stream" else output.get("data", {}).get("text/plain", "")
    )
    return "".join(text) if isinstance(text, list) else (text or "")


def too_wide(nb: nbformat.NotebookNode, *, outputs: bool, width: int = WIDTH) -> list[str]:
    """One line per code or output line longer than `width`: cell number, line number, length, start."""
    found = []
    for number, cell in enumerate(nb.cells, 1):
        if cell.cell_type != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if not tags & {"remove-input", "remove-cell"}:
            for line_no, line in enumerate(cell.source.splitlines(), 1):
                if len(line) > width:
                    found.append(f"cell {number}, line {line_no}: {len(line)} characters: {line[:60]}...")
        if outputs and not tags & {"remove-output", "remove-cell"}:
            for output in cell.get("outputs", []):
                for line_no, line in enumerate(output_text(output).splitlines(), 1):
                    if len(line) > width:
                        found.append(
                            f"cell {number}, output line {line_no}: {len(line)} characters: {line[:60]}..."
                        )
    return found


@pytest.mark.parametrize("path", list(cases()))
def test_code_fits_the_page(path):
    wide = too_wide(read_notebook(path), outputs=path.parent.name == "solutions")
    assert not wide, f"{path.relative_to(ROOT)} has lines over {WIDTH} characters:\n" + "\n".join(wide)


def test_too_wide_names_the_cell_and_line_and_skips_what_is_not_shown():
    nb = nbformat.v4.new_notebook()
    shown = nbformat.v4.new_code_cell("x = 1\n" + "y = " + "1 + " * 30 + "1")
    shown.outputs = [nbformat.v4.new_output("stream", text="ok\n" + "z" * 90 + "\n")]
    hidden = nbformat.v4.new_code_cell("w = " + "2 + " * 30 + "2", metadata={"tags": ["remove-input"]})
    nb.cells = [nbformat.v4.new_markdown_cell("m" * 200), shown, hidden]
    assert [w.split(":")[0] for w in too_wide(nb, outputs=True)] == [
        "cell 2, line 2",
        "cell 2, output line 2",
    ]
    assert [w.split(":")[0] for w in too_wide(nb, outputs=False)] == ["cell 2, line 2"]


def test_a_page_is_read_without_its_cell_options():
    page = ROOT / "book" / "02_attention.md"
    first_code = next(c for c in read_notebook(page).cells if c.cell_type == "code")
    assert not first_code.source.startswith((":tags:", "---"))
