"""The pieces around attention: LayerNorm, RMSNorm, the feed-forward block, and the residual wrapper.

Chapter 4 (residual connections and LayerNorm) explains them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0, variance 1 (biased variance), then scale and shift.

    Equal to `torch.nn.LayerNorm(d_model)`; statistics are per token, never across the batch.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class RMSNorm(nn.Module):
    """Scale each token by its root mean square (no centring, no bias), as in Zhang and Sennrich 2019."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> d_ff -> d_model, the same weights at every position."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {tuple(ACTIVATIONS)}")
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)  # inside the block, after the activation

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(self.act(self.up(x))))


class Residual(nn.Module):
    """Wrap a sub-layer F with a residual connection and a norm.

    norm="pre":  x + dropout(F(LN(x)))   (GPT-2 and most modern models)
    norm="post": LN(x + dropout(F(x)))   (Vaswani et al. 2017, BERT)
    """

    def __init__(self, sublayer: nn.Module, d_model: int, norm: str = "pre", dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm={norm!r} is not 'pre' or 'post'")
        self.sublayer = sublayer
        self.norm = LayerNorm(d_model, eps)
        self.placement = norm
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.placement == "pre":
            return x + self.dropout(self.sublayer(self.norm(x), *args, **kwargs))
        return self.norm(x + self.dropout(self.sublayer(x, *args, **kwargs)))
