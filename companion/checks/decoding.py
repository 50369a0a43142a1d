"""Checkers for the chapter 6 (decoder inference and the KV cache) exercises."""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

from ..attention import causal_mask, scaled_dot_product_attention
from ..config import TransformerConfig
from ..decoding import KVCache, filter_top_k, filter_top_p, generate, new_caches
from ..models import DecoderLM
from ._core import Checker, random_tensor

# The einsum patterns of companion.attention: scores q k^T, then the weighted sum of values.
SCORES = "batch heads q_pos d_head, batch heads k_pos d_head -> batch heads q_pos k_pos"
MIX = "batch heads q_pos k_pos, batch heads k_pos d_head -> batch heads q_pos d_head"

__all__ = [
    "check_cache_append",
    "check_incremental_attention",
    "check_top_k",
    "check_top_p",
    "check_temperature",
    "check_greedy_with_cache",
]

B, H, D = 2, 3, 4  # batch, heads, d_head: all different, so a swapped axis shows


def check_cache_append(fn) -> bool:
    """fn(cache, k, v) -> (keys, values): write k, v into cache.keys/cache.values at cache.length,
    advance cache.length, and return every position stored so far."""
    with Checker("check_cache_append") as c:
        cache = KVCache(B, H, 9, D)
        chunks = [
            (random_tensor(B, H, n, D, seed=2 * n), random_tensor(B, H, n, D, seed=2 * n + 1))
            for n in (3, 1, 2)
        ]
        for step, (k, v) in enumerate(chunks, 1):
            with c.explain(
                {
                    "must match": "the new keys do not fit where you wrote them: k is (batch, heads, new, "
                    "d_head), and positions are the third axis, cache.keys[:, :, cache.length:cache.length + "
                    "new] (did you slice the heads axis, cache.keys[:, start:end]?)"
                }
            ):
                got = c.call(fn, cache, k, v)
            if not isinstance(got, tuple) or len(got) != 2:
                c.fail(f"return a pair (keys, values), got {type(got).__name__}")
            seen = sum(chunk[0].shape[2] for chunk in chunks[:step])
            keys, values = got
            c.expect_tensor(keys, "your keys")
            if keys.shape == (B, H, 9, D):
                c.fail(
                    "you returned the whole preallocated buffer; return only the positions stored so far, "
                    "cache.keys[:, :, :cache.length]"
                )
            if cache.length != seen:
                if cache.length == 0:
                    c.fail("cache.length is still 0: advance it by the number of new positions")
                c.fail(
                    f"after {step} appends cache.length is {cache.length}, expected {seen}: add k.shape[2], "
                    "the number of new positions, not the batch or head count"
                )
            expected_k = torch.cat([chunk[0] for chunk in chunks[:step]], dim=2)
            expected_v = torch.cat([chunk[1] for chunk in chunks[:step]], dim=2)
            if step > 1 and tuple(keys.shape) == tuple(k.shape) and torch.equal(keys, k):
                c.fail(
                    "you returned only the new keys and values; return every position stored so far, "
                    "cache.keys[:, :, :cache.length], so attention sees the whole past"
                )
            c.expect_shape(keys, tuple(expected_k.shape), f"your keys after append {step}")
            if (
                step > 1
                and not torch.allclose(keys, expected_k)
                and torch.allclose(keys[:, :, : k.shape[2]], k)
            ):
                c.fail("the new keys overwrite the first slots: write at cache.length, not at 0")
            overwritten = torch.cat([torch.zeros(B, H, seen - k.shape[2], D), k], dim=2)
            c.diagnose(
                keys,
                expected_k,
                {
                    "older positions are lost: keep them and write the new ones after them": overwritten,
                },
                what=f"your keys after append {step}",
            )
            c.diagnose(
                values,
                expected_v,
                {
                    "the values hold the keys: store v in cache.values": expected_k,
                },
                what=f"your values after append {step}",
            )
            c.diagnose(
                cache.keys[:, :, :seen], expected_k, what="cache.keys (did you store into the buffer?)"
            )
    return c.passed


def check_incremental_attention(fn) -> bool:
    """fn(q, k, v) -> (batch, heads, q_pos, d_head): q holds the newest q_pos positions, k and v every
    position so far (k_pos >= q_pos); each query sees the keys up to its own position."""
    with Checker("check_incremental_attention") as c:
        for q_len, k_len in ((1, 6), (3, 7)):
            q, k, v = (
                random_tensor(B, H, n, D, seed=n + 10 * i) for i, n in enumerate((q_len, k_len, k_len))
            )
            got = c.call(fn, q, k, v)
            c.expect_shape(got, (B, H, q_len, D), hint="one output vector per new query")
            expected = scaled_dot_product_attention(q, k, v, causal=True, fused=False)
            top_left = causal_mask(q_len, q_len)
            top_left = torch.cat([top_left, torch.zeros(q_len, k_len - q_len, dtype=torch.bool)], dim=1)
            raw = einsum(q, k, SCORES)
            query_pos = torch.arange(k_len - q_len, k_len)[:, None]
            key_pos = torch.arange(k_len)[None, :]
            mistakes = {
                "off by one: each query misses its own key; query i sits at position k_pos - q_pos + i and "
                "sees keys up to and including it (>=, not >)": scaled_dot_product_attention(
                    q, k, v, query_pos > key_pos, fused=False
                ),
                "off by one: each query also sees the key after its own position; keep keys up to "
                "k_pos - q_pos + i": scaled_dot_product_attention(
                    q, k, v, query_pos + 1 >= key_pos, fused=False
                ),
                "masked scores are filled with 0, which still gets weight after the softmax; fill them with -inf": einsum(
                    (raw / D**0.5).masked_fill(~causal_mask(q_len, k_len), 0.0).softmax(-1), v, MIX
                ),
                "the mask is aligned to the top-left: the new queries are the LAST q_pos positions, so query i "
                "sits at position k_pos - q_pos + i and sees every key up to it": scaled_dot_product_attention(
                    q, k, v, top_left, fused=False
                ),
                "the new queries attend to each other's future: with more than one new token a causal mask is "
                "still needed among them": scaled_dot_product_attention(q, k, v, fused=False),
                "the queries attend only to the new keys: they must see every cached position too": scaled_dot_product_attention(
                    q, k[:, :, -q_len:], v[:, :, -q_len:], causal=True, fused=False
                ),
                "your scores are not divided by sqrt(d_head)": einsum(
                    raw.masked_fill(~causal_mask(q_len, k_len), float("-inf")).softmax(-1), v, MIX
                ),
            }
            c.diagnose(got, expected, mistakes, what=f"your output for {q_len} new of {k_len} positions")
    return c.passed


def _logits(seed: int) -> Tensor:
    return random_tensor(4, 11, seed=seed) * 2  # (batch, vocab): 11 tokens, distinct values


def check_top_k(fn) -> bool:
    """fn(logits, k) -> logits with everything outside each row's k largest set to -inf."""
    with Checker("check_top_k") as c:
        logits = _logits(1)
        for k in (3, 1):
            got = c.call(fn, logits, k)
            c.expect_shape(
                got,
                tuple(logits.shape),
                what=f"your result for k={k}",
                hint="return filtered logits of the same shape (batch, vocab), not the top-k values "
                "or indices",
            )
            c.expect_dtype(got, logits.dtype, what=f"your result for k={k}", hint="keep the logits' dtype")
            if torch.equal(got.sort(-1).values, filter_top_k(logits, k).sort(-1).values) and not torch.equal(
                got, filter_top_k(logits, k)
            ):
                c.fail(
                    "your logits are in sorted order: keep each logit at its vocabulary index (mask the "
                    "original logits rather than returning sorted ones)"
                )
            kept = torch.isfinite(got)
            if torch.allclose(got.sum(-1), torch.ones(len(got)), atol=1e-4):
                c.fail(
                    "you returned probabilities; return logits (the softmax comes later, after every filter)"
                )
            if (~kept).sum() == 0 and (got == 0).any():
                c.fail("the dropped logits are 0, but a logit of 0 still gets probability; set them to -inf")
            if torch.allclose(got.exp().sum(-1), torch.ones(len(got)), atol=1e-4) and not torch.allclose(
                got, filter_top_k(logits, k)
            ):
                c.fail("you returned log-probabilities; return the kept logits unchanged")
            per_row = kept.sum(-1)
            smallest = torch.isfinite(-filter_top_k(-logits, k))
            if torch.equal(kept, smallest):
                c.fail("you kept the k smallest logits; topk picks the largest")
            if (per_row == k + 1).all():
                c.fail(
                    f"each row keeps {k + 1} tokens: an off-by-one, the k-th largest itself stays and nothing below it"
                )
            if (per_row == k - 1).all():
                c.fail(f"each row keeps {k - 1} tokens: an off-by-one, keep logits >= the k-th largest")
            c.diagnose(
                got,
                filter_top_k(logits, k),
                {
                    "the top k are taken over the batch axis (dim 0); use the vocab axis (dim -1)": logits.masked_fill(
                        logits < logits.topk(k, dim=0).values[-1:], float("-inf")
                    ),
                },
                what=f"your result for k={k}",
            )
    return c.passed


def check_top_p(fn) -> bool:
    """fn(logits, p) -> logits with everything outside each row's nucleus set to -inf: the fewest most
    likely tokens whose probabilities sum to at least p (the token that crosses p stays)."""
    with Checker("check_top_p") as c:
        logits = _logits(2)
        probs = logits.softmax(-1)
        for p in (0.6, 0.05):
            got = c.call(fn, logits, p)
            c.expect_shape(got, tuple(logits.shape), what=f"your result for p={p}")
            c.expect_dtype(got, logits.dtype, what=f"your result for p={p}", hint="keep the logits' dtype")
            expected = filter_top_p(logits, p)
            if torch.allclose(got.sum(-1), torch.ones(len(got)), atol=1e-4):
                c.fail(
                    "you returned probabilities; return logits (the softmax comes later, after every filter)"
                )
            if torch.isfinite(got).all() and (got == 0).any():
                c.fail("the dropped logits are 0, but a logit of 0 still gets probability; set them to -inf")
            if torch.equal(got.sort(-1).values, expected.sort(-1).values) and not torch.equal(got, expected):
                c.fail(
                    "your logits are in sorted order: put the decisions back in vocabulary order "
                    "(scatter with the sort order) and mask the original logits"
                )
            kept, want = torch.isfinite(got), torch.isfinite(expected)
            if torch.equal(kept, want):
                if not torch.allclose(got[kept], logits[kept], atol=1e-5, rtol=1e-4):
                    c.fail(
                        f"at p={p} you kept the right tokens but changed their logits; return the kept logits "
                        "unchanged (softmax and temperature come later)"
                    )
                continue
            sorted_probs, order = probs.sort(-1, descending=True)
            cumulative = sorted_probs.cumsum(-1)
            strict = torch.empty_like(kept).scatter(
                -1, order, cumulative >= p
            )  # drops the token that crosses p
            drop_sorted = (cumulative - sorted_probs) >= p
            if torch.equal(kept, ~drop_sorted):
                c.fail(
                    "your keep/drop decisions are in sorted order but applied to the logits in vocabulary "
                    "order: scatter them back first, torch.zeros_like(drop).scatter(-1, order, drop)"
                )
            if torch.equal(kept, ~drop_sorted.gather(-1, order)):
                c.fail(
                    "you used gather with the sort order, which applies the permutation the wrong way; scatter "
                    "the sorted decisions back, .scatter(-1, order, drop) (or gather with order.argsort())"
                )
            if torch.equal(kept, ~strict):
                c.fail(
                    "the token that brings the total to p is dropped: keep it, so the kept mass reaches p "
                    "(and the most likely token always stays)"
                )
            if (kept.sum(-1) == 0).any():
                c.fail(
                    f"a row keeps no token at p={p}: the most likely token always stays, even when its "
                    "probability alone exceeds p"
                )
            ascending = filter_top_p(-logits, p)
            if torch.equal(kept, torch.isfinite(ascending)):
                c.fail("you kept the least likely tokens: sort the probabilities in descending order")
            unsorted_cum = probs.cumsum(-1)
            if torch.equal(kept, (unsorted_cum - probs) < p):
                c.fail("the cumulative sum runs in vocabulary order: sort by probability (descending) first")
            if torch.equal(kept, torch.isfinite(filter_top_p_on_logits(logits, p))):
                c.fail("the cumulative sum runs over logits: turn them into probabilities with softmax first")
            mass = (probs * kept).sum(-1)
            c.fail(
                f"rows keep {kept.sum(-1).tolist()} tokens with mass {[round(m, 3) for m in mass.tolist()]}; "
                f"expected {want.sum(-1).tolist()} tokens, the fewest whose mass reaches p={p}"
            )
    return c.passed


def filter_top_p_on_logits(logits: Tensor, p: float) -> Tensor:
    """A typical mistake, kept for the checker: the nucleus computed from raw logits, not probabilities."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.cumsum(-1)
    drop = (cumulative - sorted_logits) >= p
    return logits.masked_fill(torch.empty_like(drop).scatter(-1, order, drop), float("-inf"))


def check_temperature(fn) -> bool:
    """fn(logits, temperature) -> (batch, vocab) probabilities softmax(logits / temperature): below 1 sharper,
    above 1 flatter."""
    with Checker("check_temperature") as c:
        logits = _logits(3)
        for t in (0.5, 2.0):
            got = c.call(fn, logits, t)
            what = f"your probabilities at temperature {t}"
            c.expect_shape(
                got, tuple(logits.shape), what, hint="one distribution over the vocabulary per row"
            )
            probs = logits.softmax(-1)
            powered = probs ** (1 / t)
            c.diagnose(
                got,
                (logits / t).softmax(-1),
                {
                    "you multiplied the logits by the temperature; divide by it, so a low temperature sharpens": (
                        logits * t
                    ).softmax(-1),
                    "the temperature is ignored: divide the logits by it before the softmax": probs,
                    "you divided the probabilities by the temperature after the softmax; divide the logits before it, "
                    "so the result is still a distribution": probs / t,
                    "these are the scaled logits: apply softmax to logits / temperature": logits / t,
                    "these are log-probabilities: use softmax, not log_softmax": (logits / t).log_softmax(-1),
                    "probs ** (1 / temperature) is right up to a constant, but it no longer sums to 1: normalise it, "
                    "or take softmax(logits / temperature)": powered,
                    "the softmax runs over the batch (dim 0); it belongs on the vocabulary (dim -1)": (
                        logits / t
                    ).softmax(0),
                    "you exponentiated logits / temperature but did not normalise: divide by the row's sum (softmax "
                    "does both)": (logits / t).exp(),
                },
                what=what,
            )
    return c.passed


class _WatchCalls:
    """Records how the model is run: the positions fed to its embeddings and the cache its first block gets."""

    def __init__(self, model: DecoderLM):
        self.calls: list[dict] = []
        self.handles = [
            model.embed.register_forward_pre_hook(self._embed, with_kwargs=True),
            model.decoder.blocks[0].register_forward_pre_hook(self._block, with_kwargs=True),
        ]

    def _embed(self, module, args, kwargs):
        ids = args[0] if args else kwargs["ids"]
        positions = args[1] if len(args) > 1 else kwargs.get("positions")
        start = None if positions is None else int(positions.flatten()[0])
        self.calls.append(dict(fed=ids.shape[1], start=start, cache=None))

    def _block(self, module, args, kwargs):
        if self.calls:
            self.calls[-1]["cache"] = kwargs.get("cache")

    def __enter__(self) -> _WatchCalls:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _name_call_mistake(c: Checker, calls: list[dict], prompt_len: int, n: int) -> None:
    """Fail when the model was not run as cached decoding runs it: the prompt once, then one new token
    per step, each at the next position, all through one set of caches."""
    if not calls:
        c.fail("the model was never called: run it once on the prompt, then once per new token")
    if all(call["cache"] is None for call in calls):
        c.fail(
            "the model runs without a cache: every step recomputes the whole sequence. Make caches once with "
            "new_caches(model.config, batch, prompt_len + max_new_tokens) and pass caches=... and start_pos=..."
        )
    if any(call["cache"] is None for call in calls):
        c.fail("some steps run without the caches: pass caches=... on every call")
    if len({id(call["cache"]) for call in calls}) > 1:
        c.fail(
            "each step gets fresh caches, so nothing is reused and the whole sequence is fed again: make the "
            "caches once, before the loop, and pass the same ones to every call"
        )
    if calls[0]["fed"] != prompt_len or calls[0]["start"] not in (0, None):
        c.fail(
            f"the first call feeds {calls[0]['fed']} positions from position {calls[0]['start']}: feed the "
            f"whole prompt ({prompt_len} tokens) once, at start_pos=0, to fill the cache"
        )
    for step, call in enumerate(calls[1:], 1):
        if call["fed"] != 1:
            c.fail(
                f"call {step + 1} feeds {call['fed']} positions: after the prompt, feed only the newest "
                "token (ids[:, -1:] or ids[:, fed:]); the cache holds the rest"
            )
        if call["start"] is not None and call["start"] != prompt_len + step - 1:
            c.fail(
                f"call {step + 1} puts its token at position {call['start']}, expected "
                f"{prompt_len + step - 1}: start_pos is the number of positions already cached"
            )
    if len(calls) != n:
        c.fail(
            f"the model ran {len(calls)} times for {n} new tokens: once on the prompt, then once for each new "
            "token but the last (its logits are never needed)"
        )


def _checker_model() -> DecoderLM:
    torch.manual_seed(6)
    config = TransformerConfig(
        kind="decoder", vocab_size=13, context_length=20, d_model=16, heads=2, layers=2
    )
    return DecoderLM(config).eval()


def _greedy_variant(
    model: DecoderLM, prompt: Tensor, n: int, *, first: bool = False, no_start_pos: bool = False
) -> Tensor:
    """Cached greedy decoding with one typical mistake switched on."""
    caches = new_caches(model.config, prompt.shape[0], prompt.shape[1] + n)
    ids, fed = prompt, 0
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids[:, fed:], caches=caches, start_pos=0 if no_start_pos else fed)
            fed = ids.shape[1]
            token = (logits[:, 0] if first else logits[:, -1]).argmax(-1)
            ids = torch.cat([ids, token[:, None]], dim=1)
    return ids


def check_greedy_with_cache(fn) -> bool:
    """fn(model, prompt_ids, max_new_tokens) -> (batch, prompt + new) ids: greedy decoding that feeds the
    prompt once, then one token per step, through caches from new_caches."""
    with Checker("check_greedy_with_cache") as c:
        model = _checker_model()
        prompt = torch.tensor([[1, 5, 2, 7], [3, 3, 9, 0]])
        n = 9
        try:
            with _WatchCalls(model) as watch:
                got = c.call(fn, model, prompt, n)
        except ValueError as error:
            if "KV cache holds" in str(error):
                c.fail(
                    "the cache overflowed: after the first step feed only the newest token "
                    f"(ids[:, -1:]); the cache already holds the rest. ({error})"
                )
            if "context is" in str(error):
                c.fail(
                    f"positions ran past the context: start_pos is the number of positions already cached. ({error})"
                )
            if "already holds" in str(error):  # the library refuses a start_pos that disagrees with the cache
                c.fail(
                    "start_pos must be the number of positions already cached, and after the prompt only the "
                    f"newest token is fed (ids[:, -1:]); the cache holds the rest. ({error})"
                )
            raise
        got = c.expect_tensor(got, "your ids")
        expected = generate(model, prompt, n, use_cache=False)
        if tuple(got.shape) == (2, n):
            c.fail("you returned only the new tokens; return the prompt followed by them, as generate does")
        c.expect_shape(got, tuple(expected.shape), "your ids")
        c.expect_dtype(got, torch.long, "your ids", hint="token ids are integers (argmax indices)")
        if not torch.equal(got, expected):
            _name_greedy_mistake(c, model, prompt, n, got, expected)
        _name_call_mistake(c, watch.calls, prompt.shape[1], n)
    return c.passed


def _name_greedy_mistake(
    c: Checker, model: DecoderLM, prompt: Tensor, n: int, got: Tensor, expected: Tensor
) -> None:
    """Fail with the first typical mistake the wrong tokens match, else say where they diverge."""
    if not torch.equal(got[:, : prompt.shape[1]], prompt):
        c.fail("the first columns are not the prompt: return torch.cat([prompt, new tokens], dim=1)")
    for hint, wrong in {
        "you took the logits of the first fed position; the next token comes from the last (logits[:, -1])": _greedy_variant(
            model, prompt, n, first=True
        ),
    }.items():
        if torch.equal(got, wrong):
            c.fail(hint)
    step = int((got != expected).any(0).nonzero()[0])
    c.fail(
        f"your tokens differ from full recomputation first at position {step}: "
        f"got {got[:, step].tolist()}, expected {expected[:, step].tolist()}"
    )
