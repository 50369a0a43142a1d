"""Checkers for the chapter 5 (assembling the transformer) exercises: blocks, the output head,
parameter counts and greedy decoding, each compared with the companion and the mistake named."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import TransformerConfig
from ..decoding import generate
from ..models import DecoderBlock, EncoderBlock, EncoderDecoder, count_parameters
from ._core import Checker, random_tensor, randomise_norms

__all__ = [
    "check_encoder_block",
    "check_decoder_block",
    "check_next_token_probabilities",
    "check_layer_parameters",
    "check_greedy_decode",
]

B, T, S, D, H, FF = 2, 5, 7, 12, 3, 20  # batch, target seq, source seq, d_model, heads, d_ff: all different


def _config(**changes) -> TransformerConfig:
    base = TransformerConfig(
        kind="encoder-decoder",
        vocab_size=11,
        context_length=16,
        d_model=D,
        heads=H,
        layers=1,
        d_ff=FF,
        norm="post",
        activation="relu",
    )
    return base.replace(**changes)


def _encoder_block(seed: int) -> EncoderBlock:
    torch.manual_seed(seed)
    block = EncoderBlock(_config()).eval()
    randomise_norms(block, seed)  # so each norm is its own function, and a swapped or skipped one shows
    return block


def _decoder_block(seed: int) -> DecoderBlock:
    torch.manual_seed(seed)
    block = DecoderBlock(_config(), cross=True).eval()
    randomise_norms(block, seed)
    return block


def _plain_norm(t: Tensor) -> Tensor:
    """F.layer_norm without the block's parameters: a typical mistake."""
    return F.layer_norm(t, t.shape[-1:], eps=1e-5)


def _wholes(block) -> dict:
    """The block itself: running it skips what the exercise asks to write."""
    parts = ", ".join(
        f"block.{name}, block.{name}_norm"
        for name in ("attention", "cross_attention", "feed_forward")
        if getattr(block, name, None) is not None
    )
    return {
        block: f"you ran the block itself, block(x); the exercise is to write what it computes, from {parts}"
    }


def check_encoder_block(fn) -> bool:
    """fn(x, block) -> (batch, seq, d_model): the post-LN encoder block of Vaswani et al. 2017 built from
    block.attention, block.attention_norm, block.feed_forward, block.feed_forward_norm."""
    with Checker("check_encoder_block") as c:
        block = _encoder_block(1)
        x = random_tensor(B, S, D, seed=2)
        attn, norm1 = block.attention, block.attention_norm
        ff, norm2 = block.feed_forward, block.feed_forward_norm
        with torch.no_grad():
            expected = block(x)
            h = x + attn(norm1(x))
            pre = h + ff(norm2(h))
            h = norm1(attn(x))
            no_residual = norm2(ff(h))
            h = x + attn(x)
            no_norm = h + ff(h)
            h = norm2(x + ff(x))
            swapped = norm1(h + attn(h))
            chained = ff(attn(x))

            def post(first, second):
                h = first(x + attn(x))
                return second(h + ff(h))

            one_norm, last_norm = post(norm1, norm1), post(norm2, norm2)
            norms_swapped, plain = post(norm2, norm1), post(_plain_norm, _plain_norm)
        with c.forbid(_wholes(block)):
            got = c.call(fn, x, block)
        c.expect_shape(got, (B, S, D), hint="n vectors in, n vectors out, each of width d_model")
        c.diagnose(
            got,
            expected,
            {
                "you normalised before each sub-layer, x + F(LN(x)) (pre-LN); this block is post-LN: LN(x + F(x))": pre,
                "you chained the sub-layers, feed_forward(attention(x)): each needs its residual connection and its "
                "norm, LN(x + F(x))": chained,
                "the residual connections are missing: add the sub-layer's input to its output before the norm, "
                "LN(x + F(x))": no_residual,
                "the LayerNorms are missing: each sub-layer's sum goes through its norm, LN(x + F(x))": no_norm,
                "the sub-layers are in the wrong order: self-attention first, then the feed-forward block": swapped,
                "one LayerNorm is used for both sub-layers: each has its own, with its own weight and bias; use "
                "block.attention_norm after the attention and block.feed_forward_norm after the feed-forward": one_norm,
                "block.feed_forward_norm is used for both sub-layers: the attention's sum goes through "
                "block.attention_norm": last_norm,
                "the norms are swapped: block.attention_norm belongs after the attention, block.feed_forward_norm "
                "after the feed-forward": norms_swapped,
                "you normalised without the block's parameters (F.layer_norm without weight and bias, or a fresh "
                "LayerNorm): use the block's own norms, which carry learned weights and biases": plain,
            },
        )
    return c.passed


def check_decoder_block(fn) -> bool:
    """fn(x, memory, block) -> (batch, tgt_seq, d_model): the post-LN decoder block: masked self-attention,
    cross-attention over memory (the encoder output), feed-forward, each as LN(x + F(x))."""
    with Checker("check_decoder_block") as c:
        block = _decoder_block(3)
        x, memory = random_tensor(B, T, D, seed=4), random_tensor(B, S, D, seed=5)
        self_attn, n1 = block.attention, block.attention_norm
        cross, n2 = block.cross_attention, block.cross_attention_norm
        ff, n3 = block.feed_forward, block.feed_forward_norm

        def assemble(
            self_causal=True, cross_source="memory", cross_causal=False, cross_first=False, norms=(n1, n2, n3)
        ) -> Tensor:
            m1, m2, m3 = norms

            def do_self(h):
                return m1(h + self_attn(h, causal=self_causal))

            def do_cross(h):
                context = memory if cross_source == "memory" else None
                return m2(h + cross(h, context, causal=cross_causal))

            with torch.no_grad():
                h = do_self(do_cross(x)) if cross_first else do_cross(do_self(x))
                return m3(h + ff(h))

        with c.forbid(_wholes(block)):
            got = c.call(fn, x, memory, block)
        c.expect_shape(
            got,
            (B, T, D),
            hint="one vector per target position: queries come from x (the decoder), "
            "keys and values of the cross-attention from memory",
        )
        c.diagnose(
            got,
            assemble(),
            {
                "the self-attention is not masked: pass causal=True so a target position cannot see later ones": assemble(
                    self_causal=False
                ),
                "the cross-attention reads the decoder's own states; its keys and values come from memory, "
                "the encoder output: cross(h, memory)": assemble(cross_source="self"),
                "the cross-attention is causally masked: every target position may read every source position": assemble(
                    cross_causal=True
                ),
                "the cross-attention comes before the masked self-attention; the order is self, cross, feed-forward": assemble(
                    cross_first=True
                ),
                "the cross-attention and feed-forward norms are swapped: block.cross_attention_norm follows the "
                "cross-attention, block.feed_forward_norm the feed-forward": assemble(norms=(n1, n3, n2)),
                "the self-attention and cross-attention norms are swapped: block.attention_norm follows the "
                "self-attention, block.cross_attention_norm the cross-attention": assemble(
                    norms=(n2, n1, n3)
                ),
                "one LayerNorm is used for every sub-layer: each has its own, with its own weight and bias": assemble(
                    norms=(n1, n1, n1)
                ),
                "the cross-attention reuses the self-attention's norm: use block.cross_attention_norm": assemble(
                    norms=(n1, n1, n3)
                ),
                "you normalised without the block's parameters (F.layer_norm without weight and bias, or a fresh "
                "LayerNorm): use the block's own norms": assemble(norms=(_plain_norm,) * 3),
            },
        )
    return c.passed


def check_next_token_probabilities(fn) -> bool:
    """fn(hidden, embedding) -> (batch, vocab): next-token probabilities from the last position's
    hidden state through the tied output projection (the embedding matrix, vocab x d_model), then softmax."""
    with Checker("check_next_token_probabilities") as c:
        hidden = random_tensor(B, T, D, seed=6)
        embedding = random_tensor(11, D, seed=7) * 0.5
        logits = hidden @ embedding.T  # (batch, seq, vocab)
        with c.explain(
            {
                "cannot be multiplied": "the output projection is the transposed embedding: hidden "
                "(batch, d_model) @ embedding.T (d_model, vocab) gives (batch, vocab) logits"
            }
        ):
            got = c.call(fn, hidden, embedding)
        c.expect_shape(
            got, (B, 11), hint="one distribution over the vocabulary per sequence, from its last position"
        )
        c.diagnose(
            got,
            logits[:, -1].softmax(-1),
            {
                "these are logits, not probabilities: apply softmax over the vocabulary": logits[:, -1],
                "you used the first position; the next token comes from the last position, hidden[:, -1]": logits[
                    :, 0
                ].softmax(-1),
                "the softmax runs over the batch (dim 0); it belongs on the vocabulary (dim -1)": logits[
                    :, -1
                ].softmax(0),
                "these are log-probabilities: use softmax, not log_softmax": logits[:, -1].log_softmax(-1),
                "the softmax runs over positions (dim 1); take the last position first, then softmax over the "
                "vocabulary": logits.softmax(1)[:, -1],
                "you averaged the positions; the next token comes from the last position alone, hidden[:, -1]": logits.mean(
                    1
                ).softmax(-1),
                "you scaled the logits by 1 / sqrt(d_model): that scale belongs to attention scores; the output "
                "head is hidden @ embedding.T, nothing more": (logits[:, -1] / D**0.5).softmax(-1),
            },
            what="your probabilities",
        )
    return c.passed


def _reference_layer_parameters(d_model: int, d_ff: int, cross: bool) -> int:
    config = TransformerConfig(kind="encoder-decoder", d_model=d_model, heads=1, d_ff=d_ff)
    with torch.device("meta"):  # shapes only, no memory
        block = DecoderBlock(config, cross=True) if cross else EncoderBlock(config)
    return count_parameters(block)


def _block_count(
    d: int,
    f: int,
    cross: bool,
    *,
    attention_bias: bool = True,
    ff_bias: bool = True,
    norm_params: int = 2,
    projections: int = 4,
    norms: int | None = None,
    attentions: int | None = None,
    ff_layers: int = 2,
    missing_norms: int = 0,
) -> int:
    """One block's parameters with a typical mistake switched on (all defaults: the right count)."""
    attentions = (2 if cross else 1) if attentions is None else attentions
    norms = ((3 if cross else 2) if norms is None else norms) - missing_norms
    attention = projections * (d * d + (d if attention_bias else 0))
    feed_forward = d * f + (f if ff_bias else 0) + (d * f + (d if ff_bias else 0) if ff_layers == 2 else 0)
    return attentions * attention + feed_forward + norms * norm_params * d


_PARAMETER_MISTAKES = [  # (hint, the mistake's settings); a count is matched on every case at once
    (
        "the biases are missing: every linear layer has one (d_model per attention projection, d_ff and d_model "
        "in the feed-forward block)",
        dict(attention_bias=False, ff_bias=False),
    ),
    (
        "the attention projections' biases are missing: W_Q, W_K, W_V and W_O each add d_model",
        dict(attention_bias=False),
    ),
    (
        "the feed-forward biases are missing: d_ff for the first layer and d_model for the second",
        dict(ff_bias=False),
    ),
    (
        "the LayerNorms are missing: each sub-layer has one, with a weight and a bias of d_model each",
        dict(norm_params=0),
    ),
    ("each LayerNorm has a weight and a bias, d_model each: you counted one of them", dict(norm_params=1)),
    (
        "a LayerNorm is missing: one per sub-layer (2 in an encoder block, 3 in a decoder block)",
        dict(missing_norms=1),
    ),
    (
        "an attention projection is missing: W_Q, W_K, W_V and the output projection W_O, four d_model x d_model "
        "matrices",
        dict(projections=3),
    ),
    (
        "the feed-forward block has two layers, d_model -> d_ff and d_ff -> d_model: you counted one",
        dict(ff_layers=1),
    ),
]


def _name_parameter_mistake(c: Checker, got: dict, expected: dict) -> None:
    """Fail with the one mistake that explains every count, else with the first wrong count."""
    cases = list(got)
    d, f, cross = first = next(case for case in cases if got[case] != expected[case])
    what = (
        f"for d_model={d}, d_ff={f}, cross={cross} you counted {got[first]:,}, expected {expected[first]:,}"
    )
    for hint, mistake in _PARAMETER_MISTAKES:
        if all(got[case] == _block_count(*case, **mistake) for case in cases):
            c.fail(f"{what}. {hint}")
    encoders_right = all(got[case] == expected[case] for case in cases if not case[2])
    for hint, mistake in [
        (
            "the decoder block's cross-attention is missing: a second attention and a third LayerNorm",
            dict(attentions=1, norms=2),
        ),
        ("the cross-attention's LayerNorm is missing: a decoder block has three", dict(norms=2)),
    ]:
        if encoders_right and all(got[case] == _block_count(*case, **mistake) for case in cases if case[2]):
            c.fail(f"{what}. {hint}")
    if not encoders_right and all(got[case] == expected[case] for case in cases if case[2]):
        c.fail(
            f"{what}. Your decoder counts are right but not the encoder's: an encoder block has one "
            "attention and two LayerNorms, and no cross-attention"
        )
    c.fail(what)


def check_layer_parameters(fn) -> bool:
    """fn(d_model, d_ff, cross) -> int: parameters of one encoder block (cross=False) or one decoder block
    with cross-attention (cross=True), with biases and LayerNorm weights, as count_parameters counts them."""
    with Checker("check_layer_parameters") as c:
        cases = [(d, f, cross) for d, f in ((24, 40), (512, 2048)) for cross in (False, True)]
        got = {case: c.expect_int(c.call(fn, *case), "your count") for case in cases}
        expected = {case: _reference_layer_parameters(*case) for case in cases}
        if got != expected:
            _name_parameter_mistake(c, got, expected)
    return c.passed


def _checker_model() -> EncoderDecoder:
    # Larger-than-default init so the untrained model's greedy choices vary along the sequence.
    torch.manual_seed(2)
    model = EncoderDecoder(_config(layers=2, norm="pre")).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model


def _greedy(model: EncoderDecoder, src: Tensor, length: int, start_id: int) -> Tensor:
    """The reference: the library's greedy generation without a cache, the start token dropped."""
    start = torch.full((src.shape[0], 1), start_id)
    return generate(model, start, length, src_ids=src, use_cache=False)[:, 1:]


def _greedy_first_position(model: EncoderDecoder, src: Tensor, length: int, start_id: int) -> Tensor:
    """A typical mistake, kept for the checker: the next token read from logits[:, 0] instead of [:, -1]."""
    memory = model.encode(src)
    target = torch.full((src.shape[0], 1), start_id)
    for _ in range(length):
        target = torch.cat([target, model.decode(target, memory)[:, 0].argmax(-1, keepdim=True)], dim=1)
    return target[:, 1:]


def _greedy_start_only(model: EncoderDecoder, src: Tensor, length: int, start_id: int) -> Tensor:
    """A typical mistake, kept for the checker: one decoder pass over start tokens only, nothing fed back."""
    logits = model.decode(torch.full((src.shape[0], length), start_id), model.encode(src))
    return logits.argmax(-1)


def _greedy_last_token_only(model: EncoderDecoder, src: Tensor, length: int, start_id: int) -> Tensor:
    """A typical mistake, kept for the checker: each step decodes only the newest token, with no cache."""
    memory = model.encode(src)
    target = torch.full((src.shape[0], 1), start_id)
    for _ in range(length):
        target = torch.cat(
            [target, model.decode(target[:, -1:], memory)[:, -1].argmax(-1, keepdim=True)], dim=1
        )
    return target[:, 1:]


def check_greedy_decode(fn) -> bool:
    """fn(model, src_ids, length, start_id) -> (batch, length) target ids chosen by argmax one at a time,
    each step decoding the whole target so far (start token first, not returned)."""
    with Checker("check_greedy_decode") as c:
        model = _checker_model()
        src = torch.tensor([[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]])
        length, start = 6, 4  # not 0, so a start token typed in as 0 shows
        got = c.expect_tensor(c.call(fn, model, src, length, start), "your ids")
        with torch.no_grad():
            expected = _greedy(model, src, length, start)
            first = _greedy_first_position(model, src, length, start)
            start_only = _greedy_start_only(model, src, length, start)
            last_only = _greedy_last_token_only(model, src, length, start)
            from_zero = _greedy(model, src, length, 0)
        if tuple(got.shape) == (B, length + 1):
            c.fail("you returned the start token too: return only the generated tokens, target[:, 1:]")
        if tuple(got.shape) == (B, length - 1):
            c.fail(f"you returned {length - 1} tokens: the loop must run `length` times, one new token each")
        c.expect_shape(got, (B, length), "your ids")
        if got.dtype.is_floating_point:
            c.fail(
                f"your ids have dtype {got.dtype}: return token ids (argmax indices), not logits or probabilities"
            )
        c.expect_dtype(got, torch.long, "your ids", hint="token ids are torch.long, as argmax returns them")
        if not torch.equal(got, expected):
            if torch.equal(got, first):
                c.fail(
                    "you took the logits of the first position; the next token comes from the last, logits[:, -1]"
                )
            if torch.equal(got, start_only):
                c.fail(
                    "nothing is fed back: each step appends its chosen token to the target and decodes again"
                )
            if torch.equal(got, last_only):
                c.fail(
                    "each step decodes only the newest token: without a cache the decoder must see the whole "
                    "target so far, model.decode(target, memory)"
                )
            if torch.equal(got, from_zero):
                c.fail(f"the target starts with token 0; start it with start_id (here {start})")
            step = int((got != expected).any(0).nonzero()[0])
            c.fail(
                f"your tokens first differ at position {step}: got {got[:, step].tolist()}, "
                f"expected {expected[:, step].tolist()}"
            )
    return c.passed
