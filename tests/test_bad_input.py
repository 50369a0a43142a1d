"""Bad input never gives a silent wrong result, a hang, or a cryptic error from deep inside.

One table of cases, each a bad input to the public API: the test feeds it and asserts the exception's type
and that its message names the argument and says what was expected. The cases use only names the library
has had from the start, so `benchmarks/bad_input_table.py` can run the same table against an older checkout.
After the table, the behaviours that are not a single call: decoding with a model shared by threads, a
half-consumed stream, checkpoint writes that fail, padding whose meaning never depends on the sizes.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch

from companion import (
    MultiHeadAttention,
    TransformerConfig,
    build_model,
    causal_mask,
    generate,
    padding_mask,
    presets,
    scaled_dot_product_attention,
    sliding_window_mask,
)
from companion.data import (
    ByteTokenizer,
    CharTokenizer,
    copy_task,
    encode_corpus,
    random_windows,
    recall_task,
    scrambled_task,
    train_val_split,
)
from companion.decoding import KVCache, filter_top_k, filter_top_p, new_caches, next_token, stream
from companion.device import seed_everything
from companion.layers import FeedForward, LayerNorm, RMSNorm
from companion.training import (
    TrainConfig,
    evaluate_loss,
    load_checkpoint,
    next_token_objective,
    save_checkpoint,
    smoothed_cross_entropy,
    train,
)
from helpers import random_ids

LIMIT_S = 60  # no test here may run longer: a loop that never ends fails instead of stalling the suite


@pytest.fixture(autouse=True)
def fail_instead_of_hanging():
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"this test ran past {LIMIT_S} s: a loop that never ends?")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- small models and data, built once

SMALL = dict(vocab_size=23, context_length=16, d_model=16, heads=2, layers=2)
V = SMALL["vocab_size"]


@cache
def decoder():
    seed_everything(0)
    return build_model(TransformerConfig(kind="decoder", **SMALL)).eval()


@cache
def encoder():
    seed_everything(0)
    return build_model(TransformerConfig(kind="encoder", pad_id=0, segment_vocab_size=2, **SMALL)).eval()


@cache
def seq2seq():
    seed_everything(0)
    return build_model(TransformerConfig(kind="encoder-decoder", **SMALL)).eval()


def ids(batch: int = 2, seq: int = 8, seed: int = 0) -> torch.Tensor:
    return random_ids((batch, seq), V, seed, low=1)


def filled_caches(positions: int = 4, batch: int = 2):
    """Caches that already hold `positions` positions of ids(batch)."""
    caches = new_caches(decoder().config, batch, 16)
    with torch.no_grad():
        decoder()(ids(batch, positions), caches=caches)
    return caches


def nan_decoder():
    model = build_model(TransformerConfig(kind="decoder", **SMALL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


def qkv(batch: int = 2, heads: int = 2, q_len: int = 5, k_len: int = 7, d_head: int = 4):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, heads, q_len, d_head, generator=g),
        torch.randn(batch, heads, k_len, d_head, generator=g),
        torch.randn(batch, heads, k_len, d_head, generator=g),
    )


def quick(**changes) -> TrainConfig:
    return TrainConfig(**{"steps": 3, "lr": 1e-3, "warmup_steps": 0, "progress": False} | changes)


def data(step: int) -> tuple[torch.Tensor]:
    return (ids(4, 8, seed=step),)


def fresh_decoder():
    seed_everything(0)
    return build_model(TransformerConfig(kind="decoder", **SMALL))


def run_train(loss_fn=next_token_objective, batches=data, config=None, model=None, **kwargs):
    return train(
        model if model is not None else fresh_decoder(), batches, loss_fn, config or quick(), **kwargs
    )


def good_checkpoint(tmp: Path) -> Path:
    path = tmp / "good.pt"
    if not path.exists():
        run_train(checkpoint=path)
    return path


def damaged(tmp: Path, name: str, write: Callable[[Path], None]) -> Path:
    path = tmp / name
    write(path)
    return path


def truncated(path: Path, good: Path) -> None:
    raw = good.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def corrupt(path: Path, good: Path) -> None:
    raw = bytearray(good.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = bytes(4096)
    raw[:64] = bytes(range(64))
    path.write_bytes(bytes(raw))


def load_into_decoder(path: Path):
    return load_checkpoint(path, fresh_decoder())


def blowing_up_at_step(bad_step: int):
    """A loss function whose loss is multiplied by 1e12, still finite, from call bad_step on."""
    calls = []

    def loss_fn(model, batch):
        calls.append(None)
        loss = next_token_objective(model, batch)
        return loss * 1e12 if len(calls) > bad_step else loss

    return loss_fn


def infinite_gradient(model, batch):
    """A finite loss (0) whose gradient is infinite: d/dx sqrt(x) at x = 0."""
    w = next(model.parameters())
    return next_token_objective(model, batch) * 0 + torch.sqrt(w - w.detach()).sum()


class OverflowingSGD(torch.optim.SGD):
    """An optimizer whose step leaves a weight infinite, as too large an update does."""

    def step(self, closure=None):
        super().step(closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(math.inf)


def overflow_at_last_step():
    model = fresh_decoder()
    return run_train(model=model, config=quick(steps=1), optimizer=OverflowingSGD(model.parameters(), lr=0.1))


def reassigned_config() -> TrainConfig:
    config = quick()
    config.lr = float("nan")  # the dataclass is mutable: train() checks it again
    return config


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """call(tmp) must raise `error` with every string of `says` in its message (the argument, then what
    was expected). new_api: the argument did not exist before, so an older checkout cannot be compared."""

    group: str
    name: str
    call: Callable[[Path], object]
    error: type[BaseException]
    says: tuple[str, ...]
    new_api: bool = False


def config_case(name, changes, *says, error=ValueError):
    return Case("config", name, lambda tmp: TransformerConfig(**changes), error, says)


# One bad input per line: a table, not code for the formatter to wrap.
# fmt: off
CASES = [
    # TransformerConfig: every field checked where the config is made
    config_case("vocab_size is a bool", dict(vocab_size=True), "vocab_size=True", "whole number >= 1"),
    config_case("vocab_size is zero", dict(vocab_size=0), "vocab_size=0", "whole number >= 1"),
    config_case("vocab_size is a string", dict(vocab_size="256"), "vocab_size='256'", "whole number >= 1"),
    config_case("vocab_size is a float", dict(vocab_size=256.0), "vocab_size=256.0", "whole number >= 1"),
    config_case("context_length is negative", dict(context_length=-1), "context_length=-1", "whole number >= 1"),
    config_case("d_model is fractional", dict(d_model=100.5), "d_model=100.5", "whole number >= 1"),
    config_case("heads is zero", dict(heads=0), "heads=0", "whole number >= 1"),
    config_case("layers is a string", dict(layers="4"), "layers='4'", "whole number >= 1"),
    config_case("num_labels is zero", dict(num_labels=0), "num_labels=0", "whole number >= 1"),
    config_case("d_ff is zero", dict(d_ff=0), "d_ff=0", "whole number >= 1 or None"),
    config_case("decoder_layers is a bool", dict(decoder_layers=True), "decoder_layers=True", "whole number >= 1 or None"),
    config_case("segment_vocab_size is negative", dict(segment_vocab_size=-1), "segment_vocab_size=-1", "whole number >= 0"),
    config_case("segment_vocab_size is a string", dict(segment_vocab_size="2"), "segment_vocab_size='2'", "whole number >= 0"),
    config_case("dropout is NaN", dict(dropout=math.nan), "dropout=nan", "in [0, 1)"),
    config_case("dropout is a string", dict(dropout="0.1"), "dropout='0.1'", "in [0, 1)"),
    config_case("dropout is a bool", dict(dropout=True), "dropout=True", "in [0, 1)"),
    config_case("attention_dropout is 1", dict(attention_dropout=1.0), "attention_dropout=1.0", "in [0, 1)"),
    config_case("layer_norm_eps is NaN", dict(layer_norm_eps=math.nan), "layer_norm_eps=nan", "small positive number"),
    config_case("layer_norm_eps is negative", dict(layer_norm_eps=-1e-5), "layer_norm_eps=-1e-05", "small positive number"),
    config_case("layer_norm_eps is zero", dict(layer_norm_eps=0.0), "layer_norm_eps=0.0", "small positive number"),
    config_case("layer_norm_eps is a string", dict(layer_norm_eps="1e-5"), "layer_norm_eps='1e-5'", "small positive number"),
    config_case("rope_base is 1", dict(positional="rope", rope_base=1.0), "rope_base=1.0", "greater than 1"),
    config_case("rope_base is infinite", dict(positional="rope", rope_base=math.inf), "rope_base=inf", "greater than 1"),
    config_case("bias is a string", dict(bias="yes"), "bias='yes'", "True or False"),
    config_case("tie_embeddings is an int", dict(tie_embeddings=1), "tie_embeddings=1", "True or False"),
    config_case("pooler on a decoder", dict(pooler=True), "pooler=True", "kind='encoder'"),
    config_case("pad_id is a float", dict(pad_id=1.5), "pad_id=1.5", "whole number in the vocabulary"),
    config_case("pad_id is a bool", dict(pad_id=True), "pad_id=True", "whole number in the vocabulary"),
    config_case("pad_id is past the vocabulary", dict(pad_id=256), "pad_id=256", "vocabulary [0, 256)"),
    config_case("pad_id is negative", dict(pad_id=-1), "pad_id=-1", "vocabulary [0, 256)"),
    config_case("kind is unknown", dict(kind="gpt"), "kind='gpt'", "expected one of"),
    config_case("kind is None", dict(kind=None), "kind=None", "expected one of"),
    config_case("norm is unknown", dict(norm="middle"), "norm='middle'", "expected one of"),
    config_case("positional is unknown", dict(positional="alibi"), "positional='alibi'", "expected one of"),
    config_case("activation is a number", dict(activation=3), "activation=3", "expected one of"),
    config_case("task_head on a decoder", dict(task_head="mlm"), "task_head='mlm'", "needs kind='encoder'"),
    config_case("sinusoidal with odd d_model", dict(positional="sinusoidal", d_model=9, heads=3), "d_model=9", "expected an even number"),
    config_case("rope with odd d_head", dict(positional="rope", d_model=12, heads=4), "d_head=3", "expected an even number"),
    config_case("d_model not divisible by heads", dict(d_model=500, heads=8), "heads=8", "a multiple of heads=8"),
    Case("config", "unknown preset", lambda tmp: presets["gpt3"], KeyError, ("'gpt3'", "'tiny'", "'bert-base'")),
    Case("config", "replace with a misspelt field", lambda tmp: presets["tiny"].replace(d_modle=64), TypeError,
         ("'d_modle'", "its fields are", "d_model")),
    Case("config", "LayerNorm eps is NaN", lambda tmp: LayerNorm(8, eps=math.nan), ValueError, ("eps=nan", "small positive number")),
    Case("config", "RMSNorm eps is negative", lambda tmp: RMSNorm(8, eps=-1.0), ValueError, ("eps=-1.0", "small positive number")),
    Case("config", "FeedForward dropout is a bool", lambda tmp: FeedForward(8, 32, dropout=True), ValueError, ("dropout=True", "[0, 1)")),
    Case("config", "LayerNorm d_model is a bool", lambda tmp: LayerNorm(True), ValueError, ("d_model=True", "whole number >= 1")),
    Case("config", "build_model of a preset name", lambda tmp: build_model("tiny"), TypeError, ("build_model", "TransformerConfig")),

    # forward passes: ids, start_pos, caches, masks, segments
    Case("forward", "float ids", lambda tmp: decoder()(torch.rand(2, 8)), TypeError, ("ids", "integer token ids")),
    Case("forward", "1-D ids", lambda tmp: decoder()(ids()[0]), ValueError, ("ids", "(batch, seq)")),
    Case("forward", "an empty batch", lambda tmp: decoder()(ids(0, 8)), ValueError, ("ids", "an empty batch", "expected at least one sequence")),
    Case("forward", "an empty sequence", lambda tmp: decoder()(ids(2, 0)), ValueError, ("ids", "an empty sequence", "expected at least one token")),
    Case("forward", "ids past the context", lambda tmp: decoder()(ids(2, 17)), ValueError, ("ids", "context is 16 positions")),
    Case("forward", "ids outside the vocabulary", lambda tmp: decoder()(torch.tensor([[1, 23]])), ValueError, ("ids", "in [1, 23]", "expected ids in the vocabulary [0, 22]")),
    Case("forward", "start_pos is negative", lambda tmp: decoder()(ids(), start_pos=-1), ValueError, ("start_pos=-1", "whole number >= 0")),
    Case("forward", "start_pos is a float", lambda tmp: decoder()(ids(), start_pos=1.5), ValueError, ("start_pos=1.5", "whole number >= 0")),
    Case("forward", "start_pos is a bool", lambda tmp: decoder()(ids(), start_pos=True), ValueError, ("start_pos=True", "whole number >= 0")),
    Case("forward", "start_pos runs past the context", lambda tmp: decoder()(ids(), start_pos=12), ValueError,
         ("starting at position 12", "context is 16 positions")),
    Case("forward", "start_pos behind the cache", lambda tmp: decoder()(ids(2, 1), caches=filled_caches(4), start_pos=2),
         ValueError, ("start_pos=2", "already holds 4 positions", "number of positions already cached")),
    Case("forward", "start_pos ahead of an empty cache", lambda tmp: decoder()(ids(2, 1), caches=new_caches(decoder().config, 2, 16),
         start_pos=3), ValueError, ("start_pos=3", "already holds 0 positions")),
    Case("forward", "caches for too few layers", lambda tmp: decoder()(ids(), caches=new_caches(decoder().config, 2, 16)[:1]),
         ValueError, ("caches has 1 layers", "the model has 2")),
    Case("forward", "caches for another batch size", lambda tmp: decoder()(ids(2, 4), caches=new_caches(decoder().config, 1, 16)),
         ValueError, ("KV cache", "(batch, heads, d_head) = (1, 2, 8)", "new_caches")),
    Case("forward", "one cache instead of a list", lambda tmp: decoder()(ids(), caches=KVCache(2, 2, 16, 8)), TypeError,
         ("caches", "list of per-layer caches")),
    Case("forward", "a (batch, seq) padding mask given as mask", lambda tmp: decoder()(ids(2, 8), mask=ids(2, 8) != 0),
         ValueError, ("mask has shape (2, 8)", "(q_pos, k_pos) = (8, 8)", "padding=")),
    Case("forward", "a 3-D mask", lambda tmp: decoder()(ids(2, 8), mask=torch.ones(2, 8, 8, dtype=torch.bool)), ValueError,
         ("mask has shape (2, 8, 8)", "2-D (q_pos, k_pos) or 4-D")),
    Case("forward", "a 1-D mask", lambda tmp: decoder()(ids(2, 8), mask=torch.ones(8, dtype=torch.bool)), ValueError,
         ("mask has shape (8,)", "2-D (q_pos, k_pos) or 4-D")),
    Case("forward", "a float mask", lambda tmp: decoder()(ids(2, 8), mask=torch.ones(8, 8)), TypeError, ("mask", "torch.bool")),
    Case("forward", "padding of integers", lambda tmp: decoder()(ids(2, 8), padding=torch.ones(2, 8)), TypeError,
         ("padding=", "torch.bool tensor (batch, seq)"), new_api=True),
    Case("forward", "padding of the wrong shape", lambda tmp: encoder()(ids(2, 8), padding=torch.ones(8, 2, dtype=torch.bool)),
         ValueError, ("padding has shape (8, 2)", "(batch, seq) = (2, 8)"), new_api=True),
    Case("forward", "padding with caches", lambda tmp: decoder()(ids(2, 4), caches=new_caches(decoder().config, 2, 16),
         padding=torch.ones(2, 4, dtype=torch.bool)), ValueError, ("padding", "caches"), new_api=True),
    Case("forward", "segment ids past segment_vocab_size", lambda tmp: encoder()(ids(2, 8), ids(2, 8)), ValueError,
         ("segments", "segment_vocab_size=2")),
    Case("forward", "segments of another shape", lambda tmp: encoder()(ids(2, 8), torch.zeros(2, 7, dtype=torch.long)), ValueError,
         ("segments has shape (2, 7)", "must match ids")),
    Case("forward", "segments for a config without them", lambda tmp: build_model(encoder().config.replace(segment_vocab_size=0))(
         ids(), torch.zeros(2, 8, dtype=torch.long)), ValueError, ("segments", "segment_vocab_size=0")),
    Case("forward", "seq2seq source is a list", lambda tmp: seq2seq()([[1, 2]], ids()), TypeError, ("src_ids", "torch.Tensor")),
    Case("forward", "seq2seq batches differ", lambda tmp: seq2seq()(ids(2, 5), ids(3, 5)), ValueError, ("src_ids has batch 2", "tgt_ids has batch 3")),
    Case("forward", "seq2seq memory of the wrong width", lambda tmp: seq2seq().decode(ids(2, 5), torch.zeros(2, 5, 8)), ValueError,
         ("memory", "d_model=16", "model.encode")),
    Case("forward", "seq2seq generate from a start token of bools", lambda tmp: generate(
         seq2seq(), torch.ones(2, 1, dtype=torch.bool), 3, src_ids=ids(), use_cache=False), TypeError,
         ("prompt_ids", "integer token ids")),
    Case("forward", "seq2seq generate length is a float", lambda tmp: generate(
         seq2seq(), ids(2, 1), 2.0, src_ids=ids(), use_cache=False), ValueError, ("max_new_tokens=2.0", "whole number")),
    Case("forward", "seq2seq generate source is float", lambda tmp: generate(
         seq2seq(), ids(2, 1), 3, src_ids=torch.rand(2, 4), use_cache=False), TypeError, ("src_ids", "integer token ids")),

    # attention, masks and multi-head attention
    Case("attention", "integer queries", lambda tmp: scaled_dot_product_attention(torch.ones(2, 2, 5, 4, dtype=torch.long), *qkv()[1:]),
         TypeError, ("q=", "floating-point tensor")),
    Case("attention", "3-D queries", lambda tmp: scaled_dot_product_attention(qkv()[0][0], *qkv()[1:]), ValueError, ("q has shape", "4 dims")),
    Case("attention", "a 2-D mask of the wrong size", lambda tmp: scaled_dot_product_attention(*qkv(), torch.ones(4, 7, dtype=torch.bool)),
         ValueError, ("mask has shape (4, 7)", "(q_pos, k_pos) = (5, 7)")),
    Case("attention", "a 3-D mask", lambda tmp: scaled_dot_product_attention(*qkv(), torch.ones(2, 5, 7, dtype=torch.bool)),
         ValueError, ("mask has shape (2, 5, 7)", "2-D (q_pos, k_pos) or 4-D")),
    Case("attention", "a 1-D mask", lambda tmp: scaled_dot_product_attention(*qkv(), torch.ones(7, dtype=torch.bool)),
         ValueError, ("mask has shape (7,)", "2-D (q_pos, k_pos) or 4-D")),
    Case("attention", "a 4-D mask of the wrong batch", lambda tmp: scaled_dot_product_attention(*qkv(), torch.ones(3, 1, 1, 7, dtype=torch.bool)),
         ValueError, ("mask has shape (3, 1, 1, 7)", "(batch, heads, q_pos, k_pos) = (2, 2, 5, 7)")),
    Case("attention", "a float mask", lambda tmp: scaled_dot_product_attention(*qkv(), torch.ones(5, 7)), TypeError, ("mask", "torch.bool")),
    Case("attention", "a list as mask", lambda tmp: scaled_dot_product_attention(*qkv(), [[True] * 7] * 5), TypeError, ("mask=", "torch.bool")),
    Case("attention", "dropout_p above 1", lambda tmp: scaled_dot_product_attention(*qkv(), dropout_p=1.5), ValueError, ("dropout_p=1.5", "[0, 1)")),
    Case("attention", "dropout_p is NaN", lambda tmp: scaled_dot_product_attention(*qkv(), dropout_p=math.nan), ValueError, ("dropout_p=nan", "[0, 1)")),
    Case("attention", "keys without values", lambda tmp: scaled_dot_product_attention(*qkv()[:2], qkv(k_len=6)[2]), ValueError,
         ("k has 7 positions but v has 6", "every key needs a value")),
    Case("attention", "causal_mask of negative length", lambda tmp: causal_mask(-1), ValueError, ("q_len=-1", "whole number >= 0")),
    Case("attention", "causal_mask of fractional length", lambda tmp: causal_mask(3, 2.5), ValueError, ("k_len=2.5", "whole number >= 0")),
    Case("attention", "causal_mask with more queries than keys", lambda tmp: causal_mask(5, 3), ValueError, ("q_len=5 > k_len=3", "last k_len positions")),
    Case("attention", "sliding window of 0", lambda tmp: sliding_window_mask(4, 0), ValueError, ("window=0", "whole number >= 1")),
    Case("attention", "sliding window is a bool", lambda tmp: sliding_window_mask(4, True), ValueError, ("window=True", "whole number >= 1")),
    Case("attention", "padding_mask of 1-D ids", lambda tmp: padding_mask(ids()[0], 0), ValueError, ("padding_mask: ids=(8,)", "(batch, seq)")),
    Case("attention", "padding_mask pad_id is a float", lambda tmp: padding_mask(ids(), 0.5), TypeError, ("pad_id=0.5", "whole number")),
    Case("attention", "MHA with a (batch, seq) mask", lambda tmp: MultiHeadAttention(16, 2)(torch.randn(2, 8, 16), mask=ids(2, 8) != 0),
         ValueError, ("mask has shape (2, 8)", "padding=")),
    Case("attention", "MHA padding of the wrong shape", lambda tmp: MultiHeadAttention(16, 2)(torch.randn(2, 8, 16),
         padding=torch.ones(2, 9, dtype=torch.bool)), ValueError, ("padding has shape (2, 9)", "(batch, seq) = (2, 8)"), new_api=True),
    Case("attention", "MHA input of the wrong width", lambda tmp: MultiHeadAttention(16, 2)(torch.randn(2, 8, 12)), ValueError,
         ("x has shape (2, 8, 12)", "d_model=16")),
    Case("attention", "MHA context of another batch", lambda tmp: MultiHeadAttention(16, 2)(torch.randn(2, 8, 16), torch.randn(3, 4, 16)),
         ValueError, ("context has shape (3, 4, 16)", "batch=2")),
    Case("attention", "MHA heads do not divide d_model", lambda tmp: MultiHeadAttention(10, 4), ValueError, ("heads=4", "not divisible")),

    # generation and sampling
    Case("generate", "temperature is NaN", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=math.nan), ValueError,
         ("temperature=nan", "a finite number")),
    Case("generate", "temperature is infinite", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=math.inf), ValueError,
         ("temperature=inf", "a finite number")),
    Case("generate", "temperature is a string", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature="0.7"), ValueError,
         ("temperature='0.7'", "> 0 to sample")),
    Case("generate", "temperature is a bool", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=True), ValueError,
         ("temperature=True", "> 0 to sample")),
    Case("generate", "temperature is negative", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=-1.0), ValueError,
         ("temperature=-1.0", "> 0 to sample")),
    Case("generate", "top_k is a bool", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, top_k=True), ValueError,
         ("top_k=True", "whole number >= 1")),
    Case("generate", "top_k is fractional", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, top_k=2.5), ValueError,
         ("top_k=2.5", "whole number >= 1")),
    Case("generate", "top_k is zero", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, top_k=0), ValueError,
         ("top_k=0", "whole number >= 1")),
    Case("generate", "top_p is NaN", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, top_p=math.nan), ValueError,
         ("top_p=nan", "(0, 1]")),
    Case("generate", "top_p is zero", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, top_p=0.0), ValueError,
         ("top_p=0.0", "(0, 1]")),
    Case("generate", "top_p is a string", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, top_p="0.9"), ValueError,
         ("top_p='0.9'", "(0, 1]")),
    Case("generate", "stream's seed is negative (checked at the call)", lambda tmp: stream(decoder(), ids(1, 2), 3, temperature=1.0, seed=-1),
         ValueError, ("seed=-1", "whole number >= 0")),
    Case("generate", "stream's seed is fractional (checked at the call)", lambda tmp: stream(decoder(), ids(1, 2), 3, temperature=1.0, seed=1.5),
         ValueError, ("seed=1.5", "whole number >= 0")),
    Case("generate", "seed is a string", lambda tmp: generate(decoder(), ids(1, 2), 3, temperature=1.0, seed="0"), ValueError,
         ("seed='0'", "whole number >= 0")),
    Case("generate", "max_new_tokens is a float", lambda tmp: generate(decoder(), ids(1, 2), 2.0), ValueError,
         ("max_new_tokens=2.0", "whole number >= 0")),
    Case("generate", "max_new_tokens is a bool", lambda tmp: generate(decoder(), ids(1, 2), True), ValueError,
         ("max_new_tokens=True", "whole number >= 0")),
    Case("generate", "use_cache is a string", lambda tmp: generate(decoder(), ids(1, 2), 3, use_cache="no"), ValueError,
         ("use_cache='no'", "True or False")),
    Case("generate", "prompt and new tokens past the context", lambda tmp: generate(decoder(), ids(1, 10), 7), ValueError,
         ("max_new_tokens=7", "context is 16")),
    Case("generate", "float prompt", lambda tmp: generate(decoder(), torch.zeros(1, 2), 3), TypeError, ("prompt_ids", "integer token ids")),
    Case("generate", "empty batch of prompts", lambda tmp: generate(decoder(), ids(0, 2), 3), ValueError, ("prompt_ids", "empty batch")),
    Case("generate", "not a language model", lambda tmp: generate(torch.nn.Linear(2, 2), ids(1, 2), 3), TypeError,
         ("generate needs a DecoderLM or an EncoderDecoder", "Linear")),
    Case("generate", "seq2seq without a source", lambda tmp: generate(seq2seq(), ids(1, 1), 3), ValueError, ("src_ids", "needs src_ids")),
    Case("generate", "a model with NaN weights", lambda tmp: generate(nan_decoder(), ids(1, 2), 3), FloatingPointError,
         ("logits", "not finite")),
    Case("generate", "a model with NaN weights, sampling", lambda tmp: generate(nan_decoder(), ids(1, 2), 3, temperature=1.0, seed=0),
         FloatingPointError, ("logits", "not finite")),
    Case("generate", "next_token of NaN logits", lambda tmp: next_token(torch.tensor([[0.0, math.nan]])), FloatingPointError,
         ("logits row 0", "must be finite")),
    Case("generate", "next_token of a row all -inf", lambda tmp: next_token(torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]),
         temperature=1.0), FloatingPointError, ("logits row 1", "at least one finite")),
    Case("generate", "next_token of 3-D logits", lambda tmp: next_token(torch.zeros(1, 2, 5)), ValueError, ("logits", "(batch, vocab)")),
    Case("generate", "filter_top_k with k=True", lambda tmp: filter_top_k(torch.zeros(1, 5), True), ValueError, ("top_k=True", "whole number >= 1")),
    Case("generate", "filter_top_p with p=NaN", lambda tmp: filter_top_p(torch.zeros(1, 5), math.nan), ValueError, ("top_p=nan", "(0, 1]")),
    Case("generate", "new_caches for no sequences", lambda tmp: new_caches(decoder().config, 0, 4), ValueError, ("batch=0", "whole number >= 1")),
    Case("generate", "new_caches capacity is a float", lambda tmp: new_caches(decoder().config, 1, 2.0), ValueError, ("capacity=2.0", "[1, context_length=16]")),
    Case("generate", "new_caches of a preset name", lambda tmp: new_caches("tiny", 1, 4), TypeError, ("new_caches", "TransformerConfig")),
    Case("generate", "a cache of capacity 0", lambda tmp: KVCache(1, 2, 0, 8), ValueError, ("capacity=0", "whole number >= 1")),

    # checkpoints
    Case("checkpoints", "truncated file", lambda tmp: load_into_decoder(damaged(tmp, "half.pt", lambda p: truncated(p, good_checkpoint(tmp)))),
         ValueError, ("half.pt", "is not a readable checkpoint", "truncated")),
    Case("checkpoints", "corrupt file", lambda tmp: load_into_decoder(damaged(tmp, "bad.pt", lambda p: corrupt(p, good_checkpoint(tmp)))),
         ValueError, ("bad.pt", "is not a readable checkpoint", "corrupt")),
    Case("checkpoints", "empty file", lambda tmp: load_into_decoder(damaged(tmp, "empty.pt", lambda p: p.write_bytes(b""))),
         ValueError, ("empty.pt", "is not a readable checkpoint", "empty")),
    Case("checkpoints", "a text file", lambda tmp: load_into_decoder(damaged(tmp, "notes.pt", lambda p: p.write_text("step 12\n" * 50))),
         ValueError, ("notes.pt", "is not a readable checkpoint", "not a file torch.save wrote")),
    Case("checkpoints", "a bare state_dict", lambda tmp: load_into_decoder(damaged(tmp, "weights.pt", lambda p: torch.save(fresh_decoder().state_dict(), p))),
         ValueError, ("weights.pt", "is not a readable checkpoint", "save_checkpoint")),
    Case("checkpoints", "a list", lambda tmp: load_into_decoder(damaged(tmp, "list.pt", lambda p: torch.save([1, 2, 3], p))),
         ValueError, ("list.pt", "is not a readable checkpoint", "holds a list")),
    Case("checkpoints", "no model_config", lambda tmp: load_into_decoder(damaged(tmp, "partial.pt", lambda p: torch.save(
         {k: v for k, v in torch.load(good_checkpoint(tmp), weights_only=True).items() if k != "model_config"}, p))),
         ValueError, ("partial.pt", "is not a readable checkpoint", "'model_config'")),
    Case("checkpoints", "another format", lambda tmp: load_into_decoder(damaged(tmp, "v2.pt", lambda p: torch.save(
         torch.load(good_checkpoint(tmp), weights_only=True) | {"format": 2}, p))), ValueError, ("v2.pt", "format 2", "reads format 1")),
    Case("checkpoints", "a directory", lambda tmp: load_into_decoder(tmp), IsADirectoryError, ("is a directory", "the file inside it")),
    Case("checkpoints", "a missing file", lambda tmp: load_into_decoder(tmp / "nowhere.pt"), FileNotFoundError, ("nowhere.pt", "does not exist")),
    Case("checkpoints", "save into a directory", lambda tmp: save_checkpoint(tmp, decoder(), torch.optim.SGD(decoder().parameters(), lr=0.1),
         step=0, history=None, config=quick()), IsADirectoryError, ("is a directory", "give a file path")),
    Case("checkpoints", "train with a directory as checkpoint", lambda tmp: run_train(checkpoint=tmp), IsADirectoryError,
         ("is a directory", "give a file path")),
    Case("checkpoints", "an optimizer over other parameters", lambda tmp: load_checkpoint(good_checkpoint(tmp), fresh_decoder(),
         torch.optim.AdamW(list(fresh_decoder().parameters())[:3])), ValueError, ("another run", "optimizer has parameter groups")),

    # data
    Case("data", "scrambled_task on text without letters", lambda tmp: scrambled_task("12 34 56 78 90 " * 20, ByteTokenizer(), 4, 8),
         ValueError, ("unit='word'", "word of two or more different letters")),
    Case("data", "scrambled_task on one repeated character", lambda tmp: scrambled_task("a" * 200, ByteTokenizer(), 4, 8, unit="window"),
         ValueError, ("unit='window'", "two or more different characters")),
    Case("data", "scrambled_task on words of one letter each", lambda tmp: scrambled_task("aaaa bb c dddd " * 20, ByteTokenizer(), 4, 8),
         ValueError, ("unit='word'", "word of two or more different letters")),
    Case("data", "scrambled_task windows of one character", lambda tmp: scrambled_task("hello world " * 20, ByteTokenizer(), 4, 1),
         ValueError, ("seq_len=1", ">= 2")),
    Case("data", "scrambled_task seq_len is fractional", lambda tmp: scrambled_task("hello world " * 20, ByteTokenizer(), 4, 2.5),
         ValueError, ("seq_len=2.5", ">= 2")),
    Case("data", "scrambled_task count is zero", lambda tmp: scrambled_task("hello world " * 20, ByteTokenizer(), 0, 8),
         ValueError, ("count=0", "whole number >= 1")),
    Case("data", "scrambled_task unit is unknown", lambda tmp: scrambled_task("hello world " * 20, ByteTokenizer(), 4, 8, unit="char"),
         ValueError, ("unit='char'", "one of ('word', 'window')")),
    Case("data", "CharTokenizer.decode(-1)", lambda tmp: CharTokenizer("abc").decode([-1]), ValueError, ("token id -1", "vocabulary [0, 2]")),
    Case("data", "CharTokenizer.decode past the vocabulary", lambda tmp: CharTokenizer("abc").decode(torch.tensor([0, 3])), ValueError,
         ("token id 3", "vocabulary [0, 2]")),
    Case("data", "CharTokenizer.decode of a batch", lambda tmp: CharTokenizer("abc").decode(torch.zeros(2, 3, dtype=torch.long)), ValueError,
         ("CharTokenizer.decode", "one sequence of integer token ids")),
    Case("data", "ByteTokenizer.decode(256)", lambda tmp: ByteTokenizer().decode([256]), ValueError, ("token id 256", "vocabulary [0, 255]")),
    Case("data", "ByteTokenizer.decode of text", lambda tmp: ByteTokenizer().decode("abc"), TypeError, ("ByteTokenizer.decode", "token ids")),
    Case("data", "copy_task batch is fractional", lambda tmp: copy_task(2.5, 4, 8), ValueError, ("batch=2.5", "whole number >= 1")),
    Case("data", "copy_task length is a bool", lambda tmp: copy_task(2, True, 8), ValueError, ("length=True", "whole number >= 1")),
    Case("data", "recall_task distance past the sequence", lambda tmp: recall_task(2, 8, 9, 8), ValueError, ("distance", "[1, 7]")),
    Case("data", "train_val_split of everything", lambda tmp: train_val_split(torch.arange(10), 1.0), ValueError, ("val_fraction=1.0", "(0, 1)")),
    Case("data", "random_windows of no batch", lambda tmp: random_windows(torch.arange(100), 0, 8), ValueError, ("batch_size=0", "whole number >= 1")),
    Case("data", "encode_corpus of nothing", lambda tmp: encode_corpus("", ByteTokenizer(), 8), ValueError, ("corpus is empty", "give some text")),

    # training: TrainConfig, then train() and evaluate_loss
    Case("training", "grad_clip is negative", lambda tmp: TrainConfig(grad_clip=-1.0), ValueError, ("TrainConfig.grad_clip=-1.0", "positive number or None")),
    Case("training", "grad_clip is zero", lambda tmp: TrainConfig(grad_clip=0), ValueError, ("TrainConfig.grad_clip=0", "positive number or None")),
    Case("training", "grad_clip is NaN", lambda tmp: TrainConfig(grad_clip=math.nan), ValueError, ("TrainConfig.grad_clip=nan", "positive number or None")),
    Case("training", "lr is NaN", lambda tmp: TrainConfig(lr=math.nan), ValueError, ("TrainConfig.lr=nan", "positive finite number")),
    Case("training", "lr is zero", lambda tmp: TrainConfig(lr=0.0), ValueError, ("TrainConfig.lr=0.0", "positive finite number")),
    Case("training", "lr is infinite", lambda tmp: TrainConfig(lr=math.inf), ValueError, ("TrainConfig.lr=inf", "positive finite number")),
    Case("training", "lr is a string", lambda tmp: TrainConfig(lr="3e-3"), ValueError, ("TrainConfig.lr='3e-3'", "positive finite number")),
    Case("training", "min_lr above lr", lambda tmp: TrainConfig(lr=1e-3, min_lr=1e-2), ValueError, ("TrainConfig.min_lr=0.01", "[0, lr=0.001]")),
    Case("training", "min_lr is negative", lambda tmp: TrainConfig(min_lr=-1e-4), ValueError, ("TrainConfig.min_lr=-0.0001", "[0, lr=")),
    Case("training", "steps is a float", lambda tmp: TrainConfig(steps=100.0), ValueError, ("TrainConfig.steps=100.0", "whole number >= 1")),
    Case("training", "steps is a bool", lambda tmp: TrainConfig(steps=True), ValueError, ("TrainConfig.steps=True", "whole number >= 1")),
    Case("training", "steps is zero", lambda tmp: TrainConfig(steps=0), ValueError, ("TrainConfig.steps=0", "whole number >= 1")),
    Case("training", "warmup longer than the run", lambda tmp: TrainConfig(steps=10, warmup_steps=20), ValueError,
         ("TrainConfig.warmup_steps=20", "[0, steps=10]")),
    Case("training", "warmup_steps is fractional", lambda tmp: TrainConfig(warmup_steps=2.5), ValueError, ("TrainConfig.warmup_steps=2.5", "whole number")),
    Case("training", "betas of one number", lambda tmp: TrainConfig(betas=(0.9,)), ValueError, ("TrainConfig.betas=(0.9,)", "pair of numbers in [0, 1)")),
    Case("training", "beta2 is 1", lambda tmp: TrainConfig(betas=(0.9, 1.0)), ValueError, ("TrainConfig.betas=(0.9, 1.0)", "pair of numbers in [0, 1)")),
    Case("training", "an unknown schedule", lambda tmp: TrainConfig(schedule="noam"), ValueError, ("TrainConfig.schedule='noam'", "'inverse-sqrt'")),
    Case("training", "inverse-sqrt without warm-up", lambda tmp: TrainConfig(schedule="inverse-sqrt", warmup_steps=0), ValueError,
         ("TrainConfig.warmup_steps=0", "schedule='inverse-sqrt'")),
    Case("training", "Adam's eps is negative", lambda tmp: TrainConfig(eps=-1e-9), ValueError, ("TrainConfig.eps=-1e-09", "positive finite")),
    Case("training", "label smoothing of 1", lambda tmp: smoothed_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.0),
         ValueError, ("smoothing=1.0", "[0, 1)")),
    Case("training", "beta1 is NaN", lambda tmp: TrainConfig(betas=(math.nan, 0.9)), ValueError, ("TrainConfig.betas=(nan, 0.9)", "pair of numbers")),
    Case("training", "betas is a string", lambda tmp: TrainConfig(betas="0.9"), ValueError, ("TrainConfig.betas='0.9'", "pair of numbers")),
    Case("training", "weight_decay is negative", lambda tmp: TrainConfig(weight_decay=-0.1), ValueError, ("TrainConfig.weight_decay=-0.1", ">= 0")),
    Case("training", "log_every is zero", lambda tmp: TrainConfig(log_every=0), ValueError, ("TrainConfig.log_every=0", "whole number >= 1")),
    Case("training", "progress is a string", lambda tmp: TrainConfig(progress="no"), ValueError, ("TrainConfig.progress='no'", "True or False")),
    Case("training", "max_loss_ratio below 1", lambda tmp: TrainConfig(max_loss_ratio=0.5), ValueError, ("TrainConfig.max_loss_ratio=0.5", "number > 1 or None"),
         new_api=True),
    Case("training", "a config changed after it was made", lambda tmp: run_train(config=reassigned_config()), ValueError,
         ("TrainConfig.lr=nan", "positive finite number")),
    Case("training", "a dict as config", lambda tmp: run_train(config={"steps": 3}), TypeError, ("config", "TrainConfig")),
    Case("training", "batches run out", lambda tmp: run_train(batches=iter([data(0), data(1)])), ValueError,
         ("batches ran out at step 2", "config.steps=3", "give at least")),
    Case("training", "a loss per example", lambda tmp: run_train(loss_fn=lambda m, x: torch.nn.functional.cross_entropy(
         m(x)[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").mean(1)), ValueError, ("loss_fn returned a tensor of shape (4,)", "scalar")),
    Case("training", "a loss that is a float", lambda tmp: run_train(loss_fn=lambda m, x: next_token_objective(m, x).item()), TypeError,
         ("loss_fn returned a float", "scalar torch.Tensor")),
    Case("training", "a loss without gradient", lambda tmp: run_train(loss_fn=lambda m, x: next_token_objective(m, x).detach()), ValueError,
         ("loss_fn", "requires_grad=False")),
    Case("training", "a CUDA device this machine lacks", lambda tmp: run_train(device="cuda" if not torch.cuda.is_available() else "cuda:99"),
         RuntimeError, ("device 'cuda", "was asked for but")),
    Case("training", "an unknown device", lambda tmp: run_train(device="gpu"), ValueError, ("device='gpu'", "expected e.g. 'cpu', 'cuda'")),
    Case("training", "an empty batch", lambda tmp: run_train(batches=lambda s: (ids(0, 8),)), ValueError,
         ("the batch for step 0 is empty", "at least one example")),
    Case("training", "a bare tensor as batch", lambda tmp: run_train(batches=lambda s: ids(4, 8)), TypeError,
         ("the batch for step 0 is a bare tensor", "must be a tuple, e.g. (ids,)")),
    Case("training", "batches is a number", lambda tmp: run_train(batches=5), TypeError, ("batches", "function step -> batch")),
    Case("training", "eval_every is negative", lambda tmp: run_train(eval_every=-1, evaluate=lambda m: 0.0), ValueError,
         ("eval_every=-1", "whole number >= 0")),
    Case("training", "evaluate without eval_every", lambda tmp: run_train(evaluate=lambda m: 0.0), ValueError,
         ("evaluate and eval_every", "give both")),
    Case("training", "save_every without a checkpoint", lambda tmp: run_train(save_every=2), ValueError, ("save_every=2", "checkpoint")),
    Case("training", "the loss blows up but stays finite", lambda tmp: run_train(loss_fn=blowing_up_at_step(2)), FloatingPointError,
         ("max_loss_ratio=100", "diverged")),
    Case("training", "the loss is NaN", lambda tmp: run_train(loss_fn=lambda m, x: next_token_objective(m, x) * math.nan), FloatingPointError,
         ("the loss became nan at step 0", "lower lr")),
    Case("training", "the gradients are infinite", lambda tmp: run_train(loss_fn=infinite_gradient), FloatingPointError,
         ("the gradients became", "not updated")),
    Case("training", "the gradients are infinite, no clipping", lambda tmp: run_train(loss_fn=infinite_gradient, config=quick(grad_clip=None)),
         FloatingPointError, ("the gradients became", "not updated")),
    Case("training", "the weights are NaN before training", lambda tmp: run_train(model=nan_decoder()), ValueError,
         ("weights are not finite before training", "holds NaN or inf")),
    Case("training", "the weights overflow at the last step", lambda tmp: overflow_at_last_step(), FloatingPointError,
         ("the weights became non-finite at step 0", "lower lr")),
    Case("training", "evaluate_loss of no batches", lambda tmp: evaluate_loss(decoder(), [], next_token_objective), ValueError,
         ("evaluate_loss got no batches", "too small")),
    Case("training", "evaluate_loss with a loss per example", lambda tmp: evaluate_loss(decoder(), [data(0)], lambda m, x: m(x).mean((1, 2))),
         ValueError, ("loss_fn returned a tensor of shape (4,)", "scalar")),
    Case("training", "seed_everything(-1)", lambda tmp: seed_everything(-1), ValueError, ("seed=-1", "whole number >= 0")),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}: {c.name}" for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    with pytest.raises(case.error) as raised:
        case.call(tmp_path)
    message = str(raised.value)
    missing = [s for s in case.says if s not in message]
    assert not missing, f"the message does not say {missing}: {message!r}"


def test_the_table_covers_every_part_of_the_api():
    groups = {c.group for c in CASES}
    assert groups == {"config", "forward", "attention", "generate", "checkpoints", "data", "training"}
    assert len(CASES) >= 100
    assert len({(c.group, c.name) for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- decoding leaves the model's mode alone


@pytest.fixture
def one_intra_op_thread():
    """Eight Python threads are parallelism enough: torch's own thread pool on top of them only contends."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dropout_decoder():
    seed_everything(0)
    config = TransformerConfig(kind="decoder", dropout=0.3, attention_dropout=0.3, **SMALL)
    return build_model(config).train()


def test_threads_sharing_a_training_model_decode_as_in_eval_mode_and_leave_it_training(one_intra_op_thread):
    model = dropout_decoder()
    prompts = [ids(1, 3, seed=100 + i) for i in range(40)]
    model.eval()
    expected = [generate(model, p, 12) for p in prompts]
    model.train()
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(thread: int) -> None:
        try:
            start.wait()
            for i in range(thread, len(prompts), 8):
                results[i] = generate(model, prompts[i], 12)
        except BaseException as error:  # noqa: BLE001  reported below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=LIMIT_S)
    assert not errors, errors
    wrong = [i for i in range(len(prompts)) if not torch.equal(results[i], expected[i])]
    assert not wrong, f"{len(wrong)} of {len(prompts)} sequences differ from single-threaded eval decoding"
    assert model.training, "decoding left the shared model in eval mode"
    assert all(m.training for m in model.modules())


def test_dropout_keeps_working_in_a_thread_that_trains_while_another_decodes():
    model = dropout_decoder()
    x = ids(2, 8)
    steps = stream(model, ids(1, 3), 10)
    next(steps)  # a stream paused between steps, in this thread
    done = threading.Event()
    outputs = []

    def trainer():
        outputs.extend(model(x) for _ in range(2))
        done.set()

    worker = threading.Thread(target=trainer)
    worker.start()
    worker.join(timeout=LIMIT_S)
    assert done.is_set()
    assert not torch.allclose(outputs[0], outputs[1]), "dropout was off in the training thread"


def test_a_half_consumed_stream_leaves_the_model_as_it_found_it():
    model = dropout_decoder()
    prompt = ids(1, 3)
    model.eval()
    expected = generate(model, prompt, 10)[0, 3:]
    model.train()
    steps = stream(model, prompt, 10)
    first = [next(steps) for _ in range(4)]
    assert model.training, "the paused stream switched the model to eval mode"
    x = ids(2, 8)
    assert not torch.allclose(model(x), model(x)), "dropout is off between the stream's steps"
    first += list(steps)  # the rest still decodes as in eval mode
    assert torch.equal(torch.cat(first), expected)
    abandoned = stream(model, prompt, 10)
    next(abandoned)
    del abandoned
    assert model.training


def test_seq2seq_generate_leaves_a_training_model_training():
    model = build_model(TransformerConfig(kind="encoder-decoder", dropout=0.3, **SMALL)).train()
    src, start = ids(2, 5), torch.zeros(2, 1, dtype=torch.long)
    model.eval()
    expected = generate(model, start, 4, src_ids=src, use_cache=False)
    model.train()
    assert torch.equal(generate(model, start, 4, src_ids=src, use_cache=False), expected)
    assert model.training


# ---------------------------------------------------------------- masks: the argument says what a mask means


def test_padding_means_the_same_when_batch_equals_sequence_length():
    model = encoder()
    seq = 6
    batch = ids(seq, seq, seed=3)  # batch == seq: the coincidence that used to flip a mask's meaning
    lengths = [6, 5, 4, 3, 2, 1]
    for row, n in enumerate(lengths):
        batch[row, n:] = 0  # the pad id
    padding = batch != 0
    with torch.no_grad():
        together = model(batch, padding=padding)
        for row, n in enumerate(lengths):
            alone = model(batch[row : row + 1, :n])
            torch.testing.assert_close(together[row, :n], alone[0], atol=1e-5, rtol=1e-4)
        # the default padding (from config.pad_id) is the same thing
        torch.testing.assert_close(model(batch), together)


def test_a_2d_mask_is_always_q_pos_by_k_pos():
    model = decoder()
    window = sliding_window_mask(6, 2)
    square = ids(6, 6, seed=4)  # batch == seq
    with torch.no_grad():
        together = model(square, mask=window)
        for row in range(6):
            torch.testing.assert_close(
                together[row], model(square[row : row + 1], mask=window)[0], atol=1e-5, rtol=1e-4
            )


# ---------------------------------------------------------------- checkpoints: written safely


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    model = fresh_decoder()
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "run.pt"
    history = run_train(model=model, checkpoint=path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"half a checkpoint")
        else:
            Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, optimizer, step=3, history=history, config=quick())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]
    assert path.read_bytes() == before


def test_saves_use_their_own_temporary_file_and_reach_the_disk(tmp_path, monkeypatch):
    model = fresh_decoder()
    optimizer = torch.optim.AdamW(model.parameters())
    temporaries, synced = [], []
    real_replace, real_fsync = __import__("os").replace, __import__("os").fsync
    monkeypatch.setattr(
        "os.replace", lambda src, dst: (temporaries.append(Path(src)), real_replace(src, dst))[1]
    )
    monkeypatch.setattr("os.fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    for _ in range(2):
        save_checkpoint(
            tmp_path / "run.pt",
            model,
            optimizer,
            step=0,
            history=run_train(model=fresh_decoder(), config=quick(steps=1)),
            config=quick(),
        )
    assert len(temporaries) == 2 and temporaries[0] != temporaries[1]
    assert all(t.parent == tmp_path and t.name != "run.pt.tmp" for t in temporaries)
    assert len(synced) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]
    load_checkpoint(tmp_path / "run.pt", fresh_decoder(), config=quick())


def test_infinite_gradients_leave_the_weights_untouched():
    model = fresh_decoder()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="not updated"):
        run_train(model=model, loss_fn=infinite_gradient)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_negative_grad_clip_can_no_longer_reach_the_optimizer():
    config = TrainConfig(progress=False)
    config.grad_clip = -1.0  # set after the config was checked: train() checks it again
    with pytest.raises(ValueError, match="grad_clip"):
        train(fresh_decoder(), data, next_token_objective, config)
