"""The exercise generator: exercises/ is in sync with solutions/, and stubs are made as documented."""

import subprocess
import sys

import nbformat
import pytest

import make_exercises
from helpers import ROOT


def test_exercises_are_in_sync_with_solutions():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_exercises.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, f"exercises/ is out of date; run `make exercises`:\n{result.stderr}"


def test_every_solutions_notebook_has_an_exercise_and_a_stub():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
        sources = "\n".join(c.source for c in exercise.cells if c.cell_type == "code")
        assert "raise NotImplementedError" in sources
        assert "BEGIN SOLUTION" not in sources and "END SOLUTION" not in sources
        assert all(not c.get("outputs") for c in exercise.cells if c.cell_type == "code")


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def test_solution_block_becomes_a_stub_and_hints_stay():
    cell = nbformat.v4.new_code_cell(
        "def f(x):\n    # Hint: double it.\n    # BEGIN SOLUTION\n    y = 2 * x\n    return y\n    # END SOLUTION\n"
    )
    cell.outputs = [nbformat.v4.new_output("stream", text="old output")]
    out = make_exercises.make_exercise(_notebook(cell, nbformat.v4.new_code_cell("check_f(f)")), "nb").cells[
        1
    ]
    assert (
        out.source
        == f'def f(x):\n    # Hint: double it.\n    raise NotImplementedError("{make_exercises.STUB_MESSAGE}")'
    )
    assert out.outputs == [] and "raises-exception" not in out.metadata.get("tags", [])


def test_top_level_stub_is_tagged_to_raise():
    cell = nbformat.v4.new_code_cell("# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION\nprint(answer)")
    out = make_exercises.make_exercise(_notebook(cell), "nb").cells[1]
    assert "raises-exception" in out.metadata["tags"]


def test_answer_cells_become_prompts():
    code = nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION")
    check = nbformat.v4.new_code_cell("check_f(f)")
    answer = nbformat.v4.new_markdown_cell("The model answer.", metadata={"tags": ["answer"]})
    out = make_exercises.make_exercise(_notebook(code, check, answer), "nb").cells[3]
    assert out.source == make_exercises.ANSWER_PROMPT


@pytest.mark.parametrize(
    "source, message",
    [
        ("# BEGIN SOLUTION\nx = 1\n", "never closed"),
        ("x = 1\n# END SOLUTION\n", "without a BEGIN"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside another"),
    ],
)
def test_malformed_markers_are_reported(source, message):
    with pytest.raises(ValueError, match=message):
        make_exercises.make_exercise(_notebook(nbformat.v4.new_code_cell(source)), "nb")


def test_a_notebook_without_exercises_is_refused():
    with pytest.raises(ValueError, match="no '# BEGIN SOLUTION' block"):
        make_exercises.make_exercise(_notebook(nbformat.v4.new_code_cell("x = 1")), "nb")


def _exercise_cells(name="double", checker="check_double"):
    return [
        nbformat.v4.new_markdown_cell("# Exercises 9: Doubling\n\nIntro."),
        nbformat.v4.new_markdown_cell("## Exercise 1: twice the input"),
        nbformat.v4.new_code_cell(
            f"def {name}(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION"
        ),
        nbformat.v4.new_code_cell(f"{checker}({name})"),
        nbformat.v4.new_markdown_cell("## Question: why twice?"),
        nbformat.v4.new_markdown_cell("Because.", metadata={"tags": ["answer"]}),
    ]


def test_header_follows_the_title_and_lists_each_exercise_with_its_checker():
    out = make_exercises.make_exercise(_notebook(*_exercise_cells()), "solutions/09_double.ipynb")
    assert out.cells[0].source.startswith("# Exercises 9")
    header = out.cells[1]
    assert header.metadata["tags"] == [make_exercises.HEADER_TAG] and header.id == make_exercises.HEADER_TAG
    assert "pip install -e ." in header.source and "jupyter lab exercises/09_double.ipynb" in header.source
    rows = [line for line in header.source.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 1 | twice the input | `double` | `check_double(double)` |",
        "| 2 | why twice? | a written answer | compare with the solutions notebook |",
    ]


def test_an_exercise_without_a_checker_call_is_refused():
    cells = _exercise_cells()
    cells[3] = nbformat.v4.new_code_cell("print(double(2))")
    with pytest.raises(ValueError, match="no check_.* call for the exercise function.*double"):
        make_exercises.make_exercise(_notebook(*cells), "nb")


def test_a_checker_of_an_unknown_function_is_refused():
    with pytest.raises(ValueError, match=r"cell 3: check_double\(triple\) checks a function no exercise"):
        make_exercises.make_exercise(_notebook(*_exercise_cells(checker="check_double(triple) #")), "nb")


def test_every_exercise_notebook_opens_with_its_table():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        solution = nbformat.read(path, as_version=4)
        exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
        header = exercise.cells[1].source
        checks = {
            c
            for cell in solution.cells
            if cell.cell_type == "code"
            for c in make_exercises.CHECK_CALL.findall(cell.source)
        }
        assert checks and all(f"`{checker}({name})`" in header for checker, name in checks), path.name
