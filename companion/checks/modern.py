"""Checkers for the chapter 8 (from GPT-2 to today's decoders) exercises: SwiGLU, the pre-RMSNorm block,
repeat-KV for grouped-query attention, a Llama layer's parameter count, one BPE merge step and the BPE
encode loop, each compared with the companion and the mistake named."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor

from ..attention import MultiHeadAttention, repeat_kv
from ..bpe import BPETokenizer, merge
from ..layers import SwiGLU
from ._core import Checker, random_tensor

__all__ = [
    "check_swiglu",
    "check_rms_norm_block",
    "check_repeat_kv",
    "check_llama_layer_parameters",
    "check_bpe_merge_step",
    "check_bpe_encode",
]

B, S, D, FF = 2, 5, 12, 20  # batch, seq, d_model, d_ff: all different, so a swapped axis shows
EPS = 0.1  # large on purpose, so eps in the wrong place shows


# ---------------------------------------------------------------- SwiGLU


def check_swiglu(fn) -> bool:
    """fn(x, w1, w3, w2) -> w2(SiLU(w1 x) * w3 x) for x (batch, seq, d_model); w1, w3 (d_ff, d_model) and
    w2 (d_model, d_ff) are weight matrices as nn.Linear stores them (out, in)."""
    with Checker("check_swiglu") as c:
        x = random_tensor(B, S, D, seed=1)
        w1, w3 = random_tensor(FF, D, seed=2) / D**0.5, random_tensor(FF, D, seed=3) / D**0.5
        w2 = random_tensor(D, FF, seed=4) / FF**0.5
        got = c.call(fn, x, w1, w3, w2)
        reference = SwiGLU(D, FF)
        with torch.no_grad():
            for layer, weight in ((reference.w1, w1), (reference.w3, w3), (reference.w2, w2)):
                layer.weight.copy_(weight)
            expected = reference(x)
        gate, value = x @ w1.T, x @ w3.T
        c.diagnose(
            got,
            expected,
            {
                "SiLU is applied to the value (w3 x); it belongs on the gate: SiLU(w1 x) * w3 x": (
                    gate * F.silu(value)
                )
                @ w2.T,
                "SiLU is applied to both halves; only the gate w1 x goes through it": (
                    F.silu(gate) * F.silu(value)
                )
                @ w2.T,
                "there is no SiLU: the gate is w1 x passed through SiLU before the product": (gate * value)
                @ w2.T,
                "you used a sigmoid gate (GLU); SwiGLU's gate is SiLU(z) = z * sigmoid(z)": (
                    torch.sigmoid(gate) * value
                )
                @ w2.T,
                "you used GELU; SwiGLU's gate is SiLU (Swish), z * sigmoid(z)": (F.gelu(gate) * value) @ w2.T,
                "the gate and the value are added; SwiGLU multiplies them element-wise": (
                    F.silu(gate) + value
                )
                @ w2.T,
                "w3 is not used: the plain SiLU MLP is w2(SiLU(w1 x)); SwiGLU multiplies by w3 x first": F.silu(
                    gate
                )
                @ w2.T,
                "SiLU is applied after w2; it acts on the gate, w1 x, before the product": F.silu(
                    (gate * value) @ w2.T
                ),
            },
        )
    return c.passed


# ---------------------------------------------------------------- the pre-RMSNorm block


def _rms(t: Tensor, weight: Tensor, eps: float) -> Tensor:
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight


def check_rms_norm_block(fn) -> bool:
    """fn(x, attention, feed_forward, weight1, weight2, eps) -> the Llama block:
    h = x + attention(RMSNorm1(x)); out = h + feed_forward(RMSNorm2(h)), with RMSNorm_i(t) =
    t / sqrt(mean(t^2 over d_model) + eps) * weight_i. attention and feed_forward are functions of a
    (batch, seq, d_model) tensor."""
    with Checker("check_rms_norm_block") as c:
        torch.manual_seed(5)
        mha, ff = MultiHeadAttention(D, 3, kv_heads=1, bias=False).eval(), SwiGLU(D, FF).eval()
        attention = lambda t: mha(t, causal=True)  # noqa: E731
        x = random_tensor(B, S, D, seed=6) * 2 + 0.5  # off-centre, so centring (LayerNorm) shows
        w1, w2 = random_tensor(D, seed=7) * 0.5 + 1, random_tensor(D, seed=8) * 0.5 + 1
        got = c.call(fn, x, attention, ff, w1, w2, EPS)

        def block(norm1, norm2, *, skip1=True, skip2=True, post=False):
            if post:
                h = norm1(x + attention(x))
                return norm2(h + ff(h))
            h = (x if skip1 else 0) + attention(norm1(x))
            return (h if skip2 else 0) + ff(norm2(h))

        with torch.no_grad():
            rms1, rms2 = (lambda t: _rms(t, w1, EPS)), (lambda t: _rms(t, w2, EPS))
            expected = block(rms1, rms2)

            def layer(w):
                return lambda t: F.layer_norm(t, t.shape[-1:], eps=EPS) * w

            mistakes = {
                "you centred each token (subtracted its mean): that is LayerNorm; RMSNorm only divides by "
                "sqrt(mean(x^2) + eps)": block(layer(w1), layer(w2)),
                "this is post-norm, RMSNorm(x + F(x)); Llama normalises before each sub-layer: x + F(RMSNorm(x))": block(
                    rms1, rms2, post=True
                ),
                "weight1 and weight2 are swapped: weight1 belongs to the norm before attention": block(
                    lambda t: _rms(t, w2, EPS), lambda t: _rms(t, w1, EPS)
                ),
                "the feed-forward norm uses weight1; each sub-layer has its own norm, weight2 for the feed-forward": block(
                    rms1, rms1
                ),
                "the skip connection around attention is missing: h = x + attention(RMSNorm1(x))": block(
                    rms1, rms2, skip1=False
                ),
                "the skip connection around the feed-forward is missing: out = h + feed_forward(RMSNorm2(h))": block(
                    rms1, rms2, skip2=False
                ),
                "eps is added outside the square root; it belongs inside: sqrt(mean(x^2) + eps)": block(
                    lambda t: t / (t.pow(2).mean(-1, keepdim=True).sqrt() + EPS) * w1,
                    lambda t: t / (t.pow(2).mean(-1, keepdim=True).sqrt() + EPS) * w2,
                ),
                "the norm's weight is not applied: multiply the normalised x by weight1 (and weight2)": block(
                    lambda t: _rms(t, 1.0, EPS), lambda t: _rms(t, 1.0, EPS)
                ),
                "the mean square is taken over seq (dim 1); each token is normalised over its own features (dim -1)": block(
                    lambda t: t * torch.rsqrt(t.pow(2).mean(1, keepdim=True) + EPS) * w1,
                    lambda t: t * torch.rsqrt(t.pow(2).mean(1, keepdim=True) + EPS) * w2,
                ),
                "the feed-forward reads RMSNorm2(x), the block's input; it reads the stream after attention, "
                "RMSNorm2(h)": (x + attention(rms1(x))) + ff(rms2(x)),
            }
        c.diagnose(got, expected, mistakes)
    return c.passed


# ---------------------------------------------------------------- repeat-KV


def check_repeat_kv(fn) -> bool:
    """fn(x, groups) -> (batch, kv_heads * groups, seq, d_head) from x (batch, kv_heads, seq, d_head):
    each kv head repeated `groups` times in a row, so query heads 0..groups-1 share kv head 0."""
    with Checker("check_repeat_kv") as c:
        kv_heads, groups, d_head = 2, 3, 4
        x = random_tensor(B, kv_heads, S, d_head, seed=9)
        got = c.call(fn, x, groups)
        expected = repeat_kv(x, groups)
        c.expect_shape(
            got,
            tuple(expected.shape),
            "your result",
            hint="Only the heads axis grows, from kv_heads to kv_heads * groups.",
        )
        c.diagnose(
            got,
            expected,
            {
                "the kv heads are tiled (0, 1, 0, 1, ...), not repeated in place (0, 0, 0, 1, 1, 1): query head h "
                "reads kv head h // groups, so repeat each head `groups` times in a row (repeat_interleave, or "
                "einops '(kv_heads groups)')": repeat(
                    x, "batch kv_heads seq d_head -> batch (groups kv_heads) seq d_head", groups=groups
                ),
            },
        )
    return c.passed


# ---------------------------------------------------------------- a Llama layer's parameters


def _reference_llama_layer(d_model: int, heads: int, kv_heads: int, d_ff: int) -> int:
    d_head = d_model // heads
    return 2 * d_model * d_model + 2 * d_model * kv_heads * d_head + 3 * d_model * d_ff + 2 * d_model


def check_llama_layer_parameters(fn) -> bool:
    """fn(d_model, heads, kv_heads, d_ff) -> int: the parameters of one Llama block, as count_parameters
    counts them: q, k, v, out projections (no biases), SwiGLU's w1, w3, w2, and two RMSNorm weights."""
    with Checker("check_llama_layer_parameters") as c:
        cases = [(24, 6, 2, 64), (4096, 32, 8, 14336), (96, 4, 4, 256)]  # small GQA, Llama 3 8B, no grouping
        got = {case: c.expect_int(c.call(fn, *case), "your count") for case in cases}
        expected = {case: _reference_llama_layer(*case) for case in cases}
        if got != expected:
            _name_count_mistake(c, got, expected, cases)
    return c.passed


def _name_count_mistake(c: Checker, got: dict, expected: dict, cases: list) -> None:
    """Fail with the hint of the first typical miscount that gives every one of the learner's counts."""
    mistakes = {
        "k and v are full width; with grouped-query attention each is d_model x (kv_heads * d_head)": lambda d, h, kv, f: (
            4 * d * d + 3 * d * f + 2 * d
        ),
        "the feed-forward has two matrices here; SwiGLU has three (w1, w3, w2), each d_model x d_ff": lambda d, h, kv, f: (
            _reference_llama_layer(d, h, kv, f) - d * f
        ),
        "the RMSNorm weights are missing: two norms of d_model weights each": lambda d, h, kv, f: (
            _reference_llama_layer(d, h, kv, f) - 2 * d
        ),
        "you counted a bias in each norm; RMSNorm has a weight only": lambda d, h, kv, f: (
            _reference_llama_layer(d, h, kv, f) + 2 * d
        ),
        "you counted biases in the linear layers; Llama's have none": lambda d, h, kv, f: (
            _reference_llama_layer(d, h, kv, f) + 2 * d + 2 * kv * (d // h) + 2 * f + d
        ),
        "k and v are kv_heads wide, not kv_heads * d_head: each kv head is d_head features": lambda d, h, kv, f: (
            2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
        ),
        "only one of k and v is counted at kv_heads * d_head; both are": lambda d, h, kv, f: (
            2 * d * d + d * kv * (d // h) + 3 * d * f + 2 * d
        ),
    }
    for hint, count in mistakes.items():
        if all(got[case] == count(*case) for case in cases):
            c.fail(hint)
    worst = next(case for case in cases if got[case] != expected[case])
    c.fail(
        f"for d_model, heads, kv_heads, d_ff = {worst} your count is {got[worst]:,}, expected "
        f"{expected[worst]:,}; add up q, k, v, out, w1, w3, w2 and the two norms"
    )


# ---------------------------------------------------------------- BPE: one merge step


def _count_pairs(pieces, freqs) -> Counter:
    counts: Counter = Counter()
    for ids, n in zip(pieces, freqs):
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


def _best(counts: Counter, tie_larger: bool = False):
    top = max(counts.values())
    tied = [p for p, n in counts.items() if n == top]
    return max(tied) if tie_larger else min(tied)


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2 :]
    return list(ids)


def _merge_right_to_left(ids, pair, new_id):
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def check_bpe_merge_step(fn) -> bool:
    """fn(pieces, freqs, new_id) -> (pair, new_pieces): the most frequent adjacent pair over all pieces,
    each piece counted freqs[i] times (ties: the smaller pair), and every piece with that pair replaced by
    new_id, left to right. pieces is a list of lists of token ids; pairs never cross from one piece to
    the next."""
    with Checker("check_bpe_merge_step") as c:
        cases = [
            # the last of one piece and the first of the next, (4, 1), would win if pieces were joined
            (
                [[1, 2], [4], [1, 9], [4], [1, 3], [4], [1, 5], [2, 3], [2, 3]],
                [1, 1, 1, 1, 1, 1, 1, 1, 1],
                302,
            ),
            # (1, 2) occurs 2 * 5 = 10 times, (2, 3) 4 times, but in more pieces
            ([[1, 2, 1, 2], [2, 3], [2, 3, 4], [2, 3, 9], [2, 3], [5, 6]], [5, 1, 1, 1, 1, 1], 300),
            # a tie between (7, 7) and (8, 7), each 6 times; (7, 7, 7) merges as (new, 7)
            ([[7, 7, 7], [8, 7], [7, 7, 7]], [2, 6, 1], 301),
        ]
        for pieces, freqs, new_id in cases:
            copies = [list(p) for p in pieces]
            result = c.call(fn, copies, list(freqs), new_id)
            if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], (list, tuple))):
                c.fail(f"return a tuple (pair, new_pieces), new_pieces a list of lists; got {result!r:.60}")
            pair, new_pieces = result
            counts = _count_pairs(pieces, freqs)
            expected_pair = _best(counts)
            if tuple(pair) != expected_pair:
                joined = [sum(pieces, [])]
                wrong = {
                    "each piece is counted once; count it freqs[i] times (a piece that occurs 5 times holds its "
                    "pairs 5 times)": _best(_count_pairs(pieces, [1] * len(pieces))),
                    "you counted pairs across pieces (the last id of one and the first of the next); pairs never "
                    "cross a piece boundary": _best(_count_pairs(joined, [1])),
                    "on a tie you took the larger pair; take the smaller one, min(...), as the companion does": _best(
                        counts, tie_larger=True
                    ),
                }
                for hint, wrong_pair in wrong.items():
                    if tuple(pair) == wrong_pair and wrong_pair != expected_pair:
                        c.fail(hint)
                c.fail(
                    f"the pair is {tuple(pair)}; the most frequent pair is {expected_pair}, "
                    f"{counts[expected_pair]} times"
                )
            expected = [merge(p, expected_pair, new_id) for p in pieces]
            new_pieces = [list(p) for p in new_pieces]
            if new_pieces != expected:
                wrong = {
                    "only the first occurrence in each piece is merged; replace every one, left to right": [
                        _merge_first_only(p, expected_pair, new_id) for p in pieces
                    ],
                    "overlapping pairs are merged from the right; read each piece left to right, so (7, 7, 7) "
                    "becomes (new, 7)": [_merge_right_to_left(p, expected_pair, new_id) for p in pieces],
                }
                for hint, wrong_pieces in wrong.items():
                    if new_pieces == wrong_pieces:
                        c.fail(hint)
                c.fail(f"the merged pieces are {new_pieces}; expected {expected}")
    return c.passed


# ---------------------------------------------------------------- BPE: the encode loop


def _reference_tokenizer() -> BPETokenizer:
    """Six merges over the bytes of a, c, d, made by hand so that each typical mistake gives its own ids on
    some piece: "dc", "cd", "ca", "da", then ("cd", "ca") -> "cdca" and ("dc", "d") -> "dcd"."""
    c, d, a = b"c"[0], b"d"[0], b"a"[0]
    return BPETokenizer({(d, c): 256, (c, d): 257, (c, a): 258, (d, a): 259, (257, 258): 260, (256, d): 261})


def _encode_leftmost(piece: bytes, merges) -> list[int]:
    ids = list(piece)
    while True:
        for i, pair in enumerate(zip(ids, ids[1:])):
            if pair in merges:
                ids = ids[:i] + [merges[pair]] + ids[i + 2 :]
                break
        else:
            return ids


def _encode_one_pass(piece: bytes, merges) -> list[int]:
    ids = list(piece)
    if len(ids) >= 2:
        present = [p for p in zip(ids, ids[1:]) if p in merges]
        if present:
            pair = min(present, key=merges.get)
            ids = merge(ids, pair, merges[pair])
    return ids


def check_bpe_encode(fn) -> bool:
    """fn(piece, merges) -> list of token ids: piece (a str) as UTF-8 bytes, then, while any adjacent pair is
    in merges, the pair learnt first (smallest new id) is merged everywhere. merges maps (left, right) ->
    new id, as BPETokenizer.merges does."""
    with Checker("check_bpe_encode") as c:
        tok = _reference_tokenizer()
        merges = dict(tok.merges)
        first_wrong = None
        for piece in ("dcdcc", "ddcdda", "cdca", " naïve", "c", ""):
            got = c.call(fn, piece, dict(merges))
            if not isinstance(got, list) or not all(isinstance(i, int) for i in got):
                c.fail(f"return a list of int token ids; for {piece!r} got {type(got).__name__} {got!r:.60}")
            expected = tok._encode_piece(piece.encode("utf-8"))
            if got == expected:
                continue
            first_wrong = first_wrong or f"{piece!r} encodes as {got}; expected {expected}"
            data = piece.encode("utf-8")
            wrong = {
                "you started from the characters' code points (ord); start from the piece's UTF-8 bytes, "
                "list(piece.encode('utf-8')): 'ï' is two bytes": _encode_loop_from(
                    [ord(ch) for ch in piece], merges
                )
                if all(ord(ch) < 256 for ch in piece)
                else None,
                "you merged the leftmost pair that has a merge; merge the pair learnt first (the smallest new "
                "id) wherever it is": _encode_leftmost(data, merges),
                "you merged the pair learnt last first; the earliest merge (smallest new id) goes first, as in "
                "training": _encode_loop_from(data, merges, pick=max),
                "you applied only one merge; repeat until no adjacent pair has a merge": _encode_one_pass(
                    data, merges
                ),
            }
            matches = [
                hint for hint, wrong_ids in wrong.items() if wrong_ids is not None and got == wrong_ids
            ]
            if len(matches) == 1:  # a piece on which two mistakes give the same ids names neither
                c.fail(matches[0])
        if first_wrong:
            c.fail(first_wrong)
    return c.passed


def _encode_loop_from(ids: list[int], merges, pick=min) -> list[int]:
    """The encode loop from `ids`: apply the merge `pick` chooses (min: the earliest learnt) until
    none applies. pick=max is the mistake of replaying merges latest first."""
    ids = list(ids)
    while len(ids) >= 2:
        present = [p for p in zip(ids, ids[1:]) if p in merges]
        if not present:
            break
        pair = pick(present, key=merges.get)
        ids = merge(ids, pair, merges[pair])
    return ids
