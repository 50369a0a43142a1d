"""What every checker promises: it accepts a right answer, reports a stub (and names a stubbed helper)
as not yet written, says when only the shape or the dtype is wrong, and shows a learner the hint alone."""

import numpy as np
import pytest
import torch

import companion.checks as checks
from companion.checks import CheckFailed
from reference_answers import ANSWERS, COUNT_RESULTS, TENSOR_RESULTS

CHECKERS = sorted(name for name in dir(checks) if name.startswith("check_"))


def test_every_checker_has_a_reference_answer():
    assert set(CHECKERS) == set(ANSWERS)
    assert set(TENSOR_RESULTS) | set(COUNT_RESULTS) <= set(ANSWERS)


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_accepts_the_reference_answer(name, capsys):
    assert getattr(checks, name)(ANSWERS[name])
    assert capsys.readouterr().out.strip() == f"\u2714 {name}: passed"


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_reports_a_stub_as_not_yet(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise: replace this line with your code")

    assert not getattr(checks, name)(stub)
    out = capsys.readouterr().out
    assert out.startswith(f"\u2026 {name}: not implemented yet") and "replace this line" in out


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_names_a_stubbed_helper(name, capsys):
    def earlier_exercise():
        raise NotImplementedError("exercise: replace this line with your code")

    def answer(*args, **kwargs):
        earlier_exercise()

    assert not getattr(checks, name)(answer)
    assert "answer calls earlier_exercise(), which is still a stub" in capsys.readouterr().out


def test_a_decorated_stub_is_reported_as_itself(capsys):
    @torch.no_grad()
    def attention_scores(q, k):
        raise NotImplementedError("exercise: replace this line with your code")

    assert not checks.check_attention_scores(attention_scores)
    assert "calls" not in capsys.readouterr().out


def test_not_implemented_inside_torch_is_an_error_not_a_stub():
    class NoForward(torch.nn.Module):
        pass

    with pytest.raises(CheckFailed, match="torch raised NotImplementedError"):
        checks.check_attention_scores(lambda q, k: NoForward()(q))


@pytest.mark.parametrize("name", TENSOR_RESULTS)
@pytest.mark.parametrize(
    "change, said",
    [
        (lambda t: t.unsqueeze(0), "shape"),
        (lambda t: t.half() if t.is_floating_point() else t.float(), "dtype"),
        (lambda t: t.double() if t.is_floating_point() else t.to(torch.uint8), "dtype"),
    ],
)
def test_checker_says_when_only_the_shape_or_dtype_is_wrong(name, change, said):
    right = ANSWERS[name]
    with pytest.raises(CheckFailed, match=said):
        getattr(checks, name)(lambda *args, **kwargs: change(right(*args, **kwargs)))


@pytest.mark.parametrize("name", COUNT_RESULTS)
@pytest.mark.parametrize("as_type", [np.int64, np.int32, lambda n: torch.tensor(n)])
def test_checker_accepts_a_count_of_any_integer_type(name, as_type):
    right = ANSWERS[name]
    assert getattr(checks, name)(lambda *args: as_type(right(*args)))


@pytest.mark.parametrize("name", COUNT_RESULTS)
def test_checker_rejects_a_count_that_is_not_a_whole_number(name):
    right = ANSWERS[name]
    with pytest.raises(CheckFailed, match="whole number"):
        getattr(checks, name)(lambda *args: float(right(*args)))


def test_a_failed_check_renders_as_its_hint_alone():
    with pytest.raises(CheckFailed) as info:
        checks.check_attention_scores(lambda q, k: q @ k.transpose(-1, -2))
    lines = info.value._render_traceback_()
    assert len(lines) == 1 and lines[0].startswith(
        "\u2718 check_attention_scores: your scores are not divided"
    )


def test_equal_infinities_are_equal_and_a_kept_position_is_named():
    logits = torch.tensor([[1.0, float("-inf"), 3.0]])
    c = checks._core.Checker("demo")
    c.diagnose(logits.clone(), logits)  # equal -inf entries: no error
    with pytest.raises(CheckFailed, match="should be dropped or masked is kept"):
        c.diagnose(torch.tensor([[1.0, 0.0, 3.0]]), logits)
    with pytest.raises(CheckFailed, match="largest error 0.5 at index \\(0, 0\\)"):
        c.diagnose(torch.tensor([[1.5, float("-inf"), 3.0]]), logits)


def test_a_notebook_shows_the_hint_alone(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        result = shell.run_cell(
            "from companion.checks import check_causal_mask\ncheck_causal_mask(lambda n: n)"
        )
    finally:
        InteractiveShell.clear_instance()
    assert not result.success
    assert (
        capsys.readouterr().out.strip()
        == "\u2718 check_causal_mask: your mask should be a torch.Tensor, got int"
    )
