"""Plain helpers that several test files share (fixtures live in conftest.py beside this file)."""

from __future__ import annotations

from pathlib import Path

import torch

from companion import TransformerConfig, build_model

ROOT = Path(__file__).resolve().parent.parent  # the repository
TOOLS = ROOT / "tools"  # the build scripts, importable by name in tests (conftest.py puts them on sys.path)


def random_ids(shape: tuple[int, ...], vocab: int, seed: int = 0, low: int = 0) -> torch.Tensor:
    """Token ids drawn uniformly from [low, vocab), the same for the same seed on every machine."""
    return torch.randint(low, vocab, shape, generator=torch.Generator().manual_seed(seed))


def small_model(kind: str = "decoder", seed: int = 0, **fields) -> torch.nn.Module:
    """build_model(TransformerConfig(kind=kind, **fields)) in eval mode, its weights drawn after seeding torch."""
    torch.manual_seed(seed)
    return build_model(TransformerConfig(kind=kind, **fields)).eval()
