"""Checkers for the chapter 3 exercises (embeddings and positional encodings): each names the likely mistake."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch.overrides import TorchFunctionMode

from ..attention import MultiHeadAttention
from ..positions import RotaryEmbedding, equivariance_gap, offset_rotation, sinusoidal_table
from ._core import Checker, random_tensor

__all__ = [
    "check_one_hot_embedding",
    "check_equivariance_gap",
    "check_sinusoidal_table",
    "check_offset_rotation",
    "check_rotary",
]

B, S, V, D = 2, 5, 11, 6  # batch, seq, vocab, d_model: all different, so a swapped axis shows
H, D_HEAD = 3, 8  # heads, d_head for the rotary checker
OTHER_BASES = (10.0, 1000.0, 100000.0, 500000.0, 1000000.0)  # typed for 10000 (100 is the i/d mistake)


class _WatchLookups(TorchFunctionMode):
    """Notes when `weight` is indexed by token ids (weight[ids], F.embedding, index_select, ...)."""

    LOOKUPS = ("__getitem__", "index_select", "embedding", "take", "gather", "take_along_dim")

    def __init__(self, weight):
        super().__init__()
        self.weight, self.used = weight, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.LOOKUPS and any(a is self.weight for a in (*args, *kwargs.values())):
            self.used = self.used or name
        return func(*args, **kwargs)


def _angles(n: int, d: int, base: float = 10000.0, scale: float = 1.0, start: int = 0, sign: float = -1.0):
    """(n, d/2) angles pos * base^(sign * scale * 2i/d): the reference has scale 1, sign -1, start 0."""
    pos = torch.arange(start, start + n, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)[None, :]
    return pos * base ** (sign * scale * 2 * i / d)


def _interleave(first, second):
    return rearrange(torch.stack([first, second], -1), "seq half two -> seq (half two)").float()


def check_one_hot_embedding(fn) -> bool:
    """fn(ids, weight) -> (batch, seq, d_model): one_hot(ids) @ weight, equal to looking rows up."""
    with Checker("check_one_hot_embedding") as c:
        ids = torch.tensor([[1, 4, 2, 8, 0], [3, 3, 7, 5, 6]])  # the largest id, 8, is below vocab - 1 = 10
        weight = random_tensor(V, D, seed=20)
        try:
            with _WatchLookups(weight) as watch:
                got = c.call(fn, ids, weight)
        except RuntimeError as error:
            message = str(error)
            if "dtype" in message or "scalar type" in message:
                c.fail(
                    "F.one_hot returns integers (torch.long); convert it with .float() before multiplying by weight"
                )
            if "smaller than num_classes" in message:
                c.fail(
                    f"num_classes is too small for the ids (did you use d_model, weight.shape[1]?); the one-hot "
                    f"needs one column per token of the vocabulary: num_classes=weight.shape[0] ({V})"
                )
            if f"x{int(ids.max()) + 1} and" in message:
                c.fail(
                    f"your one-hot has {int(ids.max()) + 1} columns: F.one_hot without num_classes sizes it by the "
                    f"largest id present; pass num_classes=weight.shape[0] (the vocabulary, {V})"
                )
            c.fail(
                f"your code raised RuntimeError: {message.rstrip('.')}. one_hot(ids) is (batch, seq, vocab) and weight is "
                "(vocab, d_model), so their product is (batch, seq, d_model)"
            )
        c.expect_tensor(got)
        if tuple(got.shape) == (B, S, V):
            c.fail("your result is (batch, seq, vocab): that is the one-hot itself; multiply it by weight")
        c.diagnose(
            got,
            weight[ids],
            {
                "your rows are shifted by one id: each token's row is weight[id], so one_hot(ids) needs no offset": weight[
                    (ids + 1) % V
                ],
            },
        )
        if watch.used:
            c.fail(
                f"you looked the rows up ({watch.used} on weight); the exercise is to get the same rows by a "
                "matrix product, one_hot(ids) @ weight, to see that an embedding is a linear layer"
            )
    return c.passed


def check_equivariance_gap(fn) -> bool:
    """fn(layer, x, perm) -> float: max |layer(x[:, perm]) - layer(x)[:, perm]|."""
    with Checker("check_equivariance_gap") as c:
        torch.manual_seed(21)
        attention = MultiHeadAttention(D_HEAD * 2, 2).eval()
        x = random_tensor(B, S, D_HEAD * 2, seed=22)
        perm = torch.tensor([2, 0, 4, 1, 3])  # not its own inverse, so perm and its inverse differ
        inverse = perm.argsort()
        layers = {
            "self-attention without positions": attention,
            "causal self-attention": lambda t: attention(t, causal=True),
            "causal self-attention, negated": lambda t: -attention(t, causal=True),
        }
        for name, layer in layers.items():
            try:
                got = c.call(fn, layer, x, perm)
            except IndexError:
                c.fail(
                    "an index is out of range: perm reorders positions, so index the seq axis (x[:, perm]), not the batch"
                )
            if isinstance(got, torch.Tensor):
                if got.numel() != 1:
                    c.fail(
                        f"return one number, the largest absolute difference; got a tensor of shape {tuple(got.shape)}"
                    )
                got = got.item()
            if not isinstance(got, (int, float)):
                c.fail(f"return a float, got {type(got).__name__}")
            expected = equivariance_gap(layer, x, perm)
            with torch.no_grad():
                unpermuted = (layer(x[:, perm]) - layer(x)).abs().max().item()
                with_inverse = (layer(x[:, perm]) - layer(x)[:, inverse]).abs().max().item()
                mean_gap = (layer(x[:, perm]) - layer(x)[:, perm]).abs().mean().item()
                signed = (layer(x[:, perm]) - layer(x)[:, perm]).max().item()
                squared = (layer(x[:, perm]) - layer(x)[:, perm]).pow(2).max().item()
            if math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-5):
                continue
            if math.isclose(got, unpermuted, rel_tol=1e-3):
                c.fail(
                    f"for {name} you compared layer(x[:, perm]) with the unpermuted layer(x): the output "
                    "must be reordered the same way, layer(x)[:, perm]"
                )
            if math.isclose(got, with_inverse, rel_tol=1e-3):
                c.fail(
                    f"for {name} you reordered the output with the inverse permutation; use the same perm on both sides"
                )
            if math.isclose(got, mean_gap, rel_tol=1e-3):
                c.fail("you returned the mean absolute difference; return the largest one (.max())")
            if math.isclose(got, signed, rel_tol=1e-3):
                c.fail(
                    f"for {name} you returned the largest signed difference; a large negative difference is a gap "
                    "too, so take .abs() before .max()"
                )
            if math.isclose(got, squared, rel_tol=1e-3):
                c.fail(
                    "you returned the largest squared difference; the gap is the largest absolute difference"
                )
            c.fail(f"for {name} your gap is {got:.4g}, expected {expected:.4g}")
    return c.passed


def _sin_cos(angle):
    return _interleave(angle.sin(), angle.cos())


def check_sinusoidal_table(fn) -> bool:
    """fn(positions, d_model) -> (positions, d_model): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    with Checker("check_sinusoidal_table") as c:
        n, d = 11, 12
        got = c.call(fn, n, d)
        c.expect_shape(got, (n, d), hint="one row per position, one column per feature")
        a = _angles(n, d)
        expected = sinusoidal_table(n, d)
        mistakes = {
            "sin and cos are swapped: even features (2i) hold the sine, odd features (2i+1) the cosine": _interleave(
                a.cos(), a.sin()
            ),
            "you put all sines first, then all cosines; the paper interleaves them: sin at 2i, cos at 2i+1": torch.cat(
                [a.sin(), a.cos()], -1
            ).float(),
            "frequencies fall too fast: the exponent is 2i/d_model with i the pair index; if you used "
            "arange(0, d_model, 2), it already is 2i, so do not double it": _sin_cos(
                _angles(n, d, scale=2.0)
            ),
            "frequencies fall too slowly: the exponent is 2i/d_model (i the pair index), not i/d_model": _sin_cos(
                _angles(n, d, scale=0.5)
            ),
            "your angles are pos * 10000^(2i/d_model): divide by it (negative exponent), so frequencies fall": _sin_cos(
                _angles(n, d, sign=1.0)
            ),
            "positions start at 1; the first row is position 0 (sin 0 = 0, cos 0 = 1)": _sin_cos(
                _angles(n, d, start=1)
            ),
        }
        for base in OTHER_BASES:
            mistakes[
                f"the frequency base is {base:g}, not 10000: pair i's angle is pos / 10000^(2i/d_model)"
            ] = _sin_cos(_angles(n, d, base=base))
        # Mistakes are told apart on the first two pairs, whose small angles survive float32 rounding
        # (a wrong sign makes later angles huge, and float32 and float64 sines of them disagree).
        if not torch.allclose(got.detach().float(), expected, atol=1e-5, rtol=1e-4):
            c.diagnose(
                got[:, :4],
                expected[:, :4],
                {hint: wrong[:, :4] for hint, wrong in mistakes.items()},
                what="your first two (sin, cos) pairs",
            )
        c.diagnose(got, expected, what="your table")
    return c.passed


def _rotation(angle):
    cos, sin = angle.cos(), angle.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (half, 2, 2)


def check_offset_rotation(fn) -> bool:
    """fn(offset, d_model) -> (d_model, d_model) M with PE[pos + offset] = PE[pos] @ M."""
    with Checker("check_offset_rotation") as c:
        k, d = 3, 12
        got = c.call(fn, k, d)
        c.expect_shape(got, (d, d), hint="M maps a d_model row to a d_model row")
        expected = offset_rotation(k, d)
        half_layout = torch.zeros(d, d)
        blocks = _rotation(_angles(1, d, start=k)[0])
        for i in range(d // 2):  # the same rotations on features (i, i + d/2) instead of (2i, 2i+1)
            idx = torch.tensor([i, i + d // 2])
            half_layout[idx[:, None], idx[None, :]] = blocks[i].float()
        c.diagnose(
            got,
            expected,
            {
                "your matrix moves positions backwards: PE[pos] @ M gives PE[pos - offset]. With row vectors, "
                "each block is [[cos, -sin], [sin, cos]]; you built its transpose": expected.T,
                "your blocks pair features i and i + d_model/2; the table pairs sin(2i) with cos(2i+1), adjacent features": half_layout,
                "each pair must turn by offset * 10000^(-2i/d_model); your angles use the wrong frequency (check the exponent)": torch.block_diag(
                    *_rotation(_angles(1, d, start=k, scale=2.0)[0])
                ).float(),
                "the blocks turn by 1 * frequency: multiply the angle by the offset": offset_rotation(1, d),
                "the blocks turn by offset + 1 steps: the angle is offset * frequency": offset_rotation(
                    k + 1, d
                ),
                **{
                    f"the frequency base is {base:g}, not 10000: pair i turns by offset * 10000^(-2i/d_model)": torch.block_diag(
                        *_rotation(_angles(1, d, base=base, start=k)[0])
                    ).float()
                    for base in OTHER_BASES
                },
            },
            what="your matrix",
        )
        table = sinusoidal_table(20, d)
        moved = table[:-k] @ got.float()
        if not torch.allclose(moved, table[k:], atol=1e-5):
            c.fail("PE[pos] @ M does not equal PE[pos + offset]")
    return c.passed


def check_rotary(fn) -> bool:
    """fn(x, positions) -> x with pair (x[2i], x[2i+1]) at position m turned by m * 10000^(-2i/d_head)."""
    with Checker("check_rotary") as c:
        x = random_tensor(B, H, S, D_HEAD, seed=23)
        positions = torch.tensor([3, 4, 5, 6, 9])  # not 0..seq-1, so ignoring them shows
        got = c.call(fn, x, positions)
        c.expect_shape(got, (B, H, S, D_HEAD), hint="RoPE turns x; it keeps its shape")
        rope = RotaryEmbedding(D_HEAD, 16)

        def turned(angle):
            return rearrange(
                torch.stack(
                    [
                        x[..., 0::2] * angle.cos() - x[..., 1::2] * angle.sin(),
                        x[..., 0::2] * angle.sin() + x[..., 1::2] * angle.cos(),
                    ],
                    -1,
                ),
                "... half two -> ... (half two)",
            ).float()

        a = _angles(16, D_HEAD)[positions]
        half = D_HEAD // 2
        x1, x2 = x[..., :half], x[..., half:]
        neox = torch.cat([x1 * a.cos() - x2 * a.sin(), x1 * a.sin() + x2 * a.cos()], -1).float()
        c.diagnose(
            got,
            rope(x, positions),
            {
                "you rotated the pairs (x[i], x[i + d_head/2]), the GPT-NeoX layout; this course rotates adjacent "
                "pairs (x[2i], x[2i+1]), as Su et al. 2021 write it": neox,
                "you turned by the negative angle: (x0, x1) -> (x0 cos + x1 sin, -x0 sin + x1 cos) rotates the wrong way": turned(
                    -a
                ),
                "positions are ignored: you used 0..seq-1; turn each position by its own entry of positions": rope(
                    x
                ),
                "frequencies fall too fast: the exponent is 2i/d_head with i the pair index (do not double arange(0, d, 2))": turned(
                    _angles(16, D_HEAD, scale=2.0)[positions]
                ),
                "frequencies fall too slowly: the exponent is 2i/d_head, not i/d_head": turned(
                    _angles(16, D_HEAD, scale=0.5)[positions]
                ),
                "you put the turned coordinates back as two halves (all first coordinates, then all second); "
                "interleave them, so pair i stays at features 2i and 2i+1": torch.cat(
                    [
                        x[..., 0::2] * a.cos() - x[..., 1::2] * a.sin(),
                        x[..., 0::2] * a.sin() + x[..., 1::2] * a.cos(),
                    ],
                    -1,
                ).float(),
                **{
                    f"the frequency base is {base:g}, not 10000: pair i turns by m * 10000^(-2i/d_head)": turned(
                        _angles(16, D_HEAD, base=base)[positions]
                    )
                    for base in OTHER_BASES
                },
            },
            what="your rotated x",
        )
    return c.passed
