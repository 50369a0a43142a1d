"""Scaled dot-product attention, masks, and multi-head self- and cross-attention.

Chapter 2 (attention) explains it. Two paths compute the same thing: a readable einops
version that the chapter teaches, and the fused `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import Tensor, nn

from .device import ThreadSwitch
from .validation import expect, fraction, is_whole, one_of, whole_number

# ---------------------------------------------------------------- dropout, switched off per thread

_dropout_switch = ThreadSwitch()


def no_dropout() -> ThreadSwitch:
    """`with no_dropout():` turns every companion dropout off within the block, and in this thread
    only, whatever `model.training` says; the model itself is not touched.

    Decoding runs each step inside it instead of calling `model.eval()`: a model shared by threads,
    or one a half-consumed `stream` still holds, keeps its own mode, and another thread training it
    keeps its dropout. Like `torch.no_grad()`, it nests and is undone on exit.
    """
    return _dropout_switch


def dropout_active(module: nn.Module) -> bool:
    """True when `module` should drop: it is in training mode and this thread is not inside `no_dropout()`."""
    return module.training and not _dropout_switch.on


class Dropout(nn.Dropout):
    """`torch.nn.Dropout` that also stays off inside `no_dropout()`; every companion model uses it."""

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not dropout_active(self):
            return x  # nothing to drop: skip the call (it adds up, one per sub-layer, at every decoding step)
        return F.dropout(x, self.p, True, self.inplace)


# The two ways to compute attention, chosen by TransformerConfig.attention_path: PyTorch's fused kernel
# (FlashAttention-style on a GPU) or the einops path chapter 2 writes out. They agree to rounding.
ATTENTION_PATHS = ("fused", "einops")


# ---------------------------------------------------------------- masks


def causal_mask(q_len: int, k_len: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean (q_pos, k_pos) mask, True where a query may look.

    Query i sits at absolute position k_len - q_len + i (the queries are the last q_len
    positions, as when decoding with a cache), and may look at keys up to that position.
    """
    whole_number("q_len", q_len, 0)
    k_len = q_len if k_len is None else k_len
    whole_number("k_len", k_len, 0)
    if q_len > k_len:
        raise ValueError(
            f"causal_mask got q_len={q_len} > k_len={k_len}; queries must be the last k_len positions or fewer"
        )
    q_abs = torch.arange(k_len - q_len, k_len, device=device)
    return q_abs[:, None] >= torch.arange(k_len, device=device)[None, :]


def sliding_window_mask(
    q_len: int, window: int, k_len: int | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Causal mask that also hides keys more than `window - 1` positions back (local attention)."""
    whole_number("window", window, 1, note="a query always sees itself")
    k_len = q_len if k_len is None else k_len
    mask = causal_mask(q_len, k_len, device)
    q_abs = torch.arange(k_len - q_len, k_len, device=device)
    return mask & (q_abs[:, None] - torch.arange(k_len, device=device)[None, :] < window)


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(batch, 1, 1, k_pos) mask, True at real tokens: every query may look at every non-pad key."""
    if (
        not isinstance(ids, Tensor)
        or ids.dim() != 2
        or ids.dtype.is_floating_point
        or ids.dtype == torch.bool
    ):
        shown = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"padding_mask: ids={shown} must be a (batch, seq) tensor of integer token ids")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int):
        raise TypeError(
            f"padding_mask: pad_id={pad_id!r} must be a whole number, the id of the padding token"
        )
    return rearrange(ids != pad_id, "batch k_pos -> batch 1 1 k_pos")


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

    mask: boolean, True where a query may attend: (q_pos, k_pos), the same for every sequence and head,
    or (batch, heads, q_pos, k_pos) with size-1 axes broadcast (padding_mask gives (batch, 1, 1, k_pos)).
    causal: also hide keys after each query (bottom-right aligned, so it works with a cache).
    fused: use torch's fused kernel (flash / memory-efficient on GPU); False runs the einops path.
    A query row with nothing to attend to (all keys masked) returns zeros on both paths.
    return_weights: also return the (batch, heads, q_pos, k_pos) attention weights (einops path).
    """
    _check_qkv(q, k, v, mask, dropout_p)
    return _attend(
        q, k, v, mask, causal=causal, fused=fused, dropout_p=dropout_p, return_weights=return_weights
    )


def _attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    causal: bool,
    fused: bool,
    dropout_p: float,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """`scaled_dot_product_attention` once its arguments are checked."""
    q_len, k_len = q.shape[2], k.shape[2]
    if causal and q_len == 1:
        causal = False  # one query, placed after every key (decoding with a cache), may see them all
    if fused and not return_weights:
        if causal and mask is None and q_len == k_len:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=True
            )  # no mask to build
        if causal:
            cm = _causal(q_len, k_len, q.device)
            mask = cm if mask is None else mask & cm
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)

    if causal:
        cm = _causal(q_len, k_len, q.device)
        mask = cm if mask is None else mask & cm
    scores = einsum(q, k, "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos")
    # Dividing by sqrt(d_head) keeps the scores' variance near 1 whatever the width (chapter 2).
    scores = scores / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(
            ~mask.any(dim=-1, keepdim=True), 0.0
        )  # all -inf rows give NaN; make them 0
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = einsum(weights, v, "batch heads q_pos k_pos, batch heads k_pos d_head -> batch heads q_pos d_head")
    return (out, weights) if return_weights else out


def _causal(q_len, k_len, device) -> Tensor:
    """causal_mask without its argument checks, for sizes read off tensors (symbolic under torch.compile)."""
    return (
        torch.arange(k_len - q_len, k_len, device=device)[:, None]
        >= torch.arange(k_len, device=device)[None, :]
    )


# ---------------------------------------------------------------- checks at the public boundary
# scaled_dot_product_attention and MultiHeadAttention.forward check their arguments here, in one call
# each, so that what they compute reads like chapter 2's equations. The checks read shapes, never values.


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"<{x.dtype} tensor of shape {tuple(x.shape)}>"
    return repr(x) if isinstance(x, (int, float, str, bool, type(None))) else f"<{type(x).__name__}>"


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise TypeError(
                f"{name}={_describe(t)} must be a floating-point tensor (batch, heads, seq, d_head)"
            )
        if t.dim() != 4:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected 4 dims (batch, heads, seq, d_head)"
            )
    if not q.shape[:2] == k.shape[:2] == v.shape[:2]:
        raise ValueError(
            f"q, k, v disagree on (batch, heads): {tuple(q.shape[:2])}, {tuple(k.shape[:2])}, {tuple(v.shape[:2])}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q has d_head={q.shape[-1]} but k has d_head={k.shape[-1]}; queries and keys must have the same width"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k has {k.shape[2]} positions but v has {v.shape[2]}; every key needs a value")
    fraction("dropout_p", dropout_p)
    if mask is not None:
        check_mask(mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def check_mask(mask: Tensor, batch: int, heads: int, q_len: int, k_len: int) -> None:
    """A mask is a torch.bool tensor, True where a query may attend, shaped (q_pos, k_pos), the same for
    every sequence and head, or (batch, heads, q_pos, k_pos); each axis matches or is 1 (broadcast).
    Nothing else: a 2-D mask is always (q_pos, k_pos), never a (batch, seq) padding mask, whatever the
    sizes. Per-sequence padding goes in the `padding` argument of the models and of MultiHeadAttention,
    or through `padding_mask`, which gives (batch, 1, 1, k_pos)."""
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask={_describe(mask)} must be a torch.bool tensor with True where a query may attend"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask has dtype {mask.dtype}; expected torch.bool with True where a query may attend"
        )
    shape = tuple(mask.shape)
    if mask.dim() not in (2, 4):
        raise ValueError(
            f"mask has shape {shape} ({mask.dim()} dims); a mask must be 2-D (q_pos, k_pos) or 4-D "
            "(batch, heads, q_pos, k_pos), e.g. padding_mask(ids, pad_id), which is (batch, 1, 1, k_pos). "
            "1-D and 3-D masks are refused: which axes they stand for would depend on the sizes"
        )
    names = "(q_pos, k_pos)" if mask.dim() == 2 else "(batch, heads, q_pos, k_pos)"
    target = (q_len, k_len) if mask.dim() == 2 else (batch, heads, q_len, k_len)
    if any(m not in (1, t) for m, t in zip(shape, target)):
        hint = ""
        if mask.dim() == 2 and shape == (batch, k_len):
            hint = (
                "; it looks like a (batch, seq) padding mask: pass it as padding=..., "
                "or use padding_mask(ids, pad_id)"
            )
        raise ValueError(
            f"mask has shape {shape}, which does not broadcast to {names} = {target}: "
            f"each axis must match or be 1{hint}"
        )


def _check_padding(padding: Tensor, batch: int, k_len: int) -> None:
    """A (batch, k_pos) padding argument, True at real tokens."""
    if not isinstance(padding, Tensor) or padding.dtype != torch.bool:
        raise TypeError(
            f"padding={_describe(padding)} must be a torch.bool tensor (batch, seq), True at real tokens; "
            "e.g. padding=(ids != pad_id)"
        )
    if tuple(padding.shape) != (batch, k_len):
        raise ValueError(
            f"padding has shape {tuple(padding.shape)}; it must be (batch, seq) = ({batch}, {k_len}), "
            "one flag per token of every sequence, True at real tokens"
        )


def _check_attention_inputs(
    attention: MultiHeadAttention,
    x: Tensor,
    context: Tensor | None,
    mask: Tensor | None,
    padding: Tensor | None,
    cache,
) -> None:
    """MultiHeadAttention.forward's checks: x and context are (batch, seq, d_model); the mask and padding
    fit the keys, which are the context's positions, or x's after the cached ones."""
    d_model = attention.d_model
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != d_model:
        shown = tuple(x.shape) if isinstance(x, Tensor) else _describe(x)
        raise ValueError(f"x has shape {shown}; expected (batch, seq, d_model={d_model})")
    if context is not None and (
        not isinstance(context, Tensor)
        or context.dim() != 3
        or context.shape[-1] != d_model
        or context.shape[0] != x.shape[0]
    ):
        shown = tuple(context.shape) if isinstance(context, Tensor) else _describe(context)
        raise ValueError(f"context has shape {shown}; expected (batch={x.shape[0]}, seq, d_model={d_model})")
    if mask is None and padding is None:
        return
    if context is not None:
        k_len = context.shape[1]
    else:
        k_len = x.shape[1] + (len(cache) if cache is not None else 0)
    if mask is not None:
        check_mask(mask, x.shape[0], attention.heads, x.shape[1], k_len)
    if padding is not None:
        _check_padding(padding, x.shape[0], k_len)


# ---------------------------------------------------------------- multi-head attention


class KVCacheLayer(Protocol):
    """What self-attention needs from one layer's key/value cache (implemented in `companion.decoding`).
    Cross-attention's cache (`decoding.CrossKVCache`) is filled once instead: `fill(k, v)`, then
    `stored()`."""

    def __len__(self) -> int:
        """Positions stored so far."""
        ...

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys and values (batch heads seq d_head); return all stored so far."""
        ...

    def stored(self) -> tuple[Tensor, Tensor]:
        """All keys and values stored so far."""
        ...


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """(batch, kv_heads, seq, d_head) -> (batch, kv_heads * groups, seq, d_head): each key/value head
    repeated for the `groups` query heads that share it (grouped-query attention, Ainslie et al. 2023).

    Head h of the result is kv head h // groups, so query heads 0..groups-1 read kv head 0, and so on.
    """
    if groups == 1:
        return x
    return repeat(x, "batch kv_heads seq d_head -> batch (kv_heads groups) seq d_head", groups=groups)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, split into heads, attend, merge, project.

    Self-attention when `context` is None, cross-attention (queries from x, keys and values
    from context) otherwise. Costs the same as one full-width head: d_head = d_model / heads.

    kv_heads < heads: grouped-query attention. Keys and values get kv_heads heads of d_head each
    (to_k and to_v are kv_heads * d_head wide), each shared by heads / kv_heads query heads;
    kv_heads=1 is multi-query attention. A cache stores only the kv_heads heads.
    qk_norm: an RMSNorm over d_head on every query and key head before RoPE (OLMo 2, Qwen 3).
    To see the attention weights, run the module inside `record_attention(...)`.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        fused: bool = True,
        kv_heads: int | None = None,
        qk_norm: bool = False,
        eps: float = 1e-6,
    ):
        """fused: attend with PyTorch's fused kernel (True) or the readable einops path (False); a model
        takes it from TransformerConfig.attention_path. Both compute the same, to rounding."""
        super().__init__()
        if not isinstance(fused, bool):
            raise TypeError(
                f"fused={fused!r} must be True (PyTorch's fused kernel) or False (the einops path)"
            )
        if d_model % heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by heads={heads}; d_head must be a whole number"
            )
        kv_heads = heads if kv_heads is None else kv_heads
        expect(
            is_whole(kv_heads) and kv_heads >= 1 and heads % kv_heads == 0,
            "kv_heads",
            kv_heads,
            f"a whole number that divides heads={heads} (each key/value head serves heads / kv_heads query heads)",
        )
        self.d_model, self.heads, self.d_head = d_model, heads, d_model // heads
        self.kv_heads = kv_heads
        self.to_q = nn.Linear(d_model, d_model, bias=bias)
        self.to_k = nn.Linear(d_model, kv_heads * self.d_head, bias=bias)
        self.to_v = nn.Linear(d_model, kv_heads * self.d_head, bias=bias)
        self.to_out = nn.Linear(d_model, d_model, bias=bias)
        if qk_norm:
            from .layers import RMSNorm  # here: layers imports this module

            self.q_norm, self.k_norm = RMSNorm(self.d_head, eps), RMSNorm(self.d_head, eps)
        else:
            self.q_norm = self.k_norm = None
        self.dropout = (
            dropout  # on the attention weights (attention_dropout: BERT, GPT-2; 0 in the original paper)
        )
        self.fused = fused
        self.recorder = None  # set by record_attention(): called with each forward's weights

    def split_heads(self, x: Tensor, heads: int | None = None) -> Tensor:
        """rearrange(x, "batch seq (heads d_head) -> batch heads seq d_head"), written as unflatten and
        transpose: the same view, without einops' per-call pattern handling, which shows at every
        decoding step (chapter 2 writes it with rearrange; a test keeps the two equal)."""
        return x.unflatten(-1, (heads or self.heads, self.d_head)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        padding: Tensor | None = None,
        causal: bool = False,
        rotary=None,
        positions: Tensor | None = None,
        cache=None,
    ) -> Tensor:
        """x: (batch, q_pos, d_model); context: (batch, k_pos, d_model) for cross-attention.

        mask: (q_pos, k_pos), the same for every sequence, or (batch, heads, q_pos, k_pos) with size-1 axes.
        padding: (batch, k_pos) bool, True at real keys: a per-sequence padding mask, always given here.

        rotary/positions: a `RotaryEmbedding` and the absolute positions of x (self-attention).
        cache: while decoding, a `KVCache` of earlier positions' keys and values (self-attention), or
        a `CrossKVCache` that keeps the projected encoder output (cross-attention).
        """
        _check_attention_inputs(self, x, context, mask, padding, cache)
        q = self.split_heads(self.to_q(x))
        if self.q_norm is not None:
            q = self.q_norm(q)
        if rotary is not None:
            q = rotary(q, positions)
        cross = context is not None
        k, v = self._keys_values(context if cross else x, rotary, positions, cache, cross)
        if k.dtype != q.dtype:  # a bf16 cache read by fp32 queries (or the other way round)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if padding is not None:
            pad = padding[:, None, None, :]  # "batch k_pos -> batch 1 1 k_pos": all queries see real keys
            mask = pad if mask is None else mask & pad
        dropout_p = self.dropout if dropout_active(self) else 0.0
        if self.recorder is None:
            out = _attend(q, k, v, mask, causal=causal, fused=self.fused, dropout_p=dropout_p)
        else:  # inside record_attention(): the einops path, which has the weights to keep
            out, weights = _attend(
                q, k, v, mask, causal=causal, fused=False, dropout_p=dropout_p, return_weights=True
            )
            self.recorder(weights.detach(), cross)
        # "batch heads seq d_head -> batch seq (heads d_head)", then the output projection
        return self.to_out(out.transpose(1, 2).flatten(2))

    def _keys_values(
        self, source: Tensor, rotary, positions: Tensor | None, cache, cross: bool
    ) -> tuple[Tensor, Tensor]:
        """Keys and values (batch, heads, k_pos, d_head) of `source`, through the cache when decoding.
        Cross-attention's come from the encoder output only, so its cache is filled on the first step."""
        if cross and cache is not None and len(cache):
            k, v = cache.stored()
        else:
            k = self.split_heads(self.to_k(source), self.kv_heads)
            v = self.split_heads(self.to_v(source), self.kv_heads)
            if self.k_norm is not None:
                k = self.k_norm(k)
            if rotary is not None:
                k = rotary(k, positions)
            if cache is not None:
                k, v = cache.fill(k, v) if cross else cache.append(k, v)
        # The cache keeps kv_heads heads; each is repeated for its group of query heads only here.
        groups = self.heads // self.kv_heads
        return repeat_kv(k, groups), repeat_kv(v, groups)


@contextlib.contextmanager
def record_attention(*modules: nn.Module, kind: str = "all") -> Iterator[list[Tensor]]:
    """Within this block, every MultiHeadAttention in `modules` (each one, or a model holding them)
    keeps its weights: each call appends its (batch, heads, q_pos, k_pos) weights, detached, to the
    list this yields, in the order the calls ran. It computes with the einops path meanwhile (the
    fused kernel never forms the weights); outside the block nothing is kept.

    kind: "self" keeps self-attention calls only, "cross" cross-attention calls (those given a
    context) only, "all" both.

        with record_attention(model, kind="self") as weights:
            model(ids)
    """
    one_of("kind", kind, ("all", "self", "cross"))
    for m in modules:
        if not isinstance(m, nn.Module):
            raise TypeError(
                f"record_attention takes modules (a model or its attention layers), got {_describe(m)}"
            )
    layers = list(dict.fromkeys(a for m in modules for a in m.modules() if isinstance(a, MultiHeadAttention)))
    if not layers:
        names = [type(m).__name__ for m in modules]
        raise ValueError(f"record_attention found no MultiHeadAttention in {names}")
    weights: list[Tensor] = []

    def keep(w: Tensor, cross: bool) -> None:
        if kind == "all" or cross == (kind == "cross"):
            weights.append(w)

    previous = [layer.recorder for layer in layers]
    for layer in layers:
        layer.recorder = keep
    try:
        yield weights
    finally:
        for layer, recorder in zip(layers, previous):
            layer.recorder = recorder
