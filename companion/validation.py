"""The checks every module runs on its arguments, with messages in one voice:

    <argument>=<what was given>: expected <what the argument must be>

so a learner who passes `layers=0` to any part of the library reads the same sentence. Each function
returns nothing and raises ValueError (a value out of range) or TypeError (a tensor of the wrong kind).
This module imports nothing from the rest of the companion, so every other module can use it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def fail(name: str, value, expected: str, error: type[Exception] = ValueError):
    """Raise `error` saying that argument `name` was given `value` and should have been `expected`."""
    raise error(f"{name}={value!r}: expected {expected}")


def expect(ok: bool, name: str, value, expected: str) -> None:
    """The one-off check: fail(name, value, expected) unless ok."""
    if not ok:
        fail(name, value, expected)


def is_whole(value) -> bool:
    """An int that is not a bool (True is an int to Python, never a size to the library)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole_number(name: str, value, minimum: int = 1, *, or_none: bool = False, note: str = "") -> None:
    """value is a whole number >= minimum (1: a size or a count; 0: an index, or 0 meaning "none")."""
    if or_none and value is None:
        return
    expected = f"a whole number >= {minimum}" + (" or None" if or_none else "")
    expect(is_whole(value) and value >= minimum, name, value, expected + (f" ({note})" if note else ""))


def sizes(**values) -> None:
    """Each keyword is a whole number >= 1: sizes(vocab_size=vocab_size, d_model=d_model)."""
    for name, value in values.items():
        whole_number(name, value)


def positive_number(name: str, value, note: str = "") -> None:
    """value is a finite number > 0 (a rate, an epsilon, a clipping norm)."""
    expected = "a positive finite number" + (f" ({note})" if note else "")
    expect(is_number(value) and value > 0, name, value, expected)


def fraction(name: str, value) -> None:
    """value is a number in [0, 1): a dropout or smoothing probability (1 would drop or smooth everything)."""
    expect(is_number(value) and 0.0 <= value < 1.0, name, value, "a number in [0, 1)")


def flag(name: str, value) -> None:
    """value is True or False (not 1, not "yes")."""
    expect(isinstance(value, bool), name, value, "True or False")


def one_of(name: str, value, options, note: str = "") -> None:
    """value is one of `options` (a tuple, or a dict whose keys are the options)."""
    options = tuple(options)
    expected = f"one of {options}" + (f"; {note}" if note else "")
    expect(isinstance(value, str) and value in options, name, value, expected)


def token_ids(name: str, ids, vocab_size: int, *, read_values: bool = True) -> None:
    """ids is an integer tensor (batch, seq), neither axis empty, every id in [0, vocab_size).

    read_values=False checks the kind and shape only: reading the ids back waits for an accelerator and
    breaks a compiled graph (the models pass `device.check_values()`)."""
    if not isinstance(ids, Tensor):
        raise TypeError(
            f"{name} is a {type(ids).__name__}: expected a torch.Tensor of integer token ids (torch.long)"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise TypeError(f"{name} has dtype {ids.dtype}: expected integer token ids (torch.long)")
    shape = tuple(ids.shape)
    if ids.dim() != 2:
        raise ValueError(f"{name} has shape {shape}: expected 2 dims (batch, seq)")
    if shape[0] == 0:
        raise ValueError(f"{name} has shape {shape}, an empty batch: expected at least one sequence")
    if shape[1] == 0:
        raise ValueError(f"{name} has shape {shape}, an empty sequence: expected at least one token")
    if not read_values:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} holds token ids in [{low}, {high}]: expected ids in the vocabulary [0, {vocab_size - 1}]"
        )
