"""Generation one token at a time: key/value caches, greedy decoding and sampling (temperature, top-k, top-p).

Chapter 6 (decoder inference and the KV cache) explains them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from .attention import no_dropout
from .config import TransformerConfig
from .device import autocast, compute_dtype, values_trusted
from .models import DecoderLM, EncoderDecoder, check_ids
from .validation import expect, flag, is_number, is_whole, sizes, whole_number


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself: `torch.compile(model)` wraps it in an OptimizedModule that keeps it as `_orig_mod`.
    Generation reads the config and methods from the model, and calls the compiled wrapper to run it."""
    return getattr(model, "_orig_mod", model)


class KVCache:
    """One layer's self-attention keys and values, preallocated for `capacity` positions.

    Earlier tokens never change under a causal mask, so their keys and values can be kept
    and only the new positions computed. `length` positions are stored; `append` adds new ones
    and `truncate` forgets the latest.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        capacity: int,
        d_head: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        sizes(batch=batch, heads=heads, capacity=capacity, d_head=d_head)
        self.keys = torch.zeros(batch, heads, capacity, d_head, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def capacity(self) -> int:
        """Positions the cache can hold (read off the tensor, so compiled code sees a size, not a constant)."""
        return self.keys.shape[2]

    def __len__(self) -> int:
        return self.length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (batch heads seq d_head) into the next free slots; return every position stored."""
        batch, heads, capacity, d_head = self.keys.shape
        start, end = self.length, self.length + k.shape[2]
        if (
            k.shape != v.shape
            or k.dim() != 4
            or (k.shape[0], k.shape[1], k.shape[3]) != (batch, heads, d_head)
        ):
            name, t = ("k", k) if v.shape == k.shape else ("v", v)
            raise ValueError(
                f"the KV cache was made for (batch, heads, d_head) = {(batch, heads, d_head)} but {name} has "
                f"shape {tuple(t.shape)}; make the caches with new_caches(config, batch, capacity) for this batch"
            )
        if end > capacity:
            raise ValueError(
                f"the KV cache holds {capacity} positions; {start} are used and {end - start} more were given"
            )
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def stored(self) -> tuple[Tensor, Tensor]:
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def truncate(self, length: int = 0) -> None:
        """Forget every position from `length` on (0, the default, empties the cache); the next append
        writes at `length`. Nothing is freed: the preallocated tensors stay for reuse."""
        expect(
            is_whole(length) and 0 <= length <= self.length,
            "length",
            length,
            f"a whole number in [0, {self.length}], the positions to keep",
        )
        self.length = length

    @property
    def nbytes(self) -> int:
        """Memory held by the preallocated key and value tensors, used or not."""
        return self.keys.nbytes + self.values.nbytes


class CrossKVCache:
    """Cross-attention keys and values: the projected encoder output. They depend on the source only,
    so the first decoding step fills the cache and every later step reads it."""

    def __init__(self):
        self.kv: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        """Source positions stored: 0 until filled."""
        return 0 if self.kv is None else self.kv[0].shape[2]

    def fill(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the keys and values (batch heads src_seq d_head) of the whole source; return them."""
        if self.kv is not None:
            raise RuntimeError(
                "the cross-attention cache is already filled: it holds one source's keys and "
                "values; make new caches for another source"
            )
        self.kv = (k, v)
        return k, v

    def stored(self) -> tuple[Tensor, Tensor]:
        if self.kv is None:
            raise RuntimeError("the cross-attention cache is empty; run one decoding step first")
        return self.kv


def new_caches(
    config: TransformerConfig,
    batch: int,
    capacity: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[KVCache]:
    """One empty self-attention cache per decoder layer, each holding `capacity` positions of the
    config's kv_heads key/value heads (fewer than heads with grouped-query attention)."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(
            f"new_caches takes the model's TransformerConfig (model.config), got {type(config).__name__}"
        )
    expect(
        is_whole(capacity) and 1 <= capacity <= config.context_length,
        "capacity",
        capacity,
        f"a whole number in [1, context_length={config.context_length}]",
    )
    whole_number("batch", batch, note="the number of sequences decoded together")
    layers = config.decoder_layers if config.kind == "encoder-decoder" else config.layers
    return [KVCache(batch, config.n_kv_heads, capacity, config.d_head, device, dtype) for _ in range(layers)]


def kv_cache_bytes(
    config: TransformerConfig, positions: int, batch: int = 1, bytes_per_value: int = 4
) -> int:
    """2 (keys and values) * layers * kv_heads * d_head * positions * bytes, for each sequence in the batch.

    kv_heads is the number of key/value heads (config.n_kv_heads): heads, or fewer with grouped-query
    attention, which divides the cache by heads / kv_heads."""
    layers = config.decoder_layers if config.kind == "encoder-decoder" else config.layers
    return 2 * layers * config.n_kv_heads * config.d_head * positions * bytes_per_value * batch


# ---------------------------------------------------------------- picking the next token


def _check_top_k(k) -> None:
    whole_number("top_k", k, note="the number of most likely tokens to keep")


def _check_top_p(p) -> None:
    expect(is_number(p) and 0.0 < p <= 1.0, "top_p", p, "a number in (0, 1]; 1 keeps every token")


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (vocab is the last axis); set the rest to -inf."""
    _check_top_k(k)
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the fewest most likely tokens whose probabilities sum to at least p."""
    _check_top_p(p)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # A token stays if the mass before it is still short of p, so the one that reaches p stays too.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = torch.empty_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked, checked once, when made.

    temperature=0 is greedy decoding (argmax); temperature > 0 samples from softmax(logits / temperature),
    restricted to the top_k most likely tokens and to the top_p nucleus when they are given. seed makes
    sampling repeatable. `next_token`, `stream` and `generate` take these four as keyword arguments and
    make one `Sampling` from them.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        expect(
            is_number(t) and t >= 0,
            "temperature",
            t,
            "a finite number > 0 to sample, or 0 for greedy decoding",
        )
        if t == 0 and (self.top_k is not None or self.top_p is not None):
            raise ValueError(
                f"temperature=0 means greedy decoding, which ignores top_k={self.top_k} and "
                f"top_p={self.top_p}; give a temperature > 0 to sample"
            )
        if self.top_k is not None:
            _check_top_k(self.top_k)
        if self.top_p is not None:
            _check_top_p(self.top_p)
        seed = self.seed
        expect(
            seed is None or (is_whole(seed) and 0 <= seed < 2**63),
            "seed",
            seed,
            "None or a whole number >= 0",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator | None:
        """A fresh CPU generator seeded with `seed` (None without one): the draws of one generation."""
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)

    def pick(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One token per row of (batch, vocab) logits, which the caller has checked."""
        if self.greedy:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None:
            logits = filter_top_k(logits, self.top_k)
        if self.top_p is not None:
            logits = filter_top_p(logits, self.top_p)
        probs = logits.softmax(dim=-1)
        # Drawn on the CPU with a CPU generator, so a seed gives the same tokens on any device.
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.dtype.is_floating_point or logits.dim() != 2:
        shown = (
            f"shape {tuple(logits.shape)}, dtype {logits.dtype}"
            if isinstance(logits, Tensor)
            else type(logits).__name__
        )
        raise ValueError(f"logits ({shown}) must be a floating-point (batch, vocab) tensor")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits has shape {tuple(logits.shape)}: an empty vocabulary")
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | torch.isneginf(logits).all(-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise FloatingPointError(
            f"logits row {row} holds NaN or +inf, or only -inf, so no token can be chosen: logits must be finite "
            "(or -inf for excluded tokens, with at least one finite); a model that gives these has non-finite "
            "weights or activations"
        )


def next_token(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row of (batch, vocab) logits: argmax when temperature is 0, else a sample
    from softmax(logits / temperature) restricted by top_k and top_p (see `Sampling`)."""
    sampling = Sampling(temperature, top_k, top_p)
    _check_logits(logits)
    return sampling.pick(logits, generator)


# ---------------------------------------------------------------- generation


def stream(
    model: nn.Module,
    prompt_ids: Tensor,
    max_new_tokens: int,
    *,
    src_ids: Tensor | None = None,
    use_cache: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Yield the new tokens one step at a time, each (batch,); see `generate` for the arguments.

    The arguments are checked here, before the first step is asked for.
    """
    sampling = Sampling(temperature, top_k, top_p, seed)
    inner = unwrap(model)
    if not isinstance(inner, (DecoderLM, EncoderDecoder)):
        raise TypeError(
            f"generate needs a DecoderLM or an EncoderDecoder (or one wrapped by torch.compile), "
            f"got {type(inner).__name__}"
        )
    config = inner.config
    whole_number("max_new_tokens", max_new_tokens, 0)
    flag("use_cache", use_cache)
    check_ids(prompt_ids, config, "prompt_ids")
    total = prompt_ids.shape[1] + max_new_tokens
    if total > config.context_length:
        raise ValueError(
            f"prompt_ids has {prompt_ids.shape[1]} tokens and max_new_tokens={max_new_tokens}: {total} positions, "
            f"but the model's context is {config.context_length}; shorten the prompt or ask for fewer tokens"
        )
    encoder_decoder = isinstance(inner, EncoderDecoder)
    if encoder_decoder and src_ids is None:
        raise ValueError("an EncoderDecoder needs src_ids, the source sequence the decoder attends to")
    if not encoder_decoder and src_ids is not None:
        raise ValueError("src_ids is only for an EncoderDecoder; a DecoderLM reads its prompt only")
    if encoder_decoder:
        check_ids(src_ids, config, "src_ids")
        if src_ids.shape[0] != prompt_ids.shape[0]:
            raise ValueError(
                f"src_ids has batch {src_ids.shape[0]} but prompt_ids has batch {prompt_ids.shape[0]}"
            )
    return _steps(
        model,
        inner,
        prompt_ids,
        src_ids,
        max_new_tokens=max_new_tokens,
        use_cache=use_cache,
        sampling=sampling,
    )


def _steps(
    run: nn.Module,
    model: DecoderLM | EncoderDecoder,
    prompt_ids: Tensor,
    src_ids: Tensor | None,
    *,
    max_new_tokens: int,
    use_cache: bool,
    sampling: Sampling,
) -> Iterator[Tensor]:
    """`stream` once its arguments are checked. run: what computes, the model or the torch.compile wrapper
    around it; model: the model itself, whose config and methods are read."""
    device = next(model.parameters()).device
    ids = prompt_ids.to(device)
    generator = sampling.generator()
    # Reading a value on a GPU waits for the queued kernels. Greedy steps there never read one: the
    # finiteness of every step's logits is gathered on the device and read once, after the last step.
    # Sampling reads the probabilities anyway (on the CPU), and the CPU has nothing to wait for.
    check_each_step = device.type == "cpu" or not sampling.greedy
    finite = None
    # Dropout is switched off for this thread only (no_dropout), never with model.eval(): the model's mode is
    # shared by every thread using it and would outlive a half-consumed stream. Inference mode (no autograd
    # bookkeeping), autocast and no_dropout are entered for each step, never around a `yield`, so the
    # caller's code between steps runs in its own mode. values_trusted(): the prompt was checked in
    # stream() and every later token is the model's own, so the model skips reading ids back.
    with no_dropout(), torch.inference_mode(), autocast(device), values_trusted():
        if isinstance(model, EncoderDecoder):
            src_ids = src_ids.to(device)
            memory, memory_mask = model.encode(src_ids), model.source_mask(src_ids)
            decode = partial(model.decode, memory=memory, memory_mask=memory_mask, last_only=True)
        else:
            decode = partial(run, last_only=True)  # the vocabulary head for the last position only
        kwargs = {}
        if use_cache:
            dtype = compute_dtype(device, next(model.parameters()).dtype)  # bf16 under autocast
            kwargs["caches"] = new_caches(
                model.config, ids.shape[0], ids.shape[1] + max_new_tokens, device=device, dtype=dtype
            )
            if isinstance(model, EncoderDecoder):
                kwargs["cross_caches"] = [CrossKVCache() for _ in kwargs["caches"]]
            if run is not model:
                # Compiled: the caches' capacity (prompt + new tokens) is a symbolic size, so the next
                # generate, of another length, reuses the compiled code instead of compiling again.
                for cache in kwargs["caches"]:
                    torch._dynamo.maybe_mark_dynamic(cache.keys, 2)
                    torch._dynamo.maybe_mark_dynamic(cache.values, 2)
    # What the next cached step reads (the prompt, then each new token alone), and from which position.
    new_ids, fed = ids, 0
    for step in range(max_new_tokens):
        with no_dropout(), torch.inference_mode(), autocast(device), values_trusted():
            logits = decode(new_ids, start_pos=fed, **kwargs) if use_cache else decode(ids)
            last = logits[:, -1].float()
            if check_each_step:
                _check_finite(torch.isfinite(last).all(), step)
            else:
                finite = torch.isfinite(last).all() if finite is None else finite & torch.isfinite(last).all()
            token = sampling.pick(last, generator)
        token = token.clone()  # outside inference mode: an ordinary tensor, usable with autograd
        fed += new_ids.shape[1]
        # A fresh (batch, 1) tensor: the same strides at every step, as compiled code expects.
        new_ids = token[:, None]
        if not use_cache:  # recomputing reads the whole sequence; a cached step, the new token only
            ids = torch.cat([ids, new_ids], dim=1)
        yield token
    if finite is not None:
        _check_finite(finite, max_new_tokens - 1, "by ")


def _check_finite(finite: Tensor, step: int, by: str = "") -> None:
    if not finite:
        raise FloatingPointError(
            f"the model's logits {by}generation step {step} are not finite (NaN or inf), so no token can be "
            "chosen: its weights or activations have overflowed; check torch.isfinite on model.parameters()"
        )


def generate(
    model: nn.Module,
    prompt_ids: Tensor,
    max_new_tokens: int,
    *,
    src_ids: Tensor | None = None,
    use_cache: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Tensor:
    """Continue prompt_ids (batch, seq) by max_new_tokens tokens; return (batch, seq + max_new_tokens).

    temperature=0 is greedy (argmax); temperature > 0 samples, optionally from the top_k tokens or
    the top_p nucleus. seed makes sampling repeatable (see `Sampling`). use_cache=False recomputes the
    whole sequence at every step (same tokens, slower). An EncoderDecoder also needs src_ids.
    """
    new = list(
        stream(
            model,
            prompt_ids,
            max_new_tokens,
            src_ids=src_ids,
            use_cache=use_cache,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
    )
    prompt = prompt_ids.to(next(unwrap(model).parameters()).device)
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1) if new else prompt.clone()


def step_seconds(
    model: DecoderLM, position: int, *, use_cache: bool, repeats: int = 5, seed: int = 0
) -> float:
    """Wall-clock seconds (best of `repeats`) of the greedy step that predicts the token after
    `position` earlier ones: one new token against a filled cache, or the whole prefix recomputed."""
    if not isinstance(model, DecoderLM):
        raise TypeError(f"step_seconds times a DecoderLM, got {type(model).__name__}")
    if not 0 <= position < model.config.context_length:
        raise ValueError(f"position={position} must be in [0, context_length={model.config.context_length})")
    device = next(model.parameters()).device
    ids = torch.randint(
        0, model.config.vocab_size, (1, position + 1), generator=torch.Generator().manual_seed(seed)
    )
    ids = ids.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    with torch.inference_mode(), autocast(device):
        if use_cache:
            dtype = compute_dtype(device, next(model.parameters()).dtype)  # as generate makes the caches
            caches = new_caches(model.config, 1, position + 1, device=device, dtype=dtype)
            if position:
                model(ids[:, :position], caches=caches)  # fill the cache once; not timed
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            if use_cache:
                model(ids[:, position:], caches=caches, start_pos=position)[:, -1].argmax(-1)
            else:
                model(ids)[:, -1].argmax(-1)
            sync()
            best = min(best, time.perf_counter() - start)
            if use_cache:
                for cache in caches:
                    cache.truncate(position)  # forget the timed token: the next repeat writes the same slot
    return best
