"""Chapter 3 checkers (positions): typical wrong answers, each rejected with the hint that names it."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from companion.checks import CheckFailed
from companion.checks import positions as checks


def one_hot_embedding(ids, weight):
    return F.one_hot(ids, weight.shape[0]).float() @ weight


def gap(layer, x, perm):
    return (layer(x[:, perm]) - layer(x)[:, perm]).abs().max().item()


def table(n, d, base=10000.0, swap=False, halves=False, exponent=2.0, start=0, sign=-1.0):
    pos = torch.arange(start, start + n, dtype=torch.float32)[:, None]
    i = torch.arange(d // 2, dtype=torch.float32)[None, :]
    angle = pos * base ** (sign * exponent * i / d)
    first, second = (angle.cos(), angle.sin()) if swap else (angle.sin(), angle.cos())
    if halves:
        return torch.cat([first, second], -1)
    return rearrange(torch.stack([first, second], -1), "seq half two -> seq (half two)")


def rotation(offset, d, transpose=False, exponent=2.0, halves=False, base=10000.0):
    angle = offset * base ** (-exponent * torch.arange(d // 2) / d)
    m = torch.zeros(d, d)
    for i, a in enumerate(angle.tolist()):
        j, k = (i, i + d // 2) if halves else (2 * i, 2 * i + 1)
        block = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m[[j, j, k, k], [j, k, j, k]] = (block.T if transpose else block).flatten()
    return m


def rotary(
    x, positions, base=10000.0, exponent=2.0, sign=1.0, neox=False, ignore_positions=False, halves_out=False
):
    d = x.shape[-1]
    positions = torch.arange(x.shape[-2]) if ignore_positions else positions
    angle = sign * positions[:, None].float() * base ** (-exponent * torch.arange(d // 2) / d)[None, :]
    if neox:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()], -1)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack([even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()], -1)
    if halves_out:
        return rearrange(out, "... half two -> ... (two half)")
    return rearrange(out, "... half two -> ... (half two)")


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize(
    "checker, wrong, hint",
    [
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids).float() @ w, "without num_classes"),
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids, w.shape[0]) @ w, r"convert it with .float\(\)"),
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids, w.shape[0]).float(), "the one-hot itself"),
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids, w.shape[0]).float() @ w.T, "raised RuntimeError"),
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids, w.shape[1]).float() @ w, "did you use d_model"),
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids + 1, w.shape[0]).float() @ w, "shifted by one id"),
        (checks.check_equivariance_gap, lambda layer, x, perm: (layer(x[:, perm]) - layer(x)).abs().max().item(), "unpermuted"),
        (checks.check_equivariance_gap, lambda layer, x, perm: (layer(x[:, perm]) - layer(x)[:, perm.argsort()]).abs().max().item(), "inverse permutation"),
        (checks.check_equivariance_gap, lambda layer, x, perm: (layer(x[perm]) - layer(x)[perm]).abs().max().item(), "not the batch"),
        (checks.check_equivariance_gap, lambda layer, x, perm: (layer(x[:, perm]) - layer(x)[:, perm]).abs().mean().item(), "mean absolute"),
        (checks.check_equivariance_gap, lambda layer, x, perm: layer(x[:, perm]) - layer(x)[:, perm], "return one number"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, swap=True), "sin and cos are swapped"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, halves=True), "all sines first"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, exponent=4.0), "fall too fast"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, exponent=1.0), "fall too slowly"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, base=1000.0), "base is 1000, not 10000"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, sign=1.0), "negative exponent"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, start=1), "positions start at 1"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d).T, "shape"),
        (checks.check_offset_rotation, lambda k, d: rotation(k, d, transpose=True), "moves positions backwards"),
        (checks.check_offset_rotation, lambda k, d: rotation(k, d, halves=True), "adjacent features"),
        (checks.check_offset_rotation, lambda k, d: rotation(k, d, exponent=4.0), "wrong frequency"),
        (checks.check_offset_rotation, lambda k, d: rotation(1, d), "multiply the angle by the offset"),
        (checks.check_rotary, lambda x, p: rotary(x, p, neox=True), "GPT-NeoX layout"),
        (checks.check_rotary, lambda x, p: rotary(x, p, sign=-1.0), "negative angle"),
        (checks.check_rotary, lambda x, p: rotary(x, p, ignore_positions=True), "positions are ignored"),
        (checks.check_rotary, lambda x, p: rotary(x, p, exponent=4.0), "fall too fast"),
        (checks.check_rotary, lambda x, p: rotary(x, p, exponent=1.0), "fall too slowly"),
        # beyond the first audit
        (checks.check_one_hot_embedding, lambda ids, w: w[ids], "you looked the rows up"),
        (checks.check_one_hot_embedding, lambda ids, w: F.embedding(ids, w), "you looked the rows up"),
        (checks.check_one_hot_embedding, lambda ids, w: w.index_select(0, ids.flatten()).view(*ids.shape, -1),
         "you looked the rows up"),
        (checks.check_one_hot_embedding, lambda ids, w: F.one_hot(ids, w.shape[0]).double() @ w.double(), "dtype"),
        (checks.check_equivariance_gap, lambda layer, x, perm: (layer(x[:, perm]) - layer(x)[:, perm]).max().item(),
         "largest signed difference"),
        (checks.check_equivariance_gap, lambda layer, x, perm: (layer(x[:, perm]) - layer(x)[:, perm]).pow(2).max().item(),
         "largest squared difference"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, base=10.0), "base is 10, not 10000"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d, base=500000.0), "base is 500000, not 10000"),
        (checks.check_sinusoidal_table, lambda n, d: table(n, d).double(), "dtype"),
        (checks.check_offset_rotation, lambda k, d: rotation(k + 1, d), "offset \\+ 1 steps"),
        (checks.check_offset_rotation, lambda k, d: rotation(k, d, base=1000.0), "base is 1000, not 10000"),
        (checks.check_rotary, lambda x, p: rotary(x, p, base=1000000.0), "base is 1e\\+06, not 10000"),
        (checks.check_rotary, lambda x, p: rotary(x, p, halves_out=True), "two halves"),
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checker(wrong)
# fmt: on
