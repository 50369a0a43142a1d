"""The one place that picks the device and the fast path: CUDA (bf16 autocast, fused attention), MPS, or CPU.

Chapter 0 (introduction) explains how to run the course on CPU or GPU.
"""
from __future__ import annotations

import contextlib
import os
import random

import torch

ENV_VAR = "COMPANION_DEVICE"


def check_device(choice: torch.device | str) -> torch.device:
    """torch.device(choice), refused with a clear error when torch does not know the name or this machine
    does not have the device."""
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={choice!r} is not a device torch knows; expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(choice)!r} was asked for but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {str(choice)!r} was asked for but this machine has {torch.cuda.device_count()} CUDA device(s)")
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


def autocast(device: torch.device | str):
    """bf16 autocast on CUDA (where tensor cores want it); plain fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python and torch (all devices); return a CPU generator seeded the same."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a whole number >= 0")
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe(device: torch.device | str | None = None) -> str:
    """One line saying where the course runs, for the top of each notebook."""
    device = pick_device() if device is None else torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}), bf16 autocast, fused attention"
    return f"{device.type} (fp32), torch {torch.__version__.split('+')[0]}"
