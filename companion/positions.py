"""Positional information: sinusoidal and learned encodings, and rotary embeddings (RoPE).

Chapter 3 (embeddings and positional encodings) explains them.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn


def sinusoidal_table(positions: int, d_model: int, base: float = 10000.0) -> Tensor:
    """(positions, d_model) table of Vaswani et al. 2017:

    PE[pos, 2i] = sin(pos / base^(2i/d_model)),  PE[pos, 2i+1] = cos(pos / base^(2i/d_model)).
    """
    if d_model % 2 != 0:
        raise ValueError(f"d_model={d_model} must be even: sine and cosine come in pairs")
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = pos * inv_freq[None, :]  # (positions, d_model / 2)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (positions, d_model/2, 2)
    return rearrange(table, "seq half two -> seq (half two)")


class SinusoidalPositions(nn.Module):
    """Adds no parameters: a fixed table, looked up by position."""

    def __init__(self, context_length: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(context_length, d_model, base), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]


class LearnedPositions(nn.Module):
    """One trained vector per position, as in BERT and GPT-2."""

    def __init__(self, context_length: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(context_length, d_model)

    def forward(self, positions: Tensor) -> Tensor:
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
        if d_head % 2 != 0:
            raise ValueError(f"d_head={d_head} must be even: RoPE rotates pairs of features")
        inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
        angles = torch.arange(context_length, dtype=torch.float32)[:, None] * inv_freq[None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: (batch, heads, seq, d_head); positions: (seq,) absolute positions, default 0..seq-1."""
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        cos, sin = self.cos[positions], self.sin[positions]
        return rotate_pairs(x.float(), cos, sin).to(x.dtype)
