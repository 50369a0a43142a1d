"""Checkers for the chapter 2 exercises (attention): each compares with the companion and names the mistake."""

from __future__ import annotations

import math

import torch
from einops import einsum, rearrange

from ..attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention, sliding_window_mask
from ._core import Checker, random_tensor

# The einsum patterns of companion.attention: scores q k^T, then the weighted sum of values.
SCORES = "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos"
MIX = "batch heads q_pos k_pos, batch heads k_pos d_head -> batch heads q_pos d_head"
# Splitting d_model into heads and merging them back, as MultiHeadAttention does (head-major).
SPLIT = "batch seq (heads d_head) -> batch heads seq d_head"
MERGE = "batch heads seq d_head -> batch seq (heads d_head)"

__all__ = [
    "check_attention_scores",
    "check_attention_weights",
    "check_causal_mask",
    "check_scaled_dot_product",
    "check_sliding_window_mask",
    "check_split_heads",
    "check_merge_heads",
    "check_multi_head_attention",
]

B, H, Q, K, D = 2, 3, 5, 7, 8  # batch, heads, q_pos, k_pos, d_head: all different, so a swapped axis shows


def _qkv(seed: int = 0, q_len: int = Q, k_len: int = K):
    return (
        random_tensor(B, H, q_len, D, seed=seed),
        random_tensor(B, H, k_len, D, seed=seed + 1),
        random_tensor(B, H, k_len, D, seed=seed + 2),
    )


def _raw_scores(q, k):
    return einsum(q, k, SCORES)


def check_attention_scores(fn) -> bool:
    """fn(q, k) -> scores (batch, heads, q_pos, k_pos) = q k^T / sqrt(d_head)."""
    with Checker("check_attention_scores") as c:
        q, k, _ = _qkv(1)
        with c.explain(
            {
                "must match the size": "q and k do not line up: transpose only k's last two axes, "
                "k.transpose(-2, -1) (k.T reverses all four), or use one einsum",
                "Expected size for first two dimensions": "q @ k multiplies d_head by k_pos: transpose k's "
                "last two axes first, q @ k.transpose(-2, -1)",
            }
        ):
            got = c.call(fn, q, k)
        raw = _raw_scores(q, k)
        c.expect_tensor(got)
        if tuple(got.shape) == (B, H, K, Q):
            c.fail(
                "your scores are (batch, heads, k_pos, q_pos): keys on the rows. Contract q with k so queries "
                "are rows: 'batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos'"
            )
        c.expect_shape(got, (B, H, Q, K), hint="scores pair every query (q_pos) with every key (k_pos)")
        c.diagnose(
            got,
            raw / math.sqrt(D),
            {
                "your scores are not divided by sqrt(d_head); without it their variance grows with d_head": raw,
                "you divided by d_head; the scale is sqrt(d_head), which keeps the variance near 1": raw / D,
                "you divided by sqrt(d_model) or another width; use the last dimension of q, d_head": raw
                / math.sqrt(D * H),
                "you divided by sqrt(k_pos), the number of keys; the scale is sqrt(d_head), q's last dimension": raw
                / math.sqrt(K),
                "you multiplied by sqrt(d_head); divide by it": raw * math.sqrt(D),
            },
        )
    return c.passed


def check_attention_weights(fn) -> bool:
    """fn(scores, mask=None) -> weights: softmax over keys, masked positions exactly 0."""
    with Checker("check_attention_weights") as c:
        scores = random_tensor(B, H, Q, K, seed=3) * 2
        got = c.call(fn, scores)
        c.diagnose(
            got,
            scores.softmax(-1),
            {
                "the softmax runs over queries (dim -2); each query's weights over the keys (dim -1) must sum to 1": scores.softmax(
                    -2
                ),
                "the softmax runs over heads or batch; it belongs on the last (k_pos) dimension": scores.softmax(
                    1
                ),
                "these are not softmax weights: apply softmax over the keys": scores,
            },
            what="weights without a mask",
        )
        mask = causal_mask(Q, K)
        got = c.call(fn, scores, mask)
        expected = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        c.diagnose(
            got,
            expected,
            {
                "the mask is not applied: masked keys still get weight. Fill scores where mask is False with -inf "
                "before the softmax": scores.softmax(-1),
                "the mask is inverted: True means 'may attend', so fill where mask is False": scores.masked_fill(
                    mask, float("-inf")
                ).softmax(-1),
                "you zeroed the weights after the softmax without renormalising; mask the scores before it": scores.softmax(
                    -1
                )
                * mask,
                "masked scores are 0 (filled with 0, or multiplied by the mask), and a score of 0 still gets weight "
                "after the softmax (e^0 = 1); fill them with -inf, so their weight is exactly 0": scores.masked_fill(
                    ~mask, 0.0
                ).softmax(-1),
                "you added the mask to the scores (True = 1, False = 0) instead of filling with -inf where it is False": (
                    scores + mask
                ).softmax(-1),
            },
            what="weights with a causal mask",
        )
    return c.passed


def check_causal_mask(fn) -> bool:
    """fn(seq) -> bool (seq, seq), True where query i may attend key j (j <= i)."""
    with Checker("check_causal_mask") as c:
        n = 6
        got = c.call(fn, n)
        c.expect_tensor(got, "your mask")
        if got.dtype != torch.bool:
            c.fail(f"your mask has dtype {got.dtype}; use torch.bool (True = may attend)")
        expected = causal_mask(n)
        c.expect_shape(got, (n, n), "your mask")
        if torch.equal(got, ~expected):
            c.fail("your mask is inverted: True should mean 'may attend', on and below the diagonal")
        if torch.equal(got, expected.T):
            c.fail(
                "row 0 may attend to later positions: you built the upper triangle; queries are rows, keys columns"
            )
        if torch.equal(got, expected & ~torch.eye(n, dtype=torch.bool)):
            c.fail("the diagonal is masked: each position must be able to attend to itself")
        if torch.equal(got, torch.ones(n, n, dtype=torch.bool).tril(1)):
            c.fail(
                "off by one: query i also sees key i + 1, one step into the future; keep j <= i (tril's diagonal=0)"
            )
        if not torch.equal(got, expected):
            bad = (got != expected).nonzero()[0].tolist()
            c.fail(
                f"entry (query {bad[0]}, key {bad[1]}) is {bool(got[bad[0], bad[1]])}, expected {bool(expected[bad[0], bad[1]])}"
            )
    return c.passed


def check_scaled_dot_product(fn) -> bool:
    """fn(q, k, v, mask=None) -> (batch, heads, q_pos, d_head) output of attention."""
    with Checker("check_scaled_dot_product") as c:
        q, k, v = _qkv(5)
        raw = _raw_scores(q, k)
        weighted = lambda w: einsum(w, v, MIX)  # noqa: E731
        got = c.call(fn, q, k, v)
        c.expect_tensor(got)
        if tuple(got.shape) == (B, H, Q, K):
            c.fail(
                "you returned the attention weights (batch, heads, q_pos, k_pos); the output is weights @ v"
            )
        c.expect_shape(got, (B, H, Q, D), hint="n queries in, n vectors out, each of width d_head")
        c.diagnose(
            got,
            scaled_dot_product_attention(q, k, v, fused=False),
            {
                "your scores are not divided by sqrt(d_head)": weighted(raw.softmax(-1)),
                "you divided the scores by d_head instead of sqrt(d_head)": weighted((raw / D).softmax(-1)),
                "the softmax runs over queries (dim -2) instead of keys (dim -1)": weighted(
                    (raw / math.sqrt(D)).softmax(-2)
                ),
            },
            what="output without a mask",
        )
        mask = causal_mask(Q, K)
        got = c.call(fn, q, k, v, mask)
        c.diagnose(
            got,
            scaled_dot_product_attention(q, k, v, mask, fused=False),
            {
                "the mask is not applied: positions where mask is False still contribute": scaled_dot_product_attention(
                    q, k, v, fused=False
                ),
                "the mask is inverted: True means 'may attend'": weighted(
                    (raw / math.sqrt(D)).masked_fill(mask, float("-inf")).softmax(-1)
                ),
                "masked scores are filled with 0, which still gets weight after the softmax; fill them with -inf": weighted(
                    (raw / math.sqrt(D)).masked_fill(~mask, 0.0).softmax(-1)
                ),
                "you zeroed the weights after the softmax without renormalising; mask the scores before it": weighted(
                    (raw / math.sqrt(D)).softmax(-1) * mask
                ),
            },
            what="output with a causal mask",
        )
    return c.passed


def check_sliding_window_mask(fn) -> bool:
    """fn(seq, window) -> bool (seq, seq): causal, and at most `window` keys back including itself."""
    with Checker("check_sliding_window_mask") as c:
        n, w = 7, 3
        got = c.call(fn, n, w)
        c.expect_tensor(got, "your mask")
        c.expect_shape(got, (n, n), "your mask")
        c.expect_dtype(
            got,
            torch.bool,
            "your mask",
            hint="attention fills where the mask is False, so it must be "
            "boolean (True = may attend); compare with >= and < rather than building numbers",
        )
        expected = sliding_window_mask(n, w)
        if torch.equal(got, ~expected):
            c.fail("your mask is inverted: True should mean 'may attend', inside the window")
        if torch.equal(got.bool(), causal_mask(n)):
            c.fail("this is the plain causal mask: also hide keys window or more positions back")
        if torch.equal(got.bool(), sliding_window_mask(n, w + 1)):
            c.fail(f"each query sees {w + 1} keys; the window of {w} includes the query itself")
        if torch.equal(got.bool(), sliding_window_mask(n, w - 1)):
            c.fail(f"each query sees {w - 1} keys; the window of {w} includes the query itself")
        band = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() < w
        if torch.equal(got.bool(), band):
            c.fail("queries see keys ahead of them: the window must also be causal")
        if not torch.equal(got.bool(), expected):
            bad = (got.bool() != expected).nonzero()[0].tolist()
            c.fail(
                f"entry (query {bad[0]}, key {bad[1]}) is wrong; expected {bool(expected[bad[0], bad[1]])}"
            )
    return c.passed


def check_split_heads(fn) -> bool:
    """fn(x, heads) -> (batch, heads, seq, d_head) from (batch, seq, d_model)."""
    with Checker("check_split_heads") as c:
        x = random_tensor(B, K, H * D, seed=7)
        got = c.call(fn, x, H)
        c.expect_tensor(got, "your split")
        if tuple(got.shape) == (B, K, H, D):
            c.fail(
                "your split is (batch, seq, heads, d_head): move heads before seq, so each head attends over "
                "its own (seq, d_head) matrix"
            )
        if tuple(got.shape) == (B, H, D, K):
            c.fail(
                "your split is (batch, heads, d_head, seq): seq comes before d_head, so each head holds one "
                "d_head vector per position"
            )
        if tuple(got.shape) == (B, D, K, H):
            c.fail(
                f"your split has {D} heads of width {H}: the number of heads went to d_head; name it in the "
                "pattern, rearrange(..., heads=heads)"
            )
        c.diagnose(
            got,
            rearrange(x, SPLIT, heads=H),
            {
                "heads and d_head are swapped in the feature axis: features are laid out (heads d_head), head-major": rearrange(
                    x, "batch seq (d_head heads) -> batch heads seq d_head", heads=H
                ),
                "you reshaped to (batch, heads, seq, d_head) without moving seq: split the last axis, then transpose": x.reshape(
                    B, H, K, D
                ),
            },
            what="your split",
        )
    return c.passed


def check_merge_heads(fn) -> bool:
    """fn(x) -> (batch, seq, heads * d_head) from (batch, heads, seq, d_head): the inverse of split."""
    with Checker("check_merge_heads") as c:
        x = random_tensor(B, H, K, D, seed=8)
        with c.explain(
            {
                "view size is not compatible": "after a transpose the tensor is not contiguous, so .view "
                "fails: use .reshape, or einops.rearrange"
            }
        ):
            got = c.call(fn, x)
        c.expect_tensor(got, "your merge")
        if tuple(got.shape) == (B, K, H, D):
            c.fail(
                "your merge is (batch, seq, heads, d_head): also join heads and d_head into one axis, (heads d_head)"
            )
        c.diagnose(
            got,
            rearrange(x, MERGE),
            {
                "the merged features are ordered (d_head heads); merge as (heads d_head) to undo the split": rearrange(
                    x, "batch heads seq d_head -> batch seq (d_head heads)"
                ),
                "you reshaped without moving heads next to d_head first: transpose, then merge": x.reshape(
                    B, K, H * D
                ),
            },
            what="your merge",
        )
    return c.passed


def _reference_mha(heads: int, d_model: int, seed: int) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, heads).eval()


def check_multi_head_attention(fn) -> bool:
    """fn(x, mha, causal=False) -> (batch, seq, d_model), using mha's to_q/to_k/to_v/to_out layers."""
    with Checker("check_multi_head_attention") as c:
        mha = _reference_mha(H, H * D, seed=9)
        x = random_tensor(B, K, H * D, seed=10)
        with torch.no_grad():
            expected = mha(x)
            expected_causal = mha(x, causal=True)
            q, k, v = (rearrange(layer(x), SPLIT, heads=H) for layer in (mha.to_q, mha.to_k, mha.to_v))
            full_width = mha.to_out(
                scaled_dot_product_attention(
                    *(
                        rearrange(t, "batch heads seq d_head -> batch 1 seq (heads d_head)")
                        for t in (q, k, v)
                    ),
                    fused=False,
                )[:, 0]
            )
            no_out = rearrange(scaled_dot_product_attention(q, k, v, fused=False), MERGE)
            d_major = [
                rearrange(layer(x), "batch seq (d_head heads) -> batch heads seq d_head", heads=H)
                for layer in (mha.to_q, mha.to_k, mha.to_v)
            ]
            wrong_split = mha.to_out(rearrange(scaled_dot_product_attention(*d_major, fused=False), MERGE))
            all_q = mha.to_out(rearrange(scaled_dot_product_attention(q, q, q, fused=False), MERGE))
            no_v = mha.to_out(
                rearrange(
                    scaled_dot_product_attention(q, k, rearrange(x, SPLIT, heads=H), fused=False), MERGE
                )
            )
        whole = {
            mha: "you ran mha itself, mha(x); the exercise is to write it from mha.to_q, mha.to_k, mha.to_v "
            "and mha.to_out"
        }
        with c.forbid(whole):
            got = c.call(fn, x, mha)
        c.expect_shape(got, (B, K, H * D), hint="n vectors in, n vectors out, each of width d_model")
        c.diagnose(
            got,
            expected,
            {
                "this is one full-width head: split q, k and v into heads before attending": full_width,
                "the output projection mha.to_out is missing after merging the heads": no_out,
                "the heads are split as (d_head heads); the features are laid out (heads d_head), head-major": wrong_split,
                "q, k and v all come from mha.to_q: keys come from mha.to_k and values from mha.to_v": all_q,
                "the values are x itself: project them with mha.to_v first": no_v,
            },
        )
        with c.forbid(whole):
            got = c.call(fn, x, mha, causal=True)
        c.diagnose(
            got,
            expected_causal,
            {
                "causal=True is ignored: later positions still influence earlier ones": expected,
            },
            what="your causal output",
        )
    return c.passed
