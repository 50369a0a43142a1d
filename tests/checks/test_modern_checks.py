"""Chapter 8 checkers (modern decoders): typical wrong answers, each rejected with the hint that names it."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import repeat

from companion.bpe import merge
from companion.checks import CheckFailed
from companion.checks import modern as checks
from reference_answers import bpe_encode, bpe_merge_step, llama_layer_parameters, rms_norm_block


def _rms(t, w, eps, dim=-1):
    return t * torch.rsqrt(t.pow(2).mean(dim, keepdim=True) + eps) * w


def _block(x, attention, ff, n1, n2):
    h = x + attention(n1(x))
    return h + ff(n2(h))


def _layer(w, eps):
    return lambda t: F.layer_norm(t, t.shape[-1:], eps=eps) * w


def _counts(pieces, freqs):
    counts = {}
    for ids, n in zip(pieces, freqs):
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + n
    return counts


def _merge_step(
    pieces, freqs, new_id, *, weighted=True, joined=False, larger=False, first_only=False, from_right=False
):
    counts = _counts(
        [sum(pieces, [])] if joined else pieces, [1] if joined else (freqs if weighted else [1] * len(pieces))
    )
    top = max(counts.values())
    pair = (max if larger else min)(p for p, n in counts.items() if n == top)

    def apply(ids):
        if first_only:
            for i in range(len(ids) - 1):
                if (ids[i], ids[i + 1]) == pair:
                    return ids[:i] + [new_id] + ids[i + 2 :]
            return ids
        if from_right:
            return merge(ids[::-1], pair[::-1], new_id)[::-1]
        return merge(ids, pair, new_id)

    return pair, [apply(list(p)) for p in pieces]


def _encode(piece, merges, *, start=None, leftmost=False, latest=False, once=False):
    ids = start(piece) if start else list(piece.encode("utf-8"))
    while len(ids) >= 2:
        present = [(i, p) for i, p in enumerate(zip(ids, ids[1:])) if p in merges]
        if not present:
            break
        if leftmost:
            i, pair = present[0]
            ids = ids[:i] + [merges[pair]] + ids[i + 2 :]
        else:
            pair = (max if latest else min)((p for _, p in present), key=merges.get)
            ids = merge(ids, pair, merges[pair])
        if once:
            break
    return ids


def _params(d, h, kv, f, *, kv_width=None, ff_mats=3, norms=2, biases=False):
    d_head = d // h
    kv_width = kv * d_head if kv_width is None else kv_width(d, h, kv)
    count = 2 * d * d + 2 * d * kv_width + ff_mats * d * f + norms * d
    return count + (3 * d + 2 * kv * d_head + 2 * f if biases else 0)


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize(
    "checker, wrong, hint",
    [
        (checks.check_swiglu, lambda x, w1, w3, w2: ((x @ w1.T) * F.silu(x @ w3.T)) @ w2.T, "SiLU is applied to the value"),
        (checks.check_swiglu, lambda x, w1, w3, w2: (F.silu(x @ w1.T) * F.silu(x @ w3.T)) @ w2.T, "applied to both halves"),
        (checks.check_swiglu, lambda x, w1, w3, w2: ((x @ w1.T) * (x @ w3.T)) @ w2.T, "there is no SiLU"),
        (checks.check_swiglu, lambda x, w1, w3, w2: (torch.sigmoid(x @ w1.T) * (x @ w3.T)) @ w2.T, "sigmoid gate"),
        (checks.check_swiglu, lambda x, w1, w3, w2: (F.gelu(x @ w1.T) * (x @ w3.T)) @ w2.T, "you used GELU"),
        (checks.check_swiglu, lambda x, w1, w3, w2: (F.silu(x @ w1.T) + (x @ w3.T)) @ w2.T, "are added"),
        (checks.check_swiglu, lambda x, w1, w3, w2: F.silu(x @ w1.T) @ w2.T, "w3 is not used"),
        (checks.check_swiglu, lambda x, w1, w3, w2: F.silu(((x @ w1.T) * (x @ w3.T)) @ w2.T), "applied after w2"),
        (checks.check_swiglu, lambda x, w1, w3, w2: F.silu(x @ w1.T) * (x @ w3.T), "shape"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: _block(x, a, f, _layer(w1, eps), _layer(w2, eps)), "that is LayerNorm"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: (lambda h: _rms(h + f(h), w2, eps))(_rms(x + a(x), w1, eps)), "this is post-norm"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: rms_norm_block(x, a, f, w2, w1, eps), "are swapped"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: rms_norm_block(x, a, f, w1, w1, eps), "uses weight1"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: (lambda h: h + f(_rms(h, w2, eps)))(a(_rms(x, w1, eps))), "around attention is missing"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: f(_rms(x + a(_rms(x, w1, eps)), w2, eps)), "around the feed-forward is missing"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: _block(x, a, f, lambda t: t / (t.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w1, lambda t: t / (t.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w2), "outside the square root"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: rms_norm_block(x, a, f, 1.0, 1.0, eps), "weight is not applied"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: _block(x, a, f, lambda t: _rms(t, w1, eps, 1), lambda t: _rms(t, w2, eps, 1)), "over seq"),
        (checks.check_rms_norm_block, lambda x, a, f, w1, w2, eps: x + a(_rms(x, w1, eps)) + f(_rms(x, w2, eps)), r"reads RMSNorm2\(x\)"),
        (checks.check_repeat_kv, lambda x, g: x.repeat(1, g, 1, 1), "tiled"),
        (checks.check_repeat_kv, lambda x, g: repeat(x, "batch kv_heads seq d_head -> batch (groups kv_heads) seq d_head", groups=g), "tiled"),
        (checks.check_repeat_kv, lambda x, g: x.repeat_interleave(g, dim=2), "Only the heads axis grows"),
        (checks.check_repeat_kv, lambda x, g: x.repeat_interleave(g, dim=1)[:, : x.shape[1]], "Only the heads axis grows"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, h, f), "k and v are full width"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f, ff_mats=2), "has two matrices"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f, norms=0), "RMSNorm weights are missing"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f, norms=4), "a bias in each norm"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f, biases=True), "Llama's have none"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f, kv_width=lambda d, h, kv: kv), r"not kv_heads \* d_head"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f) - d * kv * (d // h), "only one of k and v"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: _params(d, h, kv, f) + 1, "your count is"),
        (checks.check_llama_layer_parameters, lambda d, h, kv, f: float(_params(d, h, kv, f)), "whole number"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n, weighted=False), "each piece is counted once"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n, joined=True), "across pieces"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n, larger=True), "the larger pair"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n, first_only=True), "only the first occurrence"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n, from_right=True), "merged from the right"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n + 1), "the merged pieces are"),
        (checks.check_bpe_merge_step, lambda p, fr, n: _merge_step(p, fr, n)[0], "return a tuple"),
        (checks.check_bpe_encode, lambda piece, m: _encode(piece, m, start=lambda s: [ord(ch) for ch in s]), "code points"),
        (checks.check_bpe_encode, lambda piece, m: _encode(piece, m, leftmost=True), "leftmost pair"),
        (checks.check_bpe_encode, lambda piece, m: _encode(piece, m, latest=True), "learnt last first"),
        (checks.check_bpe_encode, lambda piece, m: _encode(piece, m, once=True), "only one merge"),
        (checks.check_bpe_encode, lambda piece, m: list(piece.encode("utf-8")), "encodes as"),
        (checks.check_bpe_encode, lambda piece, m: torch.tensor(bpe_encode(piece, m)), "list of int"),
    ],
)
def test_checker_names_the_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checker(wrong)
# fmt: on


def test_the_merge_step_may_change_the_pieces_in_place():
    def in_place(pieces, freqs, new_id):
        pair, merged = bpe_merge_step(pieces, freqs, new_id)
        pieces[:] = merged
        return pair, pieces

    assert checks.check_bpe_merge_step(in_place)


def test_encoding_by_applying_each_merge_in_rank_order_is_also_right():
    """Merging pair after pair in the order they were learnt gives the same ids as the lowest-rank-first
    loop (a merge only ever makes pairs learnt later), so the checker accepts it."""

    def rank_order(piece, merges):
        ids = list(piece.encode("utf-8"))
        for pair, new_id in merges.items():
            ids = merge(ids, pair, new_id)
        return ids

    assert checks.check_bpe_encode(rank_order)


def test_the_counts_checker_knows_llama_3_8bs_layer():
    d, f = 4096, 14336
    assert llama_layer_parameters(d, 32, 8, f) == 2 * d * d + 2 * d * 1024 + 3 * d * f + 2 * d == 218_112_000
    assert math.isclose(32 * 218_112_000 + 2 * 128_256 * d + d, 8.03e9, rel_tol=1e-3)  # the released 8.03B
