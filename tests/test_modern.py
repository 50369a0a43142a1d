"""The modern-decoder options (chapter 8): RMSNorm blocks, SwiGLU, grouped-query attention and its cache,
QK-norm, the llama-tiny preset, and the library's own softmax, cross-entropy and gradient clipping."""

import pytest
import torch
import torch.nn.functional as F

from companion import TransformerConfig, build_model, count_parameters, presets
from companion.attention import MultiHeadAttention, repeat_kv
from companion.config import swiglu_width
from companion.decoding import generate, kv_cache_bytes, new_caches
from companion.layers import LayerNorm, RMSNorm, SwiGLU
from companion.training import (
    TrainConfig,
    clip_gradients,
    cross_entropy,
    gradient_norm,
    log_softmax,
    next_token_objective,
    softmax,
    train,
)
from helpers import random_ids

SMALL = dict(vocab_size=23, context_length=16, d_model=24, heads=4, layers=2)


def _ids(shape, vocab=23, seed=0):
    return random_ids(shape, vocab, seed)


# ---------------------------------------------------------------- SwiGLU and SiLU


def test_swiglu_is_w2_of_silu_w1_times_w3_without_biases():
    torch.manual_seed(0)
    ff = SwiGLU(8, 20)
    x = torch.randn(2, 3, 8)
    expected = (F.silu(x @ ff.w1.weight.T) * (x @ ff.w3.weight.T)) @ ff.w2.weight.T
    torch.testing.assert_close(ff(x), expected)
    assert all(layer.bias is None for layer in (ff.w1, ff.w3, ff.w2))
    assert count_parameters(ff) == 3 * 8 * 20


def test_swiglu_width_follows_llamas_rule():
    assert swiglu_width(4096, multiple_of=256) == 11008  # Llama 7B's intermediate_size
    assert swiglu_width(128) == 384  # 8/3 * 128 = 341.3, up to a multiple of 64
    config = TransformerConfig(**SMALL, activation="swiglu")
    assert config.d_ff == swiglu_width(24) == 64
    assert config.replace(d_ff=50).d_ff == 50
    assert TransformerConfig(**SMALL).d_ff == 4 * 24  # the other activations keep 4 d_model


def test_silu_and_swiglu_build_decoders_that_run():
    for activation, module in (("silu", torch.nn.SiLU), ("swiglu", SwiGLU)):
        model = build_model(TransformerConfig(**SMALL, activation=activation))
        assert sum(isinstance(m, module) for m in model.modules()) == 2
        assert model(_ids((2, 5))).shape == (2, 5, 23)


# ---------------------------------------------------------------- the norm's type


@pytest.mark.parametrize("norm_type, kind", [("layer", LayerNorm), ("rms", RMSNorm)])
def test_norm_type_sets_every_block_norm_and_the_final_norm(norm_type, kind):
    model = build_model(TransformerConfig(**SMALL, norm_type=norm_type))
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))]
    assert len(norms) == 2 * 2 + 1 and all(isinstance(m, kind) for m in norms)
    assert isinstance(model.decoder.final_norm, kind)


def test_rms_norm_blocks_work_post_norm_and_in_an_encoder_decoder():
    for config in (
        TransformerConfig(**SMALL, norm_type="rms", norm="post"),
        TransformerConfig(**SMALL, kind="encoder-decoder", norm_type="rms"),
    ):
        model = build_model(config)
        assert not any(isinstance(m, LayerNorm) for m in model.modules())


# ---------------------------------------------------------------- grouped-query attention


def test_repeat_kv_gives_each_group_of_query_heads_its_own_kv_head():
    kv = torch.arange(2.0).reshape(1, 2, 1, 1).expand(1, 2, 3, 5)  # kv head h holds the value h
    repeated = repeat_kv(kv, 3)
    assert repeated.shape == (1, 6, 3, 5)
    assert repeated[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert repeat_kv(kv, 1) is kv


def test_grouped_query_attention_equals_full_attention_with_the_kv_weights_repeated():
    torch.manual_seed(0)
    d_model, heads, kv_heads = 24, 6, 2
    gqa = MultiHeadAttention(d_model, heads, kv_heads=kv_heads)
    assert gqa.to_k.weight.shape == gqa.to_v.weight.shape == (kv_heads * 4, d_model)
    full = MultiHeadAttention(d_model, heads)
    groups = heads // kv_heads
    with torch.no_grad():
        for name in ("to_q", "to_out"):
            getattr(full, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("to_k", "to_v"):
            small, big = getattr(gqa, name), getattr(full, name)
            big.weight.copy_(
                small.weight.reshape(kv_heads, 1, 4, d_model)
                .expand(kv_heads, groups, 4, d_model)
                .reshape(heads * 4, d_model)
            )
            big.bias.copy_(small.bias.reshape(kv_heads, 1, 4).expand(kv_heads, groups, 4).reshape(-1))
    x = torch.randn(2, 7, d_model)
    torch.testing.assert_close(gqa(x, causal=True), full(x, causal=True))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_the_cache_stores_only_kv_heads_and_cached_decoding_matches_recompute(kv_heads):
    torch.manual_seed(0)
    config = TransformerConfig(
        **SMALL, kv_heads=kv_heads, positional="rope", norm_type="rms", activation="swiglu"
    )
    model = build_model(config).eval()
    caches = new_caches(config, batch=2, capacity=16)
    assert caches[0].keys.shape == (2, kv_heads, 16, 6)
    assert sum(c.nbytes for c in caches) == kv_cache_bytes(config, 16, batch=2)
    assert kv_cache_bytes(config, 16) * (4 // kv_heads) == kv_cache_bytes(config.replace(kv_heads=None), 16)
    ids = _ids((2, 9))
    with torch.no_grad():
        full = model(ids)
        first = model(ids[:, :5], caches=caches)
        rest = model(ids[:, 5:], caches=caches, start_pos=5)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-4)
    assert torch.equal(
        generate(model, ids[:1, :3], 8, use_cache=True), generate(model, ids[:1, :3], 8, use_cache=False)
    )


def test_qk_norm_makes_attention_blind_to_the_scale_of_the_query_and_key_projections():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 24)
    for qk_norm, changes in ((True, False), (False, True)):
        mha = MultiHeadAttention(24, 4, kv_heads=2, qk_norm=qk_norm, bias=False)
        before = mha(x, causal=True)
        with torch.no_grad():
            mha.to_q.weight.mul_(10.0)
            mha.to_k.weight.mul_(10.0)
        assert (not torch.allclose(mha(x, causal=True), before, atol=1e-4)) == changes
    model = build_model(TransformerConfig(**SMALL, qk_norm=True))
    assert isinstance(model.decoder.blocks[0].attention.q_norm, RMSNorm)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(kv_heads=3), r"kv_heads=3: expected a whole number that divides heads=4"),
        (dict(kv_heads=0), r"kv_heads=0: expected a whole number >= 1 or None"),
        (dict(norm_type="batch"), r"norm_type='batch': expected one of \('layer', 'rms'\)"),
        (dict(norm="rms"), r"norm='rms': expected one of \('pre', 'post', 'none'\)"),
        (dict(qk_norm=1), r"qk_norm=1: expected True or False"),
        (
            dict(kind="encoder", activation="swiglu", task_head="mlm"),
            r"activation='swiglu': expected a plain activation such as 'gelu' with task_head='mlm'",
        ),
    ],
)
def test_config_refuses_bad_modern_choices_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**SMALL, **changes})


def test_attention_refuses_kv_heads_that_do_not_divide_heads():
    with pytest.raises(ValueError, match=r"kv_heads=3: expected a whole number that divides heads=4"):
        MultiHeadAttention(24, 4, kv_heads=3)


# ---------------------------------------------------------------- the llama-tiny preset


def test_llama_tiny_parameter_count_is_the_formula():
    c = presets["llama-tiny"]
    d, d_kv, d_ff = c.d_model, c.n_kv_heads * c.d_head, c.d_ff
    per_layer = (
        (d * d + 2 * d * d_kv + d * d) + 3 * d * d_ff + 2 * d
    )  # q, k, v, out; w1, w3, w2; two RMSNorms
    expected = (
        c.vocab_size * d + c.layers * per_layer + d + c.vocab_size * d
    )  # embedding, blocks, final norm, head
    assert (d_kv, d_ff) == (64, 384)
    assert count_parameters(build_model(c)) == expected == 853_120


# ---------------------------------------------------------------- softmax, cross-entropy, clipping


def test_softmax_and_log_softmax_match_torch_and_survive_huge_logits():
    x = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(0)) * 20
    torch.testing.assert_close(softmax(x), x.softmax(-1))
    torch.testing.assert_close(softmax(x, dim=1), x.softmax(1))
    torch.testing.assert_close(log_softmax(x), x.log_softmax(-1))
    huge = torch.tensor([1000.0, 1000.0, -1000.0])
    assert torch.equal(softmax(huge), torch.tensor([0.5, 0.5, 0.0]))
    naive = huge.exp() / huge.exp().sum()
    assert torch.isnan(naive).any()  # what the max subtraction prevents
    assert torch.equal(softmax(torch.full((2,), float("-inf"))), torch.zeros(2))


def test_cross_entropy_matches_torch_with_ignored_targets_and_any_leading_shape():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 5
    targets = torch.randint(0, 11, (2, 5), generator=g)
    targets[0, :2] = -100
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy(logits, targets), expected)
    torch.testing.assert_close(
        cross_entropy(logits[0, 3], targets[0, 3]), F.cross_entropy(logits[0, 3], targets[0, 3])
    )
    assert cross_entropy(torch.tensor([[1e4, 0.0]]), torch.tensor([1])).item() == 1e4  # finite, exact
    logits.requires_grad_(True)
    cross_entropy(logits, targets).backward()
    reference = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(reference.reshape(-1, 11), targets.reshape(-1)).backward()
    torch.testing.assert_close(logits.grad, reference.grad)


@pytest.mark.parametrize(
    "logits, targets, error, message",
    [
        (
            torch.zeros(2, 3),
            torch.zeros(2, 3, dtype=torch.long),
            ValueError,
            r"targets has shape \(2, 3\), logits \(2, 3\)",
        ),
        (torch.zeros(2, 3), torch.zeros(2), TypeError, "targets must be a tensor of integer ids"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, dtype=torch.long),
            TypeError,
            "logits must be a floating-point",
        ),
        (
            torch.zeros(2, 3),
            torch.tensor([0, 3]),
            ValueError,
            r"ids in \[0, 3\] but the logits cover \[0, 2\]",
        ),
    ],
)
def test_cross_entropy_refuses_bad_input_by_name(logits, targets, error, message):
    with pytest.raises(error, match=message):
        cross_entropy(logits, targets)


def _two_models_with_gradients():
    torch.manual_seed(0)
    ours, theirs = (torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6)
    for model in (ours, theirs):
        (model(x) ** 2).sum().backward()
    return ours, theirs


@pytest.mark.parametrize("max_norm", [0.1, 1e6])
def test_clip_gradients_matches_torch_and_returns_the_norm_before_clipping(max_norm):
    ours, theirs = _two_models_with_gradients()
    before = gradient_norm(ours.parameters())
    norm = clip_gradients(ours.parameters(), max_norm)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm))
    torch.testing.assert_close(norm, before)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    after = gradient_norm(ours.parameters()).item()
    assert after == pytest.approx(min(max_norm, before.item()), rel=1e-4)


def test_clip_gradients_refuses_a_max_norm_that_is_not_positive():
    with pytest.raises(ValueError, match=r"max_norm=0: expected a positive finite number"):
        clip_gradients(torch.nn.Linear(2, 2).parameters(), 0)


def test_train_uses_the_librarys_cross_entropy_and_clip_gradients(monkeypatch):
    import companion.training as training

    calls = {"cross_entropy": 0, "clip_gradients": 0}
    for name in calls:
        original = getattr(training, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(training, name, counted)
    model = build_model(TransformerConfig(**SMALL))
    train(
        model,
        lambda step: (_ids((2, 8), seed=step),),
        next_token_objective,
        TrainConfig(steps=3, warmup_steps=1, grad_clip=0.5, progress=False),
    )
    assert calls == {"cross_entropy": 3, "clip_gradients": 3}
