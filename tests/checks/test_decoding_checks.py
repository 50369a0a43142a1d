"""Chapter 6 checkers (decoding): typical wrong answers, each rejected with the hint that names it."""

import pytest
import torch

from companion import generate, new_caches
from companion.attention import causal_mask, scaled_dot_product_attention
from companion.checks import CheckFailed
from companion.checks import decoding as checks
from companion.decoding import filter_top_k, filter_top_p
from reference_answers import greedy_with_cache


def good_append(cache, k, v):
    return cache.append(k, v)


def append_at_zero(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, :n], cache.values[:, :, :n] = k, v
    cache.length += n
    return cache.stored()


def append_without_length(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, cache.length : cache.length + n], cache.values[:, :, cache.length : cache.length + n] = (
        k,
        v,
    )
    return cache.keys[:, :, : cache.length + n], cache.values[:, :, : cache.length + n]


def append_whole_buffer(cache, k, v):
    cache.append(k, v)
    return cache.keys, cache.values


def append_batch_count(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, cache.length : cache.length + n], cache.values[:, :, cache.length : cache.length + n] = (
        k,
        v,
    )
    cache.length += k.shape[0]
    return cache.keys[:, :, : cache.length], cache.values[:, :, : cache.length]


def append_keys_twice(cache, k, v):
    keys, _ = cache.append(k, v)
    return keys, keys


def append_replace(cache, k, v):
    n = k.shape[2]
    cache.keys[:, :, cache.length : cache.length + n], cache.values[:, :, cache.length : cache.length + n] = (
        k,
        v,
    )
    cache.length += n
    keys, values = cache.stored()
    return torch.cat([torch.zeros_like(keys[:, :, :-n]), k], 2), torch.cat(
        [torch.zeros_like(values[:, :, :-n]), v], 2
    )


def append_outside_the_buffer(cache, k, v):
    """Right answers kept in a side list: the preallocated buffer is never written."""
    cache.side = (
        [torch.cat([cache.side[i], t], 2) for i, t in enumerate((k, v))] if hasattr(cache, "side") else [k, v]
    )
    cache.length += k.shape[2]
    return tuple(cache.side)


def top_left_attention(q, k, v):
    mask = torch.zeros(q.shape[2], k.shape[2], dtype=torch.bool)
    mask[:, : q.shape[2]] = causal_mask(q.shape[2])
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


def append_on_heads_axis(cache, k, v):
    start, end = cache.length, cache.length + k.shape[2]
    cache.keys[:, start:end] = k
    cache.values[:, start:end] = v
    cache.length = end
    return cache.keys[:, :, :end], cache.values[:, :, :end]


def append_return_new(cache, k, v):
    cache.append(k, v)
    return k, v


def append_values_into_keys(cache, k, v):
    start, end = cache.length, cache.length + k.shape[2]
    cache.keys[:, :, start:end] = k
    cache.values[:, :, start:end] = k
    cache.length = end
    return cache.stored()


def _window(q, k, shift):
    """Query i (at position k_pos - q_pos + i) sees keys j with j < position + shift: 1 is right."""
    query = torch.arange(k.shape[2] - q.shape[2], k.shape[2])[:, None]
    return torch.arange(k.shape[2])[None, :] < query + shift


def masked_with_zero(q, k, v):
    scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~_window(q, k, 1), 0.0)
    return scores.softmax(-1) @ v


def nucleus_not_scattered(logits, p):
    sorted_logits, _ = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))


def nucleus_gathered(logits, p):
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    return logits.masked_fill((probs.cumsum(-1) - probs >= p).gather(-1, order), float("-inf"))


def greedy_without_cache(model, prompt, n):
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def greedy_fresh_caches(model, prompt, n):
    ids = prompt
    for _ in range(n):
        caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
        ids = torch.cat([ids, model(ids, caches=caches, start_pos=0)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def greedy_cache_for_the_prompt_only(model, prompt, n):
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    ids = torch.cat([prompt, model(prompt, caches=caches)[:, -1].argmax(-1, keepdim=True)], dim=1)
    for _ in range(n - 1):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def greedy_prompt_token_by_token(model, prompt, n):
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    for i in range(prompt.shape[1] - 1):
        model(prompt[:, i : i + 1], caches=caches, start_pos=i)
    ids, fed = prompt, prompt.shape[1] - 1
    for _ in range(n):
        logits = model(ids[:, fed:], caches=caches, start_pos=fed)
        fed = ids.shape[1]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def greedy_one_call_too_many(model, prompt, n):
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    ids = prompt
    logits = model(ids, caches=caches, start_pos=0)
    for _ in range(n):
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        logits = model(ids[:, -1:], caches=caches, start_pos=ids.shape[1] - 1)
    return ids


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
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
        (checks.check_top_k, lambda x, k: x.topk(k, -1).indices, "or indices"),
        (checks.check_top_p, nucleus_strict, "token that brings the total to p is dropped"),
        (checks.check_top_p, lambda x, p: filter_top_p(-x, p), "least likely"),
        (checks.check_top_p, nucleus_unsorted, "vocabulary order"),
        (checks.check_top_p, checks.filter_top_p_on_logits, "over logits"),
        (checks.check_top_p, lambda x, p: filter_top_p(x, p) * 2, "changed their logits"),
        (checks.check_greedy_with_cache, greedy_variant(no_start_pos=True), "start_pos=0"),
        (checks.check_greedy_with_cache, greedy_variant(first=True), "logits of the first fed position"),
        (checks.check_greedy_with_cache, greedy_full_each_step, "only the newest token is fed"),
        (checks.check_greedy_with_cache, lambda m, p, n: generate(m, p, n)[:, p.shape[1]:], "only the new tokens"),
        (checks.check_greedy_with_cache, lambda m, p, n: torch.cat([p[:, :1] + 1, generate(m, p, n)[:, 1:]], 1), "not the prompt"),
        (checks.check_greedy_with_cache, lambda m, p, n: torch.cat([generate(m, p, n - 1), p[:, :1]], 1), "differ from full recomputation first at position 12"),
        # beyond the first audit
        (checks.check_top_k, lambda x, k: x.masked_fill(x < x.topk(k, -1).values[..., -1:], -1e9), "not a large finite number"),
        (checks.check_cache_append, append_on_heads_axis, "did you slice the heads axis"),
        (checks.check_cache_append, append_return_new, "returned only the new keys"),
        (checks.check_cache_append, append_values_into_keys, "values hold the keys"),
        (checks.check_incremental_attention, lambda q, k, v: scaled_dot_product_attention(q, k, v, _window(q, k, 0)), "misses its own key"),
        (checks.check_incremental_attention, lambda q, k, v: scaled_dot_product_attention(q, k, v, _window(q, k, 2)),
         "also sees the key after"),
        (checks.check_incremental_attention, masked_with_zero, "filled with 0"),
        (checks.check_top_k, lambda x, k: filter_top_k(x.double(), k), "dtype torch.float64"),
        (checks.check_top_p, lambda x, p: filter_top_p(x, p).softmax(-1), "returned probabilities"),
        (checks.check_top_p, lambda x, p: filter_top_p(x, p).nan_to_num(neginf=0.0), "dropped logits are 0"),
        (checks.check_top_k, lambda x, k: filter_top_k(x.half(), k), "dtype torch.float16"),
        (checks.check_top_k, lambda x, k: x.topk(k, -1).values, "not the top-k values"),
        (checks.check_top_k, lambda x, k: filter_top_k(x.sort(-1, descending=True).values, k), "sorted order"),
        (checks.check_top_p, nucleus_not_scattered, "applied to the logits in vocabulary order"),
        (checks.check_top_p, nucleus_gathered, "you used gather"),
        (checks.check_top_p, lambda x, p: filter_top_p(x.sort(-1, descending=True).values, p), "sorted order"),
        (checks.check_top_p, lambda x, p: filter_top_p(x.double(), p), "dtype torch.float64"),
        (checks.check_temperature, lambda x, t: (x * t).softmax(-1), "multiplied the logits"),
        (checks.check_temperature, lambda x, t: x.softmax(-1), "temperature is ignored"),
        (checks.check_temperature, lambda x, t: x.softmax(-1) / t, "divided the probabilities"),
        (checks.check_temperature, lambda x, t: x / t, "scaled logits"),
        (checks.check_temperature, lambda x, t: (x / t).log_softmax(-1), "log-probabilities"),
        (checks.check_temperature, lambda x, t: x.softmax(-1) ** (1 / t), "no longer sums to 1"),
        (checks.check_temperature, lambda x, t: (x / t).softmax(0), "over the batch"),
        (checks.check_temperature, lambda x, t: (x / t).exp(), "did not normalise"),
        (checks.check_temperature, lambda x, t: (x / t).double().softmax(-1), "dtype torch.float64"),
        (checks.check_greedy_with_cache, greedy_without_cache, "runs without a cache"),
        (checks.check_greedy_with_cache, greedy_fresh_caches, "fresh caches"),
        (checks.check_greedy_with_cache, greedy_cache_for_the_prompt_only, "some steps run without the caches"),
        (checks.check_greedy_with_cache, greedy_prompt_token_by_token, "feed the whole prompt"),
        (checks.check_greedy_with_cache, greedy_one_call_too_many, "ran 10 times for 9 new tokens"),
        (checks.check_greedy_with_cache, lambda m, p, n: generate(m, p, n, use_cache=False), "runs without a cache"),
        (checks.check_greedy_with_cache, lambda m, p, n: greedy_with_cache(m, p, n).int(), "dtype torch.int32"),
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)
# fmt: on


def test_top_p_checker_names_an_empty_row():
    def empty_first_row(logits, p):
        out = filter_top_p(logits, p)
        out[0] = float("-inf")
        return out

    with pytest.raises(CheckFailed, match="keeps no token"):
        checks.check_top_p(empty_first_row)


@pytest.mark.parametrize(
    "right",
    [
        lambda m, p, n: generate(m, p, n),
        lambda m, p, n: _greedy_through(m.forward, m, p, n),
        lambda m, p, n: _greedy_through(lambda ids, **kw: m.head(m.hidden_states(ids, **kw)), m, p, n),
    ],
)
def test_greedy_with_cache_accepts_other_right_ways(right):
    assert checks.check_greedy_with_cache(right)


def _greedy_through(run, model, prompt, n):
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    ids, fed = prompt, 0
    for _ in range(n):
        logits = run(ids[:, fed:], caches=caches, start_pos=fed)
        fed = ids.shape[1]
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids
