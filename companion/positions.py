"""Positional information: sinusoidal and learned encodings, and rotary embeddings (RoPE).

Chapter 3 (embeddings and positional encodings) explains them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from .device import check_values
from .validation import expect, is_number, whole_number


def _check_positions(positions: Tensor, context_length: int, who: str) -> None:
    """Positions index a table of `context_length` rows; say so clearly when they fall outside it."""
    if (
        not isinstance(positions, Tensor)
        or positions.dtype.is_floating_point
        or positions.dtype == torch.bool
    ):
        raise TypeError(f"{who}: positions must be a tensor of integer positions, got {positions!r:.80}")
    # On an accelerator the range check would stall every call on a device sync, and compiled code
    # cannot read values without a graph break; the models already check their ids against
    # context_length, and an index error still surfaces there.
    if positions.device.type != "cpu" or not positions.numel() or not check_values():
        return
    if int(positions.min()) < 0 or int(positions.max()) >= context_length:
        raise ValueError(
            f"{who}: positions run from {int(positions.min())} to {int(positions.max())} but the table holds "
            f"positions 0..{context_length - 1}; build it with a larger context_length"
        )


def inverse_frequencies(width: int, base: float = 10000.0) -> Tensor:
    """(width / 2,) angular frequencies base^(-2i / width), i = 0 .. width/2 - 1: pair i turns this much per position.

    Pair 0 turns one radian per position (wavelength 2 pi); the last pair is slowest, with a
    wavelength just under 2 pi * base. Sinusoidal encodings use width = d_model, RoPE width = d_head.
    """
    whole_number("width", width)
    expect(width % 2 == 0, "width", width, "an even number: features come in (sin, cos) or rotated pairs")
    expect(
        is_number(base) and base > 1.0,
        "base",
        base,
        "a number greater than 1, so that frequencies fall from pair to pair",
    )
    return base ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)


def sinusoidal_table(positions: int, d_model: int, base: float = 10000.0) -> Tensor:
    """(positions, d_model) table of Vaswani et al. 2017:

    PE[pos, 2i] = sin(pos / base^(2i/d_model)),  PE[pos, 2i+1] = cos(pos / base^(2i/d_model)).
    """
    whole_number("positions", positions)
    whole_number("d_model", d_model)
    expect(d_model % 2 == 0, "d_model", d_model, "an even number: sine and cosine come in pairs")
    # float64 angles, so that positions in the thousands keep their phase before rounding to float32.
    angles = (
        torch.arange(positions, dtype=torch.float64)[:, None] * inverse_frequencies(d_model, base)[None, :]
    )
    table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (seq, d_model / 2, 2)
    return rearrange(table, "seq half two -> seq (half two)").float()


def offset_rotation(offset: int, d_model: int, base: float = 10000.0) -> Tensor:
    """(d_model, d_model) matrix M with PE[pos + offset] = PE[pos] @ M for every pos.

    Block-diagonal: pair i's (sin, cos) turns by offset * base^(-2i/d_model). M does not depend
    on pos, which is why Vaswani et al. 2017 expected the model to attend by relative position.
    """
    whole_number("d_model", d_model)
    angle = offset * inverse_frequencies(d_model, base)
    cos, sin = angle.cos(), angle.sin()
    blocks = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (half, 2, 2)
    return torch.block_diag(*blocks).float()


class SinusoidalPositions(nn.Module):
    """Adds no parameters: a fixed table, looked up by position."""

    def __init__(self, context_length: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.context_length = context_length
        self.register_buffer("table", sinusoidal_table(context_length, d_model, base), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        _check_positions(positions, self.context_length, "SinusoidalPositions")
        return self.table[positions]


class LearnedPositions(nn.Module):
    """One trained vector per position, as in BERT and GPT-2: nothing exists past context_length."""

    def __init__(self, context_length: int, d_model: int):
        super().__init__()
        self.context_length = context_length
        self.embedding = nn.Embedding(context_length, d_model)

    def forward(self, positions: Tensor) -> Tensor:
        _check_positions(positions, self.context_length, "LearnedPositions")
        return self.embedding(positions)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each adjacent feature pair (x[2i], x[2i+1]) by an angle whose cos/sin are given.

    x: (..., seq, d_head); cos, sin: (seq, d_head / 2).
    """
    pairs = rearrange(x, "... seq (half two) -> ... seq half two", two=2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rearrange(rotated, "... seq half two -> ... seq (half two)")


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate queries and keys by position-dependent angles.

    Pair i of a vector at position m turns by m * base^(-2i/d_head), so q_m . k_n depends
    on m - n only: relative position through the dot product.
    """

    def __init__(self, d_head: int, context_length: int, base: float = 10000.0):
        super().__init__()
        whole_number("d_head", d_head)
        expect(d_head % 2 == 0, "d_head", d_head, "an even number: RoPE rotates pairs of features")
        whole_number("context_length", context_length)
        self.d_head, self.context_length = d_head, context_length
        angles = (
            torch.arange(context_length, dtype=torch.float64)[:, None]
            * inverse_frequencies(d_head, base)[None, :]
        )
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: (batch, heads, seq, d_head); positions: (seq,) absolute positions, default 0..seq-1."""
        if x.shape[-1] != self.d_head:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., seq, d_head={self.d_head})")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        _check_positions(positions, self.context_length, "RotaryEmbedding")
        if positions.shape != (x.shape[-2],):
            raise ValueError(
                f"positions has shape {tuple(positions.shape)}; expected one per position of x: ({x.shape[-2]},)"
            )
        cos, sin = self.cos[positions], self.sin[positions]
        return rotate_pairs(x.float(), cos, sin).to(x.dtype)


def equivariance_gap(layer: Callable[[Tensor], Tensor], x: Tensor, perm: Tensor) -> float:
    """Largest |layer(x permuted) - layer(x) permuted| over (batch, seq, d_model) inputs.

    Zero (up to rounding) when reordering the positions of the input reorders the output the
    same way: self-attention without positions. Positional information makes it non-zero.
    """
    if x.dim() != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, seq, d_model)")
    if sorted(perm.tolist()) != list(range(x.shape[1])):
        raise ValueError(
            f"perm must be a permutation of 0..{x.shape[1] - 1} (the seq axis of x), got {perm.tolist()}"
        )
    with torch.no_grad():
        return (layer(x[:, perm]) - layer(x)[:, perm]).abs().max().item()
