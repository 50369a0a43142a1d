"""Chapter 2 checkers (attention): typical wrong answers, each rejected with the hint that names it."""

import math

import pytest
import torch
from einops import einsum, rearrange

from companion import causal_mask, scaled_dot_product_attention, sliding_window_mask
from companion.checks import CheckFailed
from companion.checks import attention as checks

# The einsum pattern of companion.attention's scores, q k^T.
SCORES = "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos"
# Splitting d_model into heads and merging them back, as MultiHeadAttention does (head-major).
SPLIT = "batch seq (heads d_head) -> batch heads seq d_head"
MERGE = "batch heads seq d_head -> batch seq (heads d_head)"


def _raw(q, k):
    return einsum(q, k, SCORES)


def attention_weights(scores, mask=None):
    return scores.softmax(-1) if mask is None else scores.masked_fill(~mask, float("-inf")).softmax(-1)


def _mha(x, mha, causal, layout="(heads d_head)", qkv="kv"):
    def split(t):
        return rearrange(t, f"batch seq {layout} -> batch heads seq d_head", heads=mha.heads)

    q = split(mha.to_q(x))
    k = q if qkv == "q" else split(mha.to_k(x))
    v = q if qkv == "q" else split(x) if qkv == "x" else split(mha.to_v(x))
    out = scaled_dot_product_attention(q, k, v, causal=causal, fused=False)
    return mha.to_out(rearrange(out, MERGE))


def _scores(q, k):
    return einsum(q, k, SCORES) / math.sqrt(q.shape[-1])


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize(
    "checker, wrong, hint",
    [
        (checks.check_attention_scores, lambda q, k: einsum(q, k, SCORES), "not divided by sqrt"),
        (checks.check_attention_scores, lambda q, k: einsum(q, k, SCORES) / q.shape[-1], "divided by d_head"),
        (checks.check_attention_scores, lambda q, k: einsum(q, k, "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads k_pos q_pos"), "keys on the rows"),
        (checks.check_attention_weights, lambda s, m=None: s.softmax(-2), "over queries"),
        (checks.check_attention_weights, lambda s, m=None: s.softmax(-1), "mask is not applied"),
        (checks.check_attention_weights, lambda s, m=None: s.masked_fill(m, float("-inf")).softmax(-1) if m is not None else s.softmax(-1), "inverted"),
        (checks.check_causal_mask, lambda n: causal_mask(n).T, "row 0 may attend to later"),
        (checks.check_causal_mask, lambda n: torch.tril(torch.ones(n, n, dtype=torch.bool), -1), "diagonal is masked"),
        (checks.check_causal_mask, lambda n: torch.tril(torch.ones(n, n)), "dtype"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: scaled_dot_product_attention(q * math.sqrt(q.shape[-1]) ** 0.5, k * math.sqrt(q.shape[-1]) ** 0.5, v, m, fused=False), "not divided by sqrt"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: scaled_dot_product_attention(q, k, v, None, fused=False), "mask is not applied"),
        (checks.check_sliding_window_mask, lambda n, w: causal_mask(n), "plain causal mask"),
        (checks.check_sliding_window_mask, lambda n, w: sliding_window_mask(n, w + 1), "includes the query itself"),
        (checks.check_split_heads, lambda x, h: rearrange(x, "batch seq (d_head heads) -> batch heads seq d_head", heads=h), "swapped"),
        (checks.check_split_heads, lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), "without moving seq"),
        (checks.check_merge_heads, lambda x: rearrange(x, "batch heads seq d_head -> batch seq (d_head heads)"), "(d_head heads)"),
        (checks.check_merge_heads, lambda x: x.reshape(x.shape[0], x.shape[2], -1), "transpose, then merge"),
        (checks.check_multi_head_attention, lambda x, mha, causal=False: _mha(x, mha, False), "causal=True is ignored"),
        # beyond the first audit
        (checks.check_split_heads, lambda x, h: rearrange(x, "batch seq (heads d_head) -> batch heads d_head seq", heads=h), "seq comes before d_head"),
        (checks.check_attention_weights, lambda s, m=None: s, "not softmax weights"),
        (checks.check_multi_head_attention, lambda x, mha, causal=False: mha(x, causal=causal), "you ran mha itself"),
        pytest.param(checks.check_attention_scores, lambda q, k: q @ k.T / math.sqrt(q.shape[-1]), "k.T reverses all four",
                     marks=pytest.mark.filterwarnings("ignore:The use of `x.T`")),
        (checks.check_attention_scores, lambda q, k: q @ k / math.sqrt(q.shape[-1]), "transpose k's last two axes first"),
        (checks.check_merge_heads, lambda x: x.transpose(1, 2).view(x.shape[0], x.shape[2], -1), "use .reshape"),
        (checks.check_attention_scores, lambda q, k: _raw(q, k) / math.sqrt(k.shape[2]), "sqrt(k_pos)"),
        (checks.check_attention_scores, lambda q, k: _raw(q, k) * math.sqrt(q.shape[-1]), "multiplied by sqrt"),
        (checks.check_attention_scores, lambda q, k: _raw(q, k) / math.sqrt(q.shape[-1] * q.shape[1]), "sqrt(d_model)"),
        (checks.check_attention_weights, lambda s, m=None: s.masked_fill(~m, 0.0).softmax(-1) if m is not None else s.softmax(-1),
         "filled with 0"),
        (checks.check_attention_weights, lambda s, m=None: (s + m).softmax(-1) if m is not None else s.softmax(-1),
         "added the mask"),
        (checks.check_attention_weights, lambda s, m=None: (s * m).softmax(-1) if m is not None else s.softmax(-1),
         "multiplied by the mask"),
        (checks.check_attention_weights, lambda s, m=None: s.softmax(-1) * m if m is not None else s.softmax(-1),
         "without renormalising"),
        (checks.check_attention_weights, lambda s, m=None: s.softmax(1), "runs over heads or batch"),
        (checks.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).tril(1), "off by one"),
        (checks.check_causal_mask, lambda n: ~causal_mask(n), "inverted"),
        (checks.check_causal_mask, lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "upper triangle"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: attention_weights(_raw(q, k) / math.sqrt(q.shape[-1]), m),
         "returned the attention weights"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: attention_weights(_raw(q, k) / q.shape[-1], m) @ v,
         "by d_head instead of sqrt"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: (_raw(q, k) / math.sqrt(q.shape[-1])).softmax(-2) @ v,
         "over queries"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: ((_raw(q, k) / math.sqrt(q.shape[-1])).masked_fill(~m, 0.0)
                                                                  if m is not None else _raw(q, k) / math.sqrt(q.shape[-1])).softmax(-1) @ v,
         "filled with 0"),
        (checks.check_scaled_dot_product, lambda q, k, v, m=None: attention_weights(_raw(q, k) / math.sqrt(q.shape[-1]), m if m is None else ~m) @ v,
         "inverted"),
        (checks.check_sliding_window_mask, lambda n, w: sliding_window_mask(n, w).float(), "dtype torch.float32"),
        (checks.check_sliding_window_mask, lambda n, w: sliding_window_mask(n, w).to(torch.uint8), "dtype torch.uint8"),
        (checks.check_sliding_window_mask, lambda n, w: sliding_window_mask(n, w - 1), "includes the query itself"),
        (checks.check_sliding_window_mask, lambda n, w: ~sliding_window_mask(n, w), "inverted"),
        (checks.check_sliding_window_mask, lambda n, w: (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() < w,
         "keys ahead"),
        (checks.check_split_heads, lambda x, h: rearrange(x, "batch seq (heads d_head) -> batch seq heads d_head", heads=h), "move heads before seq"),
        (checks.check_split_heads, lambda x, h: rearrange(x, SPLIT, d_head=h), "the number of heads went to d_head"),
        (checks.check_merge_heads, lambda x: rearrange(x, "batch heads seq d_head -> batch seq heads d_head"), "join heads and d_head"),
        (checks.check_merge_heads, lambda x: rearrange(x, "batch heads seq d_head -> batch (heads seq) d_head").reshape(x.shape[0], x.shape[2], -1),
         "without moving heads next to d_head"),
        (checks.check_multi_head_attention, lambda x, mha, causal=False: _mha(x, mha, causal, layout="(d_head heads)"), "head-major"),
        (checks.check_multi_head_attention, lambda x, mha, causal=False: _mha(x, mha, causal, qkv="q"), "all come from mha.to_q"),
        (checks.check_multi_head_attention, lambda x, mha, causal=False: _mha(x, mha, causal, qkv="x"), "values are x itself"),
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)
# fmt: on


def test_checker_rejects_one_full_width_head():
    def one_head(x, mha, causal=False):
        q, k, v = (
            rearrange(project(x), "batch seq d_model -> batch 1 seq d_model")
            for project in (mha.to_q, mha.to_k, mha.to_v)
        )
        out = scaled_dot_product_attention(q, k, v, causal=causal, fused=False)
        return mha.to_out(out[:, 0])

    with pytest.raises(CheckFailed, match="one full-width head"):
        checks.check_multi_head_attention(one_head)


def test_checker_rejects_missing_output_projection():
    def no_out(x, mha, causal=False):
        q, k, v = (
            rearrange(project(x), SPLIT, heads=mha.heads) for project in (mha.to_q, mha.to_k, mha.to_v)
        )
        return rearrange(scaled_dot_product_attention(q, k, v, causal=causal), MERGE)

    with pytest.raises(CheckFailed, match="to_out is missing"):
        checks.check_multi_head_attention(no_out)
