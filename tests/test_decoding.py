"""Decoding: cached generation equals recomputation, sampling filters do what they say, errors are clear,
and the checkers reject typical mistakes with the matching hint."""

import dataclasses
import math

import pytest
import torch

from companion import generate, kv_cache_bytes, new_caches, presets
from companion.decoding import (
    CrossKVCache,
    KVCache,
    Sampling,
    filter_top_k,
    filter_top_p,
    next_token,
    step_seconds,
    stream,
)
from helpers import small_model


def small(kind: str = "decoder", positional: str = "learned", seed: int = 0):
    return small_model(
        kind, seed, vocab_size=23, context_length=40, d_model=32, heads=4, layers=2, positional=positional
    )


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rope"])
def test_cached_greedy_decoding_matches_recompute_decoder_only(positional):
    model = small(positional=positional)
    prompt = torch.randint(0, 23, (3, 5), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 30)
    assert torch.equal(cached, generate(model, prompt, 30, use_cache=False))
    assert cached.shape == (3, 35) and torch.equal(cached[:, :5], prompt)


def test_cached_greedy_decoding_matches_recompute_encoder_decoder():
    model = small("encoder-decoder")
    src = torch.randint(1, 23, (2, 12), generator=torch.Generator().manual_seed(2))
    start = torch.zeros(2, 1, dtype=torch.long)
    cached = generate(model, start, 25, src_ids=src)
    assert torch.equal(cached, generate(model, start, 25, src_ids=src, use_cache=False))


@pytest.mark.parametrize("kind", ["decoder", "encoder-decoder"])
def test_sampled_decoding_is_repeatable_and_cache_independent(kind):
    model = small(kind)
    prompt = torch.zeros(2, 1, dtype=torch.long)
    src = (
        torch.randint(1, 23, (2, 6), generator=torch.Generator().manual_seed(3))
        if kind == "encoder-decoder"
        else None
    )
    args = dict(src_ids=src, temperature=1.3, top_k=10, top_p=0.95)
    first = generate(model, prompt, 30, seed=7, **args)
    assert torch.equal(first, generate(model, prompt, 30, seed=7, **args))
    assert torch.equal(first, generate(model, prompt, 30, seed=7, use_cache=False, **args))
    assert not torch.equal(first, generate(model, prompt, 30, seed=8, **args))


def test_logits_with_cache_equal_teacher_forcing():
    model = small()
    ids = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(4))
    full = model(ids)
    caches = new_caches(model.config, 2, 16)
    steps = [model(ids[:, :6], caches=caches)[:, -1]] + [
        model(ids[:, t : t + 1], caches=caches, start_pos=t)[:, -1] for t in range(6, 16)
    ]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)


def test_generate_restores_training_mode():
    model = small().train()
    generate(model, torch.zeros(1, 1, dtype=torch.long), 3)
    assert model.training


def test_generated_ids_train_and_streaming_leaves_grad_mode_alone():
    model = small()
    steps = stream(model, torch.zeros(1, 1, dtype=torch.long), 3)
    next(steps)
    assert torch.is_grad_enabled()  # the caller's mode between steps is its own
    ids = generate(model, torch.zeros(2, 1, dtype=torch.long), 5)
    from companion.training import next_token_loss

    next_token_loss(model(ids), ids).backward()  # ordinary tensors, not inference tensors


def test_cache_memory_matches_formula():
    config = presets["tiny"]
    caches = new_caches(config, batch=3, capacity=100)
    assert (
        sum(c.nbytes for c in caches) == kv_cache_bytes(config, 100, batch=3) == 2 * 4 * 4 * 32 * 100 * 4 * 3
    )
    half = new_caches(config, batch=1, capacity=10, dtype=torch.bfloat16)
    assert sum(c.nbytes for c in half) == kv_cache_bytes(config, 10, bytes_per_value=2)


def test_cache_appends_after_what_it_holds():
    cache = KVCache(1, 2, 5, 3)
    a, b = torch.ones(1, 2, 2, 3), 2 * torch.ones(1, 2, 1, 3)
    cache.append(a, -a)
    keys, values = cache.append(b, -b)
    assert len(cache) == 3 and torch.equal(keys, torch.cat([a, b], 2)) and torch.equal(values, -keys)


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[False, True, False, True, False]]
    assert torch.equal(filter_top_k(logits, 99), logits)


def test_top_p_keeps_the_fewest_tokens_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.6)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.1)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 1.0)).all()


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[0.0, math.log(3.0)]]).expand(4000, 2)
    draws = next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert abs(draws.float().mean().item() - 0.75) < 0.03  # P(token 1) = 3/4; 4000 draws, sd ~0.007
    assert torch.equal(next_token(logits[:3]), torch.ones(3, dtype=torch.long))  # greedy


def test_look_ahead_breaks_the_cache():
    model = small()
    ids = torch.randint(0, 23, (1, 10), generator=torch.Generator().manual_seed(5))
    caches = new_caches(model.config, 1, 10)
    model(ids[:, :9], caches=caches, causal=False)
    step = model(ids[:, 9:], caches=caches, start_pos=9, causal=False)[:, -1]
    # Earlier positions' outputs change once a token is appended, so the keys cached from them are stale
    assert not torch.allclose(model(ids[:, :9], causal=False), model(ids, causal=False)[:, :9], atol=1e-3)
    assert not torch.allclose(step, model(ids, causal=False)[:, -1], atol=1e-3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: generate(m, torch.zeros(1, 41, dtype=torch.long), 1), "context is 40 positions"),
        (lambda m: generate(m, torch.zeros(1, 30, dtype=torch.long), 11), "31 positions|41 positions"),
        (
            lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_p=0.0),
            r"top_p=0.0: expected a number in \(0, 1\]",
        ),
        (
            lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_p=1.5),
            "top_p=1.5",
        ),
        (
            lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=-0.5),
            "temperature=-0.5: expected a finite number > 0",
        ),
        (
            lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, top_k=5),
            "temperature=0 means greedy",
        ),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_k=0), "top_k=0"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), -1), "max_new_tokens=-1"),
        (lambda m: generate(m, torch.zeros(1, 1), 3), "integer token ids"),
        (
            lambda m: generate(
                m, torch.zeros(1, 1, dtype=torch.long), 3, src_ids=torch.zeros(1, 2, dtype=torch.long)
            ),
            "only for an EncoderDecoder",
        ),
        (
            lambda m: generate(torch.nn.Linear(2, 2), torch.zeros(1, 1, dtype=torch.long), 3),
            "DecoderLM or an EncoderDecoder",
        ),
        (lambda m: stream(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=-1.0), "temperature=-1.0"),
        (lambda m: new_caches(m.config, 1, 41), "capacity=41"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(small())


def test_step_seconds_times_both_paths_and_leaves_no_trace():
    model = small()
    for use_cache in (True, False):
        seconds = step_seconds(model, 12, use_cache=use_cache, repeats=2)
        assert 0 < seconds < 10
    with pytest.raises(ValueError, match="position=40"):
        step_seconds(model, 40, use_cache=True)
    with pytest.raises(TypeError, match="DecoderLM"):
        step_seconds(small("encoder-decoder"), 3, use_cache=True)


def test_encoder_decoder_needs_a_source():
    with pytest.raises(ValueError, match="needs src_ids"):
        generate(small("encoder-decoder"), torch.zeros(1, 1, dtype=torch.long), 3)


def test_cache_refuses_to_overflow():
    cache = KVCache(1, 2, 4, 3)
    cache.append(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="holds 4 positions; 3 are used and 2 more"):
        cache.append(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3))


def test_sampling_settings_are_checked_once_and_frozen():
    sampling = Sampling(temperature=0.7, top_k=5, seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampling.temperature = 0.0  # a checked setting cannot be changed into an unchecked one
    assert Sampling().greedy and not sampling.greedy
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    # pick draws what next_token draws with the same generator state: one rule in one place
    assert torch.equal(
        sampling.pick(logits, sampling.generator()),
        next_token(logits, 0.7, top_k=5, generator=torch.Generator().manual_seed(3)),
    )
    for bad, message in (
        (dict(temperature=-1), "temperature=-1"),
        (dict(top_k=0, temperature=1.0), "top_k=0"),
        (dict(top_p=1.5, temperature=1.0), "top_p=1.5"),
        (dict(seed=-2), "seed=-2"),
        (dict(top_k=3), "temperature=0 means greedy"),
    ):
        with pytest.raises(ValueError, match=message):
            Sampling(**bad)


def test_kv_cache_truncate_forgets_the_latest_positions_only():
    cache = KVCache(1, 2, 6, 3)
    a, b = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 2, 3)
    cache.append(a, -a)
    cache.truncate(2)
    assert len(cache) == 2
    keys, values = cache.append(b, -b)  # written at position 2, after the two kept
    assert torch.equal(keys, torch.cat([a[:, :, :2], b], 2)) and torch.equal(values, -keys)
    cache.truncate()
    assert len(cache) == 0 and cache.stored()[0].shape == (1, 2, 0, 3)
    for bad in (-1, 1, 2.0, True):  # more than stored, negative, not a whole number
        with pytest.raises(ValueError, match=r"length=.*: expected a whole number in \[0, 0\]"):
            cache.truncate(bad)


def test_cross_cache_is_filled_once():
    cache = CrossKVCache()
    with pytest.raises(RuntimeError, match="empty; run one decoding step first"):
        cache.stored()
    k = torch.randn(1, 2, 5, 3)
    assert cache.fill(k, -k)[0] is k and len(cache) == 5
    with pytest.raises(RuntimeError, match="already filled"):
        cache.fill(k, k)
    assert torch.equal(cache.stored()[1], -k)
