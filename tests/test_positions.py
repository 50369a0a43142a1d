"""Positions: the encodings match their formulas, relative position shows through dot products,
attention without positions is permutation-equivariant, and the chapter 3 checkers catch mistakes."""

import math

import pytest
import torch

from companion import MultiHeadAttention, TransformerConfig, build_model
from companion.positions import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    equivariance_gap,
    inverse_frequencies,
    offset_rotation,
    rotate_pairs,
    sinusoidal_table,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def test_sinusoidal_table_matches_the_papers_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_wavelengths_run_from_two_pi_to_almost_two_pi_times_base():
    wavelengths = 2 * math.pi / inverse_frequencies(64)
    assert math.isclose(wavelengths[0].item(), 2 * math.pi)
    assert 2 * math.pi * 10000 / 2 < wavelengths[-1].item() < 2 * math.pi * 10000
    assert (wavelengths[1:] > wavelengths[:-1]).all()


def test_sinusoidal_dot_product_depends_only_on_the_offset():
    table = sinusoidal_table(200, 32).double()
    dots = table @ table.T
    for offset in (0, 1, 5, 40):
        diagonal = torch.diagonal(dots, offset)
        assert (diagonal - diagonal[0]).abs().max() < 1e-5
        torch.testing.assert_close(diagonal, torch.diagonal(dots, -offset))  # symmetric: no before/after


@pytest.mark.parametrize("offset", [1, 3, 17, -4])
def test_offset_rotation_moves_every_position_by_the_offset(offset):
    table = sinusoidal_table(60, 24)
    moved = table @ offset_rotation(offset, 24)
    lo, hi = max(0, -offset), 60 - max(0, offset)
    torch.testing.assert_close(moved[lo:hi], table[lo + offset : hi + offset], **TOL)


def test_offset_rotation_is_orthogonal():
    m = offset_rotation(9, 16)
    torch.testing.assert_close(m @ m.T, torch.eye(16), **TOL)


def test_modules_look_up_their_tables():
    positions = torch.tensor([0, 3, 7])
    torch.testing.assert_close(SinusoidalPositions(8, 12)(positions), sinusoidal_table(8, 12)[positions])
    learned = LearnedPositions(8, 12)
    torch.testing.assert_close(learned(positions), learned.embedding.weight[positions])
    assert sum(p.numel() for p in SinusoidalPositions(8, 12).parameters()) == 0
    assert sum(p.numel() for p in learned.parameters()) == 8 * 12


def test_rope_scores_depend_only_on_the_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, 300)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum().item()

    for m, n in ((5, 2), (9, 9), (0, 7)):
        for shift in (1, 50, 250):
            assert math.isclose(score(m, n), score(m + shift, n + shift), abs_tol=1e-4)
    assert not math.isclose(
        score(5, 2), score(2, 5), abs_tol=1e-3
    )  # unlike sinusoids, RoPE tells before from after


def test_rope_keeps_lengths_and_leaves_position_zero_alone():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, 32)
    x = torch.randn(2, 3, 10, 8)
    turned = rope(x, torch.arange(5, 15))
    torch.testing.assert_close(turned.norm(dim=-1), x.norm(dim=-1), **TOL)
    torch.testing.assert_close(rope(x[:, :, :1], torch.tensor([0])), x[:, :, :1])


def test_rotate_pairs_rotates_adjacent_features():
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # pairs (1, 0) and (0, 1)
    angle = torch.tensor([[math.pi / 2, math.pi / 2]])
    torch.testing.assert_close(
        rotate_pairs(x, angle.cos(), angle.sin()), torch.tensor([[0.0, 1.0, -1.0, 0.0]]), **TOL
    )


def test_self_attention_without_positions_is_equivariant_and_causal_is_not():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    assert equivariance_gap(mha, x, perm) < 1e-5
    assert equivariance_gap(lambda t: mha(t, causal=True), x, perm) > 0.01


@pytest.mark.parametrize(
    "positional, equivariant", [("none", True), ("sinusoidal", False), ("learned", False), ("rope", False)]
)
def test_encoder_is_equivariant_exactly_when_it_has_no_positions(positional, equivariant):
    torch.manual_seed(0)
    config = TransformerConfig(
        kind="encoder", vocab_size=20, context_length=16, d_model=16, heads=2, layers=2, positional=positional
    )
    model = build_model(config).eval()
    ids = torch.randint(0, 20, (2, 10))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = (model(ids[:, perm]) - model(ids)[:, perm]).abs().max().item()
    assert (gap < 1e-4) == equivariant, gap


@pytest.mark.parametrize(
    "positional, shift_invariant", [("rope", True), ("learned", False), ("sinusoidal", False)]
)
def test_only_rope_model_ignores_where_the_sequence_starts(positional, shift_invariant):
    torch.manual_seed(0)
    model = build_model(
        TransformerConfig(
            vocab_size=20, context_length=64, d_model=16, heads=2, layers=2, positional=positional
        )
    ).eval()
    ids = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        gap = (model(ids) - model(ids, start_pos=40)).abs().max().item()
    assert (gap < 1e-4) == shift_invariant, gap


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: sinusoidal_table(10, 7), ValueError, "d_model=7: expected an even number"),
        (lambda: sinusoidal_table(0, 8), ValueError, "positions=0"),
        (lambda: inverse_frequencies(8, base=1.0), ValueError, "base=1.0"),
        (lambda: SinusoidalPositions(8, 4)(torch.tensor([3, 8])), ValueError, "positions 0..7"),
        (lambda: LearnedPositions(8, 4)(torch.tensor([9])), ValueError, "larger context_length"),
        (lambda: LearnedPositions(8, 4)(torch.tensor([1.0])), TypeError, "integer positions"),
        (lambda: RotaryEmbedding(7, 8), ValueError, "d_head=7: expected an even number"),
        (lambda: RotaryEmbedding(8, 16)(torch.randn(1, 2, 3, 6)), ValueError, "d_head=8"),
        (
            lambda: RotaryEmbedding(8, 16)(torch.randn(1, 2, 3, 8), torch.tensor([0, 1])),
            ValueError,
            r"expected one per position",
        ),
        (
            lambda: RotaryEmbedding(8, 16)(torch.randn(1, 2, 3, 8), torch.tensor([14, 15, 16])),
            ValueError,
            "positions 0..15",
        ),
        (
            lambda: equivariance_gap(lambda t: t, torch.randn(2, 4, 3), torch.tensor([0, 1, 1, 3])),
            ValueError,
            "permutation",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
