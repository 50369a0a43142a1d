"""What every exercise checker shares: calling the learner's code, comparing, and naming the mistake."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

_TORCH_DIR = Path(torch.__file__).resolve().parent


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how, and what to look at."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines instead of a traceback: the hint, first and alone. The checker's
        # own source is no help to a learner.
        return [f"\u2718 {self}"]


class NotYetImplemented(Exception):
    """The learner's function (or a function it calls) still raises NotImplementedError."""


class CheckResult:
    """What a checker returns: true when the answer passed. Shows nothing in a notebook, since the
    checker has already printed its verdict."""

    def __init__(self, passed: bool):
        self.ok = passed

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"CheckResult(passed={self.ok})"

    def _ipython_display_(self) -> None:
        pass


def _innermost_frame(error: BaseException):
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return None if tb is None else tb.tb_frame


class Checker:
    """Context for one checker: `with Checker("name") as c:` ... then c.passed tells the outcome."""

    def __init__(self, name: str):
        self.name = name
        self.passed = CheckResult(False)

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            self.passed = CheckResult(True)
            print(f"\u2714 {self.name}: passed")
            return False
        if kind is NotYetImplemented:
            print(f"\u2026 {self.name}: not implemented yet. {error}")
            return True  # swallow: a stub is not an error in an exercise notebook
        return False

    def call(self, fn: Callable, *args, **kwargs):
        """Call the learner's function. A stub's NotImplementedError becomes a quiet 'not yet', which
        names the stub when it is a helper that fn calls rather than fn itself."""
        if not callable(fn):
            raise TypeError(f"{self.name} takes your function, got {type(fn).__name__}")
        try:
            with torch.no_grad():
                return fn(*args, **kwargs)
        except NotImplementedError as error:
            frame = _innermost_frame(error)
            if frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(_TORCH_DIR):
                self.fail(f"torch raised NotImplementedError inside your code: {error}")
            caller = getattr(fn, "__name__", "your function")
            own_code = getattr(inspect.unwrap(fn), "__code__", None)
            if frame is None or frame.f_code is own_code or frame.f_code.co_name == caller:
                raise NotYetImplemented(str(error)) from None
            raise NotYetImplemented(
                f"{caller} calls {frame.f_code.co_name}(), which is still a stub (it raises "
                f"NotImplementedError): write {frame.f_code.co_name} first"
            ) from None

    @contextmanager
    def explain(self, errors: Mapping[str, str]) -> Iterator[None]:
        """Turn an error the learner's code raises into a hint, when its message holds one of errors' keys."""
        try:
            yield
        except (CheckFailed, NotYetImplemented):
            raise
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            for needle, hint in errors.items():
                if needle in str(error):
                    self.fail(f"{hint} (your code raised {type(error).__name__}: {message})")
            raise

    @contextmanager
    def forbid(self, modules: Mapping[torch.nn.Module, str]) -> Iterator[None]:
        """Fail with modules' hint when the learner runs one of these modules whole: the exercise is to
        build what it computes from its parts."""
        used: list[str] = []
        handles = [
            module.register_forward_pre_hook(lambda *_, hint=hint: used.append(hint))
            for module, hint in modules.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        if used:
            self.fail(used[0])

    def fail(self, message: str) -> None:
        raise CheckFailed(f"{self.name}: {message}")

    def expect_tensor(self, got, what: str = "your result") -> Tensor:
        if not isinstance(got, Tensor):
            self.fail(f"{what} should be a torch.Tensor, got {type(got).__name__}")
        return got

    def expect_shape(self, got: Tensor, shape: tuple, what: str = "your result", hint: str = "") -> None:
        self.expect_tensor(got, what)
        if tuple(got.shape) != tuple(shape):
            self.fail(f"{what} has shape {tuple(got.shape)}, expected {tuple(shape)}. {hint}".rstrip())

    def expect_dtype(
        self, got: Tensor, dtype: torch.dtype, what: str = "your result", hint: str = ""
    ) -> None:
        self.expect_tensor(got, what)
        if got.dtype != dtype:
            self.fail(f"{what} has dtype {got.dtype}, expected {dtype}. {hint}".rstrip())

    def expect_int(self, got, what: str = "your count") -> int:
        """A whole number: a Python int, a NumPy integer or a one-element integer tensor."""
        if isinstance(got, Tensor) and got.numel() == 1 and not got.dtype.is_floating_point:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            self.fail(f"{what} should be a whole number (int), got {type(got).__name__} {got!r}")
        return int(got)

    def expect_float(self, got, what: str = "your result") -> float:
        """A real number: a Python or NumPy float or int, or a one-element tensor."""
        if isinstance(got, Tensor):
            if got.numel() != 1:
                self.fail(f"{what} should be one number, got a tensor of shape {tuple(got.shape)}")
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            self.fail(f"{what} should be a number (float), got {type(got).__name__}")
        return float(got)

    def diagnose(
        self,
        got: Tensor,
        expected: Tensor,
        mistakes: Mapping[str, Tensor] | None = None,
        what: str = "your result",
        atol: float = 1e-5,
        rtol: float = 1e-4,
    ) -> None:
        """Pass if got == expected (equal infinities count as equal); else name the first known mistake
        it matches, else say how far off."""
        self.expect_shape(got, tuple(expected.shape), what)
        got = got.detach()
        if got.dtype != expected.dtype:
            right = torch.allclose(got.to(expected.dtype), expected, atol=atol, rtol=rtol)
            self.fail(
                f"{what} has dtype {got.dtype}, expected {expected.dtype}"
                + ("; its values are right, so only the dtype needs fixing" if right else "")
                + ". Keep the inputs' dtype: avoid .double(), .half() and tensors built without a dtype"
            )
        if torch.allclose(got, expected, atol=atol, rtol=rtol):
            return
        for hint, wrong in (mistakes or {}).items():
            wrong = wrong.to(got.dtype)
            if wrong.shape == got.shape and torch.allclose(got, wrong, atol=atol, rtol=rtol, equal_nan=True):
                self.fail(hint)
        if got.is_floating_point() and torch.isnan(got).any() and not torch.isnan(expected).any():
            self.fail(f"{what} contains NaN; look for a 0/0 or a softmax over a row that is all -inf")
        if got.is_floating_point():
            inf_got, inf_expected = torch.isinf(got), torch.isinf(expected)
            if (inf_expected & ~inf_got).any():
                at = tuple(int(i) for i in (inf_expected & ~inf_got).nonzero()[0])
                if (got[inf_expected & ~inf_got] * expected[inf_expected & ~inf_got] > 0).all() and (
                    got[inf_expected & ~inf_got].abs() >= 1e4
                ).all():
                    self.fail(
                        f"{what} is {got[at].item():.4g} at index {at}, where the reference has "
                        f"{expected[at].item()}: use float('-inf'), not a large finite number, so the "
                        "entry is exactly excluded whatever the other values are"
                    )
                self.fail(
                    f"{what} is {got[at].item():.4g} at index {at}, where the reference has "
                    f"{expected[at].item()}: a position that should be dropped or masked is kept"
                )
            if (inf_got & ~inf_expected).any():
                at = tuple(int(i) for i in (inf_got & ~inf_expected).nonzero()[0])
                self.fail(
                    f"{what} is {got[at].item()} at index {at}, where the reference has "
                    f"{expected[at].item():.4g}: a position that should be kept is masked or dropped"
                )
            same = (got == expected) | (torch.isnan(got) & torch.isnan(expected))
            diff = torch.where(same, torch.zeros_like(got), (got - expected).abs())
        else:
            diff = (got != expected).to(torch.float32)
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        self.fail(
            f"{what} differs from the reference: largest error {diff.max().item():.3g} at index {worst} "
            f"(got {got[worst].item():.4g}, expected {expected[worst].item():.4g})"
        )


def random_tensor(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomise_norms(module: torch.nn.Module, seed: int) -> None:
    """Give every LayerNorm in module a distinct weight and bias, so using the wrong norm (or none of
    its parameters) changes the output visibly; fresh norms are all weight 1, bias 0, all alike."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if type(sub).__name__ in ("LayerNorm", "RMSNorm"):
                sub.weight.copy_(1 + 0.5 * torch.randn(sub.weight.shape, generator=generator))
                if getattr(sub, "bias", None) is not None:
                    sub.bias.copy_(0.5 * torch.randn(sub.bias.shape, generator=generator))
