"""The one place that picks the device and the fast path: CUDA (bf16 autocast, fused attention), MPS, or CPU.

Chapter 0 (introduction) explains how to run the course on CPU or GPU.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading

import torch

from .validation import whole_number

ENV_VAR = "COMPANION_DEVICE"


def check_device(choice: torch.device | str) -> torch.device:
    """torch.device(choice), refused with a clear error when torch does not know the name or this machine
    does not have the device."""
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device={choice!r} is not a device torch knows; expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(choice)!r} was asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {str(choice)!r} was asked for but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {str(choice)!r} was asked for but MPS is not available on this machine")
    return device


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda > mps > cpu, unless `prefer` (or the COMPANION_DEVICE environment variable) names one."""
    choice = prefer or os.environ.get(ENV_VAR)
    if choice:
        return check_device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device | str, dtype: torch.dtype | None = None):
    """bf16 autocast on CUDA (where tensor cores want it); plain fp32 elsewhere.

    dtype overrides the choice: torch.bfloat16 on the CPU runs the same mixed-precision path as a GPU
    (slower there, but it tests the GPU's code path on any machine); torch.float32 turns autocast off.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"autocast dtype={dtype} must be torch.bfloat16, torch.float16 or torch.float32 (off)"
        )
    return torch.autocast(device.type, dtype=dtype)


def compute_dtype(device: torch.device | str, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype matrix products give here and now: autocast's when it is on for `device`, else `default`.
    Key/value caches are made in it, so a bf16 run keeps bf16 keys (half the memory)."""
    device_type = torch.device(device).type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return default


# ---------------------------------------------------------------- checks that read tensor values


class ThreadSwitch:
    """A switch that is on inside `with switch:` blocks, in the thread that entered them only.

    Blocks nest (the switch is on until the outermost one exits) and are undone on exit, like
    `torch.no_grad()`. `attention.no_dropout()` and `values_trusted()` below hand out such switches.
    A plain class rather than a generator: decoding enters two of them at every step.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    def __enter__(self) -> None:
        self._local.depth = getattr(self._local, "depth", 0) + 1

    def __exit__(self, *exc) -> None:
        self._local.depth -= 1


_trusted = ThreadSwitch()


def values_trusted() -> ThreadSwitch:
    """`with values_trusted():` skips, within the block and in this thread only, checks that read a
    tensor's values.

    Reading a value (`int(ids.max())`) copies it to the host: on a GPU that waits for every queued
    kernel, and under `torch.compile` it breaks the graph. `generate` feeds the model tokens it picked
    itself, always inside the vocabulary, so it decodes inside this block: no sync per step. Shape
    checks still run; they read no values.
    """
    return _trusted


def check_values() -> bool:
    """True when a check may read tensor values: eager mode (not being compiled) outside `values_trusted()`.

    Compiled code skips them (they would break the graph, and a compiled model is a checked one in
    production); call the model once eagerly to get the clear error for bad input.
    """
    return not torch.compiler.is_compiling() and not _trusted.on


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python and torch (all devices); return a CPU generator seeded the same."""
    whole_number("seed", seed, 0)
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe(device: torch.device | str | None = None) -> str:
    """One line saying where the course runs, for the top of each notebook."""
    device = pick_device() if device is None else torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}), bf16 autocast, fused attention"
    return f"{device.type} (fp32), torch {torch.__version__.split('+')[0]}"
