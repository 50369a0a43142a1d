"""Scaled dot-product attention, masks, and multi-head self- and cross-attention.

Chapter 2 (attention) explains it. Two paths compute the same thing: a readable einops
version that the chapter teaches, and the fused `F.scaled_dot_product_attention`.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn


def causal_mask(q_len: int, k_len: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean (q_pos, k_pos) mask, True where a query may look.

    Query i sits at absolute position k_len - q_len + i (the queries are the last q_len
    positions, as when decoding with a cache), and may look at keys up to that position.
    """
    k_len = q_len if k_len is None else k_len
    if q_len > k_len:
        raise ValueError(f"causal_mask got q_len={q_len} > k_len={k_len}; queries must be the last k_len positions or fewer")
    q_abs = torch.arange(k_len - q_len, k_len, device=device)
    return q_abs[:, None] >= torch.arange(k_len, device=device)[None, :]


def sliding_window_mask(q_len: int, window: int, k_len: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Causal mask that also hides keys more than `window - 1` positions back (local attention)."""
    if window < 1:
        raise ValueError(f"window={window} must be at least 1 (a query always sees itself)")
    k_len = q_len if k_len is None else k_len
    mask = causal_mask(q_len, k_len, device)
    q_abs = torch.arange(k_len - q_len, k_len, device=device)
    return mask & (q_abs[:, None] - torch.arange(k_len, device=device)[None, :] < window)


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(batch, 1, 1, k_pos) mask, True at real tokens: every query may look at every non-pad key."""
    return rearrange(ids != pad_id, "batch k_pos -> batch 1 1 k_pos")


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected 4 dims (batch, heads, seq, d_head)")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"q, k, v disagree on (batch, heads): {tuple(q.shape[:2])}, {tuple(k.shape[:2])}, {tuple(v.shape[:2])}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has d_head={q.shape[-1]} but k has d_head={k.shape[-1]}; queries and keys must have the same width")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k has {k.shape[2]} positions but v has {v.shape[2]}; every key needs a value")
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(f"mask has dtype {mask.dtype}; expected torch.bool with True where a query may attend")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, which does not broadcast to (batch, heads, q_pos, k_pos) = {target}"
        ) from None


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    fused: bool = True,
    dropout_p: float = 0.0,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_head)) v over (batch, heads, seq, d_head) tensors.

    mask: boolean, True where a query may attend, broadcastable to (batch, heads, q_pos, k_pos).
    causal: also hide keys after each query (bottom-right aligned, so it works with a cache).
    fused: use torch's fused kernel (flash / memory-efficient on GPU); False runs the einops path.
    A query row with nothing to attend to (all keys masked) returns zeros on both paths.
    return_weights: also return the (batch, heads, q_pos, k_pos) attention weights (einops path).
    """
    _check_qkv(q, k, v, mask)
    q_len, k_len = q.shape[2], k.shape[2]
    if causal and q_len == 1:
        causal = False  # one query, placed after every key (decoding with a cache), may see them all
    if causal:
        cm = causal_mask(q_len, k_len, q.device)
        mask = cm if mask is None else mask & cm
    if fused and not return_weights:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        if causal and mask is cm and q_len == k_len:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)

    scores = einsum(q, k, "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos")
    # Dividing by sqrt(d_head) keeps the scores' variance near 1 whatever the width (chapter 2).
    scores = scores / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # all -inf rows give NaN; make them 0
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = einsum(weights, v, "batch heads q_pos k_pos, batch heads k_pos d_head -> batch heads q_pos d_head")
    return (out, weights) if return_weights else out


class KVCacheLayer(Protocol):
    """What attention needs from one layer's key/value cache (implemented in `companion.decoding`)."""

    def __len__(self) -> int:
        """Positions stored so far."""
        ...

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys and values (batch heads seq d_head); return all stored so far."""
        ...

    def stored(self) -> tuple[Tensor, Tensor]:
        """All keys and values stored so far."""
        ...


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, split into heads, attend, merge, project.

    Self-attention when `context` is None, cross-attention (queries from x, keys and values
    from context) otherwise. Costs the same as one full-width head: d_head = d_model / heads.
    """

    def __init__(self, d_model: int, heads: int, *, bias: bool = True, dropout: float = 0.0, fused: bool = True):
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}; d_head must be a whole number")
        self.d_model, self.heads, self.d_head = d_model, heads, d_model // heads
        self.to_q = nn.Linear(d_model, d_model, bias=bias)
        self.to_k = nn.Linear(d_model, d_model, bias=bias)
        self.to_v = nn.Linear(d_model, d_model, bias=bias)
        self.to_out = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout  # on the attention weights, as in the original paper's code
        self.fused = fused
        self.record_weights = False  # when True, every forward keeps its weights in last_weights
        self.last_weights: Tensor | None = None

    def split_heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "batch seq (heads d_head) -> batch heads seq d_head", heads=self.heads)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rotary=None,
        positions: Tensor | None = None,
        cache: KVCacheLayer | None = None,
        keep_weights: bool = False,
    ) -> Tensor:
        """x: (batch, q_pos, d_model); context: (batch, k_pos, d_model) for cross-attention.

        rotary/positions: a `RotaryEmbedding` and the absolute positions of x (self-attention).
        cache: keys/values of earlier positions (self-attention while decoding), or the
        projected encoder output (cross-attention while decoding).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, seq, d_model={self.d_model})")
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.d_model or context.shape[0] != x.shape[0]):
            raise ValueError(
                f"context has shape {tuple(context.shape)}; expected (batch={x.shape[0]}, seq, d_model={self.d_model})"
            )
        q = self.split_heads(self.to_q(x))
        if context is not None and cache is not None and len(cache) > 0:
            # Cross-attention keys and values depend only on the encoder output: project it once.
            k, v = cache.stored()
        else:
            source = x if context is None else context
            k = self.split_heads(self.to_k(source))
            v = self.split_heads(self.to_v(source))
            if rotary is not None:
                k = rotary(k, positions)
            if cache is not None:
                k, v = cache.append(k, v)
        if rotary is not None:
            q = rotary(q, positions)
        dropout_p = self.dropout if self.training else 0.0
        if keep_weights or self.record_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal, dropout_p=dropout_p, return_weights=True)
            self.last_weights = weights.detach()
        else:
            out = scaled_dot_product_attention(q, k, v, mask, causal=causal, dropout_p=dropout_p, fused=self.fused)
        return self.to_out(rearrange(out, "batch heads seq d_head -> batch seq (heads d_head)"))
