"""Chapter 5 checkers (models): typical wrong answers, each rejected with the hint that names it."""
import pytest
import torch


# Published counts: BERT (Devlin et al. 2019; BertModel with pooler), GPT-2 small (Radford et al. 2019).
PUBLISHED = {"bert-base": 109_482_240, "bert-large": 335_141_888, "gpt2-small": 124_439_808}


from companion.checks import CheckFailed
from companion.checks import models as checks


# Reference answers, and one typical wrong answer per hint.

def encoder_block(x, block, pre=False, residual=True, norm=True, swap=False):
    first, second = (block.feed_forward, block.attention) if swap else (block.attention, block.feed_forward)
    for sub in (first, second):
        ln = sub.norm if norm else (lambda t: t)
        if pre:
            x = x + sub.sublayer(ln(x))
        else:
            x = ln((x if residual else 0) + sub.sublayer(x))
    return x


def decoder_block(x, memory, block, self_causal=True, cross_memory=True, cross_causal=False, cross_first=False):
    def self_part(h):
        return block.attention.norm(h + block.attention.sublayer(h, causal=self_causal))

    def cross_part(h):
        context = memory if cross_memory else None
        return block.cross_attention.norm(h + block.cross_attention.sublayer(h, context, causal=cross_causal))

    h = self_part(cross_part(x)) if cross_first else cross_part(self_part(x))
    return block.feed_forward.norm(h + block.feed_forward.sublayer(h))


def next_token_probabilities(hidden, embedding, position=-1, dim=-1, final="softmax"):
    logits = hidden[:, position] @ embedding.T
    return {"softmax": logits.softmax(dim), "none": logits, "log": logits.log_softmax(dim)}[final]


def layer_parameters(d_model, d_ff, cross, bias=True, norms=True, projections=4, ff_bias=True, cross_attn=True,
                     cross_norm=True):
    attention = projections * (d_model**2 + (d_model if bias else 0))
    feed_forward = 2 * d_model * d_ff + ((d_ff + d_model) if bias and ff_bias else 0)
    norm = 2 * d_model if norms else 0
    if not cross:
        return attention + feed_forward + 2 * norm
    return (2 if cross_attn else 1) * attention + feed_forward + (3 if cross_norm and cross_attn else 2) * norm


def greedy(model, src, length, start_id, position=-1, keep_start=False, feed_back=True):
    memory = model.encode(src)
    if not feed_back:
        return model.decode(torch.full((src.shape[0], length), start_id), memory).argmax(-1)
    target = torch.full((src.shape[0], 1), start_id)
    for _ in range(length):
        target = torch.cat([target, model.decode(target, memory)[:, position].argmax(-1, keepdim=True)], dim=1)
    return target if keep_start else target[:, 1:]






def with_(fn, **kwargs):
    return lambda *args: fn(*args, **kwargs)


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
        (checks.check_decoder_block, lambda x, memory, block: block.cross_attention.sublayer(memory, x),
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
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)


