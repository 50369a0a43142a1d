"""Chapter 5 checkers (models): typical wrong answers, each rejected with the hint that names it."""

import pytest
import torch
import torch.nn.functional as F

from companion.checks import CheckFailed
from companion.checks import models as checks
from companion.layers import LayerNorm

# Reference answers, and one typical wrong answer per hint.


def _norms(block, norms):
    """The norms an encoder block's answer uses: its own ("own"), or a typical mix-up."""
    a, f = block.attention_norm, block.feed_forward_norm
    plain = lambda t: F.layer_norm(t, t.shape[-1:])  # noqa: E731
    return {
        "own": (a, f),
        "first": (a, a),
        "last": (f, f),
        "swapped": (f, a),
        "plain": (plain, plain),
        "fresh": (LayerNorm(a.weight.shape[0]), LayerNorm(a.weight.shape[0])),
    }[norms]


def encoder_block(x, block, pre=False, residual=True, norm=True, swap=False, norms="own"):
    first, second = (block.feed_forward, block.attention) if swap else (block.attention, block.feed_forward)
    chosen = dict(zip((block.attention, block.feed_forward), _norms(block, norms)))
    for sub in (first, second):
        ln = chosen[sub] if norm else (lambda t: t)
        if pre:
            x = x + sub(ln(x))
        else:
            x = ln((x if residual else 0) + sub(x))
    return x


def decoder_block(
    x,
    memory,
    block,
    self_causal=True,
    cross_memory=True,
    cross_causal=False,
    cross_first=False,
    norms=(0, 1, 2),
):
    own = (block.attention_norm, block.cross_attention_norm, block.feed_forward_norm)
    n1, n2, n3 = (
        [lambda t: F.layer_norm(t, t.shape[-1:])] * 3 if norms == "plain" else [own[i] for i in norms]
    )

    def self_part(h):
        return n1(h + block.attention(h, causal=self_causal))

    def cross_part(h):
        context = memory if cross_memory else None
        return n2(h + block.cross_attention(h, context, causal=cross_causal))

    h = self_part(cross_part(x)) if cross_first else cross_part(self_part(x))
    return n3(h + block.feed_forward(h))


def next_token_probabilities(hidden, embedding, position=-1, dim=-1, final="softmax"):
    logits = hidden[:, position] @ embedding.T
    return {"softmax": logits.softmax(dim), "none": logits, "log": logits.log_softmax(dim)}[final]


def layer_parameters(
    d_model, d_ff, cross, bias=True, norms=True, projections=4, ff_bias=True, cross_attn=True, cross_norm=True
):
    attention = projections * (d_model**2 + (d_model if bias else 0))
    feed_forward = 2 * d_model * d_ff + ((d_ff + d_model) if bias and ff_bias else 0)
    norm = 2 * d_model if norms else 0
    if not cross:
        return attention + feed_forward + 2 * norm
    return (
        (2 if cross_attn else 1) * attention + feed_forward + (3 if cross_norm and cross_attn else 2) * norm
    )


def _count(d, f, cross, **mistake):
    return checks._block_count(d, f, cross, **mistake)


def _greedy_newest_only(model, src, length, start_id):
    memory = model.encode(src)
    target = torch.full((src.shape[0], 1), start_id)
    for _ in range(length):
        target = torch.cat(
            [target, model.decode(target[:, -1:], memory)[:, -1].argmax(-1, keepdim=True)], dim=1
        )
    return target[:, 1:]


def greedy(model, src, length, start_id, position=-1, keep_start=False, feed_back=True):
    memory = model.encode(src)
    if not feed_back:
        return model.decode(torch.full((src.shape[0], length), start_id), memory).argmax(-1)
    target = torch.full((src.shape[0], 1), start_id)
    for _ in range(length):
        target = torch.cat(
            [target, model.decode(target, memory)[:, position].argmax(-1, keepdim=True)], dim=1
        )
    return target if keep_start else target[:, 1:]


def with_(fn, **kwargs):
    return lambda *args: fn(*args, **kwargs)


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize(
    "checker, wrong, hint",
    [
        (checks.check_encoder_block, with_(encoder_block, pre=True), "pre-LN"),
        (checks.check_encoder_block, with_(encoder_block, residual=False), "residual connections are missing"),
        (checks.check_encoder_block, with_(encoder_block, norm=False), "LayerNorms are missing"),
        (checks.check_encoder_block, with_(encoder_block, swap=True), "wrong order"),
        (checks.check_encoder_block, lambda x, block: x[:, :-1], "n vectors in, n vectors out"),
        (checks.check_decoder_block, with_(decoder_block, self_causal=False), "self-attention is not masked"),
        (checks.check_decoder_block, with_(decoder_block, cross_memory=False), "reads the decoder's own states"),
        (checks.check_decoder_block, with_(decoder_block, cross_causal=True), "cross-attention is causally masked"),
        (checks.check_decoder_block, with_(decoder_block, cross_first=True), "comes before the masked self-attention"),
        (checks.check_decoder_block, lambda x, memory, block: block.cross_attention(memory, x),
         "queries come from x"),
        (checks.check_next_token_probabilities, with_(next_token_probabilities, final="none"), "these are logits"),
        (checks.check_next_token_probabilities, with_(next_token_probabilities, position=0), "first position"),
        (checks.check_next_token_probabilities, with_(next_token_probabilities, dim=0), "over the batch"),
        (checks.check_next_token_probabilities, with_(next_token_probabilities, final="log"), "log-probabilities"),
        (checks.check_next_token_probabilities, lambda h, e: (h @ e.T).softmax(-1), "one distribution"),
        (checks.check_layer_parameters, with_(layer_parameters, bias=False), "biases are missing"),
        (checks.check_layer_parameters, with_(layer_parameters, norms=False), "LayerNorms are missing"),
        (checks.check_layer_parameters, with_(layer_parameters, projections=3), "projection is missing"),
        (checks.check_layer_parameters, with_(layer_parameters, ff_bias=False), "feed-forward biases are missing"),
        (checks.check_layer_parameters, with_(layer_parameters, cross_attn=False), "cross-attention is missing"),
        (checks.check_layer_parameters, with_(layer_parameters, cross_norm=False), "cross-attention's LayerNorm"),
        (checks.check_layer_parameters, lambda d, f, cross: float(layer_parameters(d, f, cross)), "whole number"),
        (checks.check_greedy_decode, with_(greedy, keep_start=True), "returned the start token"),
        (checks.check_greedy_decode, with_(greedy, position=0), "logits of the first position"),
        (checks.check_greedy_decode, with_(greedy, feed_back=False), "nothing is fed back"),
        (checks.check_greedy_decode, lambda m, s, n, st: greedy(m, s, n, st).float(), "dtype"),
        # beyond the first audit
        (checks.check_encoder_block, lambda x, block: block(x), "you ran the block itself"),
        (checks.check_encoder_block, lambda x, block: block.feed_forward(block.attention(x)), "you chained the sub-layers"),
        (checks.check_decoder_block, lambda x, memory, block: block(x, memory), "you ran the block itself"),
        (checks.check_next_token_probabilities, lambda h, e: (h[:, -1] @ e.T / h.shape[-1] ** 0.5).softmax(-1),
         "belongs to attention scores"),
        (checks.check_encoder_block, with_(encoder_block, norms="first"), "one LayerNorm is used for both"),
        (checks.check_encoder_block, with_(encoder_block, norms="last"), "block.feed_forward_norm is used for both"),
        (checks.check_encoder_block, with_(encoder_block, norms="swapped"), "the norms are swapped"),
        (checks.check_encoder_block, with_(encoder_block, norms="plain"), "without the block's parameters"),
        (checks.check_encoder_block, with_(encoder_block, norms="fresh"), "without the block's parameters"),
        (checks.check_decoder_block, with_(decoder_block, norms=(0, 2, 1)), "cross-attention and feed-forward norms are swapped"),
        (checks.check_decoder_block, with_(decoder_block, norms=(1, 0, 2)), "self-attention and cross-attention norms are swapped"),
        (checks.check_decoder_block, with_(decoder_block, norms=(0, 0, 0)), "one LayerNorm is used for every sub-layer"),
        (checks.check_decoder_block, with_(decoder_block, norms=(0, 0, 2)), "reuses the self-attention's norm"),
        (checks.check_decoder_block, with_(decoder_block, norms="plain"), "without the block's parameters"),
        (checks.check_next_token_probabilities, lambda h, e: (h[:, -1] @ e).softmax(-1), "transposed embedding"),
        (checks.check_next_token_probabilities, lambda h, e: (h @ e.T).softmax(1)[:, -1], "over positions"),
        (checks.check_next_token_probabilities, lambda h, e: (h.mean(1) @ e.T).softmax(-1), "averaged the positions"),
        (checks.check_layer_parameters, lambda d, f, cross: _count(d, f, cross, attention_bias=False),
         "attention projections' biases are missing"),
        (checks.check_layer_parameters, lambda d, f, cross: _count(d, f, cross, norm_params=1), "you counted one of them"),
        (checks.check_layer_parameters, lambda d, f, cross: _count(d, f, cross, missing_norms=1), "a LayerNorm is missing"),
        (checks.check_layer_parameters, lambda d, f, cross: _count(d, f, cross, ff_layers=1), "has two layers"),
        (checks.check_layer_parameters, lambda d, f, cross: layer_parameters(d, f, True), "no cross-attention"),
        (checks.check_greedy_decode, lambda m, s, n, st: greedy(m, s, n, 0), "starts with token 0"),
        (checks.check_greedy_decode, lambda m, s, n, st: greedy(m, s, n - 1, st), "must run `length` times"),
        (checks.check_greedy_decode, lambda m, s, n, st: _greedy_newest_only(m, s, n, st), "only the newest token"),
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)
# fmt: on
