"""The fast paths equal the readable ones, and the GPU's code paths run on the CPU as stand-ins.

- LayerNorm runs PyTorch's fused kernel; `layer_norm` is the formula chapter 4 teaches: they agree.
- The attention path (fused kernel or einops) is a config choice, passed down to every attention layer.
- bf16 autocast (what a GPU runs) through the forward pass, a training step and `generate`, and the
  bf16 key/value cache, all on the CPU: close to fp32, and greedy tokens equal.
"""

import pytest
import torch
from torch import nn

from companion import TransformerConfig, generate, new_caches
from companion.attention import MultiHeadAttention
from companion.device import autocast, compute_dtype
from companion.layers import LayerNorm, layer_norm
from companion.training import TrainConfig, next_token_loss, next_token_objective, train
from helpers import random_ids, small_model


def model_of(seed=0, **changes):
    return small_model(
        "decoder", seed, vocab_size=61, context_length=80, d_model=64, heads=4, layers=2, **changes
    )


def ids(shape, seed=0, vocab=61):
    return random_ids(shape, vocab, seed)


# ---------------------------------------------------------------- LayerNorm: kernel and formula


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_layer_norm_kernel_equals_the_formula_values_and_gradients(eps):
    torch.manual_seed(0)
    ln = LayerNorm(48, eps)
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
    x = (torch.randn(3, 7, 48) * 4 + 2).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    fast, formula = ln(x), layer_norm(x2, ln.weight, ln.bias, eps)
    torch.testing.assert_close(fast, formula, rtol=1e-5, atol=1e-5)
    fast.square().sum().backward()
    grad_w = ln.weight.grad.clone()
    ln.weight.grad = None
    formula.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_w, ln.weight.grad, rtol=1e-4, atol=1e-4)


def test_layer_norm_equals_torch_and_keeps_its_checks():
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(LayerNorm(16)(x), nn.LayerNorm(16)(x))
    with pytest.raises(ValueError, match="expected the last dim to be d_model=16"):
        LayerNorm(16)(torch.randn(2, 5, 8))


# ---------------------------------------------------------------- the attention path, from the config


def test_attention_path_is_a_config_choice_passed_to_every_layer():
    fused, readable = model_of(), model_of(attention_path="einops")
    readable.load_state_dict(fused.state_dict())
    paths = {m.fused for m in readable.modules() if isinstance(m, MultiHeadAttention)}
    assert paths == {False} and {m.fused for m in fused.modules() if isinstance(m, MultiHeadAttention)} == {
        True
    }
    x = ids((2, 30))
    torch.testing.assert_close(fused(x), readable(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(generate(fused, x[:, :3], 20), generate(readable, x[:, :3], 20))


def test_split_heads_is_the_einops_rearrange_and_merging_undoes_it():
    from einops import rearrange

    mha, x = MultiHeadAttention(24, 3), torch.randn(2, 5, 24)
    split = mha.split_heads(x)
    assert torch.equal(split, rearrange(x, "batch seq (heads d_head) -> batch heads seq d_head", heads=3))
    assert torch.equal(split.transpose(1, 2).flatten(2), x)


def test_attention_path_is_checked():
    with pytest.raises(ValueError, match=r"attention_path='flash': expected one of \('fused', 'einops'\)"):
        TransformerConfig(attention_path="flash")
    with pytest.raises(TypeError, match="fused=1 must be True"):
        MultiHeadAttention(16, 4, fused=1)


def test_last_only_gives_the_last_position_of_the_full_logits():
    model, x = model_of(), ids((3, 12))
    full = model(x)
    torch.testing.assert_close(model(x, last_only=True), full[:, -1:])


# ---------------------------------------------------------------- bf16 on the CPU: the GPU's code paths


def test_bf16_autocast_forward_on_cpu_is_close_to_fp32():
    model, x = model_of(), ids((2, 40))
    with torch.no_grad():
        reference = model(x)
        with autocast("cpu", torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    error = (low.float() - reference).abs().max().item()
    assert error < 0.05 * reference.abs().max().item(), error
    assert (low.float().argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def test_bf16_autocast_training_on_cpu_keeps_fp32_weights_and_learns():
    model = model_of().train()
    data = ids((4, 33), 1)
    with autocast("cpu", torch.bfloat16):
        first = next_token_loss(model(data), data)
    first.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    model.zero_grad()
    history = _train_bf16(model, data)
    assert history.losses[-1] < history.losses[0] - 0.5


def _train_bf16(model, data):
    """companion.training.train with its autocast switched to bf16 on the CPU, as on a GPU."""
    import companion.training as training

    original = training.autocast
    training.autocast = lambda device: autocast(device, torch.bfloat16)
    try:
        return train(
            model, lambda step: (data,), next_token_objective, TrainConfig(steps=30, lr=3e-3, progress=False)
        )
    finally:
        training.autocast = original


def test_bf16_generate_on_cpu_uses_a_bf16_cache_and_gives_fp32_tokens():
    model, prompt = model_of(), ids((2, 1), 2)
    made = []
    import companion.decoding as decoding

    original = decoding.new_caches

    def spy(*args, **kwargs):
        made.append(kwargs["dtype"])
        return original(*args, **kwargs)

    decoding.new_caches = spy
    try:
        with autocast("cpu", torch.bfloat16):
            assert compute_dtype("cpu") == torch.bfloat16
            low = generate(model, prompt, 24)
    finally:
        decoding.new_caches = original
    assert made == [torch.bfloat16]
    assert torch.equal(low, generate(model, prompt, 24))


def test_bf16_cache_with_fp32_compute_is_close_to_the_fp32_cache():
    model, x = model_of(), ids((2, 20), 3)
    logits = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            caches = new_caches(model.config, 2, 20, dtype=dtype)
            model(x[:, :12], caches=caches)
            logits[dtype] = torch.cat(
                [model(x[:, i : i + 1], caches=caches, start_pos=i) for i in range(12, 20)], 1
            )
            assert caches[0].keys.dtype == dtype
        full = model(x)[:, 12:]
    torch.testing.assert_close(logits[torch.float32], full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[torch.bfloat16], full, rtol=0.0, atol=0.05)


def test_autocast_refuses_an_unknown_dtype_and_turns_off_for_fp32():
    with pytest.raises(ValueError, match="autocast dtype=torch.int8"):
        autocast("cpu", torch.int8)
    with autocast("cpu", torch.float32):
        assert compute_dtype("cpu") == torch.float32
    with autocast("cpu"):  # the CPU's default: fp32
        assert not torch.is_autocast_enabled("cpu")


def agree_but_for_near_ties(
    low: torch.Tensor, reference: torch.Tensor, model, start: int, gap: float = 0.05
) -> bool:
    """Greedy tokens equal the fp32 reference, or first differ where fp32's two best logits are within
    `gap`: a near-tie that bf16's rounding cannot resolve, not a wrong code path."""
    differ = (low[:, start:] != reference[:, start:]).nonzero()
    if len(differ) == 0:
        return True
    row, step = (int(i) for i in differ[0])
    with torch.no_grad():
        logits = model.cpu().float()(reference[row : row + 1, : start + step])[0, -1]
    top2 = logits.topk(2).values
    return (top2[0] - top2[1]).item() < gap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_generate_matches_fp32_tokens_and_uses_a_bf16_cache():
    """On a GPU, generate runs under bf16 autocast with a bf16 cache; its greedy tokens equal fp32's on the
    CPU (but for near-ties), compiled or not."""
    model, prompt = model_of(), ids((2, 1), 2)
    reference = generate(model, prompt, 24)
    with autocast("cuda"):
        assert compute_dtype("cuda") == torch.bfloat16
    low = generate(model.cuda(), prompt.cuda(), 24).cpu()
    assert agree_but_for_near_ties(low, reference, model, 1)
    model.cuda()
    compiled = torch.compile(model, fullgraph=True)
    low = generate(compiled, prompt.cuda(), 24).cpu()
    assert agree_but_for_near_ties(low, reference, model, 1)
