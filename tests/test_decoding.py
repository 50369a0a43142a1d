"""Decoding: cached generation equals recomputation, sampling filters do what they say, errors are clear,
and the checkers reject typical mistakes with the matching hint."""
import math

import pytest
import torch

from companion import TransformerConfig, build_model, generate, kv_cache_bytes, new_caches, presets
from companion.attention import causal_mask, scaled_dot_product_attention
from companion.checks import CheckFailed
from companion.checks import decoding as checks
from companion.decoding import KVCache, filter_top_k, filter_top_p, next_token, step_seconds, stream


def small(kind: str = "decoder", positional: str = "learned", seed: int = 0):
    torch.manual_seed(seed)
    config = TransformerConfig(kind=kind, vocab_size=23, context_length=40, d_model=32, heads=4, layers=2,
                               positional=positional)
    return build_model(config).eval()


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
    src = torch.randint(1, 23, (2, 6), generator=torch.Generator().manual_seed(3)) if kind == "encoder-decoder" else None
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
    steps = [model(ids[:, :6], caches=caches)[:, -1]] + [model(ids[:, t:t + 1], caches=caches, start_pos=t)[:, -1] for t in range(6, 16)]
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
    assert sum(c.nbytes for c in caches) == kv_cache_bytes(config, 100, batch=3) == 2 * 4 * 4 * 32 * 100 * 4 * 3
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
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_p=1.5), "top_p=1.5"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=-0.5), "temperature=-0.5 must be > 0"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, top_k=5), "temperature=0 means greedy"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, temperature=1.0, top_k=0), "top_k=0"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), -1), "max_new_tokens=-1"),
        (lambda m: generate(m, torch.zeros(1, 1), 3), "integer token ids"),
        (lambda m: generate(m, torch.zeros(1, 1, dtype=torch.long), 3, src_ids=torch.zeros(1, 2, dtype=torch.long)), "only for an EncoderDecoder"),
        (lambda m: generate(torch.nn.Linear(2, 2), torch.zeros(1, 1, dtype=torch.long), 3), "DecoderLM or an EncoderDecoder"),
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


# --- the exercise checkers accept the reference and reject typical mistakes with the matching hint ---

def good_append(cache, k, v):
    return cache.append(k, v)


def good_greedy(model, prompt, n):
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    ids, fed = prompt, 0
    for _ in range(n):
        logits = model(ids[:, fed:], caches=caches, start_pos=fed)
        fed = ids.shape[1]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_checkers_accept_reference_answers(capsys):
    assert checks.check_cache_append(good_append)
    assert checks.check_incremental_attention(lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=True))
    assert checks.check_top_k(filter_top_k)
    assert checks.check_top_p(filter_top_p)
    assert checks.check_greedy_with_cache(good_greedy)
    assert checks.check_greedy_with_cache(lambda m, p, n: generate(m, p, n))
    assert capsys.readouterr().out.count("passed") == 6


def test_checker_reports_stub_as_not_yet(capsys):
    def stub(*args):
        raise NotImplementedError("exercise")
    for checker in (checks.check_cache_append, checks.check_incremental_attention, checks.check_top_k,
                    checks.check_top_p, checks.check_greedy_with_cache):
        assert not checker(stub)
    assert capsys.readouterr().out.count("not implemented yet") == 5


def append_at_zero(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, :n], cache.values[:, :, :n] = k, v
    cache.length += n
    return cache.stored()


def append_without_length(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, cache.length:cache.length + n], cache.values[:, :, cache.length:cache.length + n] = k, v
    return cache.keys[:, :, :cache.length + n], cache.values[:, :, :cache.length + n]


def append_whole_buffer(cache, k, v):
    cache.append(k, v)
    return cache.keys, cache.values


def append_batch_count(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, cache.length:cache.length + n], cache.values[:, :, cache.length:cache.length + n] = k, v
    cache.length += k.shape[0]
    return cache.keys[:, :, :cache.length], cache.values[:, :, :cache.length]


def append_keys_twice(cache, k, v):
    keys, _ = cache.append(k, v)
    return keys, keys


def append_replace(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, cache.length:cache.length + n], cache.values[:, :, cache.length:cache.length + n] = k, v
    cache.length += n
    keys, values = cache.stored()
    return torch.cat([torch.zeros_like(keys[:, :, :-n]), k], 2), torch.cat([torch.zeros_like(values[:, :, :-n]), v], 2)


def append_outside_the_buffer(cache, k, v):
    """Right answers kept in a side list: the preallocated buffer is never written."""
    cache.side = [torch.cat([cache.side[i], t], 2) for i, t in enumerate((k, v))] if hasattr(cache, "side") else [k, v]
    cache.length += k.shape[2]
    return tuple(cache.side)


def top_left_attention(q, k, v):
    mask = torch.zeros(q.shape[2], k.shape[2], dtype=torch.bool)
    mask[:, :q.shape[2]] = causal_mask(q.shape[2])
    return scaled_dot_product_attention(q, k, v, mask)


def nucleus_strict(logits, p):
    sorted_logits, order = logits.sort(-1, descending=True)
    drop = sorted_logits.softmax(-1).cumsum(-1) >= p
    return logits.masked_fill(torch.empty_like(drop).scatter(-1, order, drop), float("-inf"))


def nucleus_unsorted(logits, p):
    probs = logits.softmax(-1)
    return logits.masked_fill((probs.cumsum(-1) - probs) >= p, float("-inf"))


def greedy_variant(**mistake):
    return lambda m, p, n: checks._greedy_variant(m, p, n, **mistake)


def greedy_full_each_step(model, prompt, n):
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, model(ids, caches=caches)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize(
    "checker, wrong, hint",
    [
        (checks.check_cache_append, append_at_zero, "write at cache.length, not at 0"),
        (checks.check_cache_append, append_without_length, "cache.length is still 0"),
        (checks.check_cache_append, append_whole_buffer, "whole preallocated buffer"),
        (checks.check_cache_append, append_batch_count, "not the batch or head count"),
        (checks.check_cache_append, append_keys_twice, "values hold the keys"),
        (checks.check_cache_append, append_replace, "older positions are lost"),
        (checks.check_cache_append, append_outside_the_buffer, "did you store into the buffer"),
        (checks.check_cache_append, lambda c, k, v: c.append(k, v)[0], "return a pair"),
        (checks.check_incremental_attention, top_left_attention, "aligned to the top-left"),
        (checks.check_incremental_attention, lambda q, k, v: scaled_dot_product_attention(q, k, v), "each other's future"),
        (checks.check_incremental_attention, lambda q, k, v: scaled_dot_product_attention(q, k[:, :, -q.shape[2]:], v[:, :, -q.shape[2]:], causal=True), "only to the new keys"),
        (checks.check_incremental_attention, lambda q, k, v: scaled_dot_product_attention(q * q.shape[-1] ** 0.25, k * q.shape[-1] ** 0.25, v, causal=True), "not divided by sqrt"),
        (checks.check_incremental_attention, lambda q, k, v: v, "one output vector per new query"),
        (checks.check_top_k, lambda x, k: x.masked_fill(x < x.topk(k, -1).values[..., -1:], 0.0), "logit of 0 still gets probability"),
        (checks.check_top_k, lambda x, k: filter_top_k(x, k).softmax(-1), "returned probabilities"),
        (checks.check_top_k, lambda x, k: filter_top_k(x, k).log_softmax(-1), "log-probabilities"),
        (checks.check_top_k, lambda x, k: -filter_top_k(-x, k), "k smallest"),
        (checks.check_top_k, lambda x, k: filter_top_k(x, k + 1), "keeps 4 tokens"),
        (checks.check_top_k, lambda x, k: x.masked_fill(x <= x.topk(k, -1).values[..., -1:], float("-inf")), "keeps 2 tokens"),
        (checks.check_top_k, lambda x, k: x.masked_fill(x < x.topk(k, 0).values[-1:], float("-inf")), "batch axis"),
        (checks.check_top_k, lambda x, k: x.topk(k, -1).indices, "not the indices"),
        (checks.check_top_p, nucleus_strict, "token that brings the total to p is dropped"),
        (checks.check_top_p, lambda x, p: filter_top_p(-x, p), "least likely"),
        (checks.check_top_p, nucleus_unsorted, "vocabulary order"),
        (checks.check_top_p, checks.filter_top_p_on_logits, "over logits"),
        (checks.check_top_p, lambda x, p: filter_top_p(x, p) * 2, "differs from the reference"),
        (checks.check_greedy_with_cache, greedy_variant(no_start_pos=True), "start_pos=0"),
        (checks.check_greedy_with_cache, greedy_variant(first=True), "logits of the first fed position"),
        (checks.check_greedy_with_cache, greedy_full_each_step, "the cache overflowed"),
        (checks.check_greedy_with_cache, lambda m, p, n: generate(m, p, n)[:, p.shape[1]:], "only the new tokens"),
        (checks.check_greedy_with_cache, lambda m, p, n: torch.cat([p[:, :1] + 1, generate(m, p, n)[:, 1:]], 1), "not the prompt"),
        (checks.check_greedy_with_cache, lambda m, p, n: torch.cat([generate(m, p, n - 1), p[:, :1]], 1), "differ from full recomputation first at position 12"),
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)


def test_top_p_checker_names_an_empty_row():
    def empty_first_row(logits, p):
        out = filter_top_p(logits, p)
        out[0] = float("-inf")
        return out
    with pytest.raises(CheckFailed, match="keeps no token"):
        checks.check_top_p(empty_first_row)
