"""What every exercise checker shares: calling the learner's code, comparing, and naming the mistake."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how, and what to look at."""


class NotYetImplemented(Exception):
    """The learner's function still raises NotImplementedError."""


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


class Checker:
    """Context for one checker: `with Checker("name") as c:` ... then c.passed tells the outcome."""

    def __init__(self, name: str):
        self.name = name
        self.passed = CheckResult(False)

    def __enter__(self) -> "Checker":
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
        """Call the learner's function; a stub's NotImplementedError becomes a quiet 'not yet'."""
        if not callable(fn):
            raise TypeError(f"{self.name} takes your function, got {type(fn).__name__}")
        try:
            with torch.no_grad():
                return fn(*args, **kwargs)
        except NotImplementedError as e:
            raise NotYetImplemented(str(e)) from None

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

    def diagnose(
        self,
        got: Tensor,
        expected: Tensor,
        mistakes: Mapping[str, Tensor] | None = None,
        what: str = "your result",
        atol: float = 1e-5,
        rtol: float = 1e-4,
    ) -> None:
        """Pass if got == expected; else name the first known mistake it matches, else say how far off."""
        self.expect_shape(got, tuple(expected.shape), what)
        got = got.detach().to(expected.dtype)
        if torch.allclose(got, expected, atol=atol, rtol=rtol):
            return
        for hint, wrong in (mistakes or {}).items():
            if wrong.shape == got.shape and torch.allclose(got, wrong.to(got.dtype), atol=atol, rtol=rtol, equal_nan=True):
                self.fail(hint)
        if torch.isnan(got).any():
            self.fail(f"{what} contains NaN; look for a 0/0 or a softmax over a row that is all -inf")
        diff = (got - expected).abs()
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        self.fail(
            f"{what} differs from the reference: largest error {diff.max().item():.3g} at index {worst} "
            f"(got {got[worst].item():.4g}, expected {expected[worst].item():.4g})"
        )


def random_tensor(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
