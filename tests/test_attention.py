"""Attention: the fused path equals the einops path, masks do what they say."""

import pytest
import torch

from companion import (
    MultiHeadAttention,
    TransformerConfig,
    build_model,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    sliding_window_mask,
)
from companion.attention import record_attention

TOL = dict(atol=1e-5, rtol=1e-5)


def qkv(b=2, h=3, q=5, k=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, q, d, generator=g),
        torch.randn(b, h, k, d, generator=g),
        torch.randn(b, h, k, d, generator=g),
    )


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "window", "causal+padding"])
def test_fused_matches_einops(kind):
    q, k, v = qkv(q=6, k=6)
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [1, 2, 3, 4, 5, 0]])
    mask = {
        "none": None,
        "causal": None,
        "padding": padding_mask(ids, 0),
        "window": sliding_window_mask(6, 2),
        "causal+padding": padding_mask(ids, 0),
    }[kind]
    causal = kind.startswith("causal")
    slow = scaled_dot_product_attention(q, k, v, mask, causal=causal, fused=False)
    fast = scaled_dot_product_attention(q, k, v, mask, causal=causal, fused=True)
    torch.testing.assert_close(fast, slow, **TOL)


def test_fully_masked_rows_give_zeros_on_both_paths():
    q, k, v = qkv(q=4, k=4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    for fused in (False, True):
        out = scaled_dot_product_attention(q, k, v, mask, fused=fused)
        assert torch.isfinite(out).all()
        assert out[:, :, 1].abs().max() == 0


def test_weights_are_a_distribution_over_keys():
    q, k, v = qkv()
    _, weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_causal_mask_blocks_the_future():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 8, 16)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 16)  # change only positions 5, 6, 7
    before, after = mha(x, causal=True), mha(changed, causal=True)
    torch.testing.assert_close(before[:, :5], after[:, :5], **TOL)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_self_attention_without_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    perm = torch.randperm(9)
    torch.testing.assert_close(mha(x)[:, perm], mha(x[:, perm]), **TOL)


def test_causal_mask_is_bottom_right_aligned_for_cached_queries():
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_sliding_window_sees_window_keys():
    mask = sliding_window_mask(6, 3)
    assert mask.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]
    assert not (mask & ~causal_mask(6)).any()


def test_cross_attention_uses_context_length():
    mha = MultiHeadAttention(16, 4)
    out = mha(torch.randn(2, 3, 16), torch.randn(2, 11, 16))
    assert out.shape == (2, 3, 16)


def test_multi_head_costs_the_same_as_one_full_width_head():
    many, one = MultiHeadAttention(512, 8), MultiHeadAttention(512, 1)
    assert sum(p.numel() for p in many.parameters()) == sum(p.numel() for p in one.parameters())
    assert many.d_head == 64


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: scaled_dot_product_attention(
                torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
            ),
            "expected 4 dims",
        ),
        (lambda: scaled_dot_product_attention(*qkv(), mask=torch.ones(5, 7)), "torch.bool"),
        (
            lambda: scaled_dot_product_attention(*qkv(), mask=torch.ones(4, 7, dtype=torch.bool)),
            "does not broadcast",
        ),
        (lambda: MultiHeadAttention(16, 4)(torch.randn(2, 3, 12)), "d_model=16"),
        (
            lambda: MultiHeadAttention(16, 4)(torch.randn(2, 3, 16), torch.randn(3, 4, 16)),
            "context has shape",
        ),
        (lambda: MultiHeadAttention(10, 4), "not divisible"),
        (lambda: sliding_window_mask(4, 0), "window=0"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_single_cached_query_sees_every_key_on_both_paths():
    q, k, v = qkv(q=1, k=6)
    expected = scaled_dot_product_attention(q, k, v, fused=False)
    for fused in (False, True):
        torch.testing.assert_close(
            scaled_dot_product_attention(q, k, v, causal=True, fused=fused), expected, **TOL
        )


def test_record_attention_keeps_the_weights_of_the_modules_given_and_only_inside_the_block():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()  # fused by default: outside the block no weights are formed
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    fused_out = mha(x, causal=True)
    with record_attention(mha) as kept:
        out = mha(x, causal=True)
        mha(x, context)
    torch.testing.assert_close(out, fused_out, **TOL)  # the einops path computes the same
    assert [tuple(w.shape) for w in kept] == [(2, 4, 5, 5), (2, 4, 5, 7)]  # call order, self then cross
    torch.testing.assert_close(kept[0].sum(-1), torch.ones(2, 4, 5))
    assert kept[0].triu(1).abs().max() == 0  # causal: no weight on later keys
    q, k = mha.split_heads(mha.to_q(x)), mha.split_heads(mha.to_k(x))
    _, expected = scaled_dot_product_attention(q, k, k, causal=True, return_weights=True)
    torch.testing.assert_close(kept[0], expected, **TOL)
    mha(x)
    assert len(kept) == 2 and mha.recorder is None  # nothing recorded after the block


def test_record_attention_kind_separates_self_from_cross_attention():
    torch.manual_seed(0)
    config = TransformerConfig(
        kind="encoder-decoder", vocab_size=11, context_length=16, d_model=16, heads=2, layers=2
    )
    model = build_model(config).eval()
    src, tgt = torch.randint(0, 11, (1, 6)), torch.randint(0, 11, (1, 4))
    with record_attention(model, kind="self") as self_weights, torch.no_grad():
        model(src, tgt)
    with record_attention(model, kind="cross") as cross_weights, torch.no_grad():
        model(src, tgt)
    # Two encoder layers (6 x 6) then two decoder layers (4 x 4); the decoder's cross-attention is 4 x 6.
    assert [w.shape[-2:] for w in self_weights] == [(6, 6), (6, 6), (4, 4), (4, 4)]
    assert [w.shape[-2:] for w in cross_weights] == [(4, 6), (4, 6)]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: record_attention(MultiHeadAttention(16, 4), kind="both"), ValueError, "kind='both'"),
        (
            lambda: record_attention(torch.nn.Linear(2, 2)),
            ValueError,
            "no MultiHeadAttention in \\['Linear'\\]",
        ),
        (lambda: record_attention("model"), TypeError, "takes modules"),
    ],
)
def test_record_attention_refuses_what_it_cannot_record(call, error, message):
    with pytest.raises(error, match=message), call():
        pass


def test_record_attention_restores_the_layers_even_after_an_error():
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="d_model=16"), record_attention(mha):
        mha(torch.randn(1, 2, 12))
    assert mha.recorder is None
