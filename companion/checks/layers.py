"""Checkers for the chapter 4 exercises (residual connections and LayerNorm): each compares with the
companion and names the likely mistake."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import FeedForward, LayerNorm, RMSNorm
from ._core import Checker, random_tensor

__all__ = [
    "check_layer_norm",
    "check_rms_norm",
    "check_batch_norm_tokens",
    "check_residual",
    "check_feed_forward",
    "check_dropout",
]

B, S, D = 3, 5, 8  # batch, seq, d_model: all different, so a wrong axis shows
EPS = 0.1  # large on purpose, so putting eps in the wrong place changes the answer visibly


def _x(seed: int) -> Tensor:
    return (
        random_tensor(B, S, D, seed=seed) * 2 + 0.5
    )  # off-centre and wider than 1, so centring and scaling matter


def _normalise(x: Tensor, dims, eps: float, unbiased: bool = False) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(var + eps)


def check_layer_norm(fn) -> bool:
    """fn(x, weight, bias, eps) -> LayerNorm of x (batch, seq, d_model) over d_model, then * weight + bias."""
    with Checker("check_layer_norm") as c:
        x = _x(11)
        weight, bias = random_tensor(D, seed=12) + 1, random_tensor(D, seed=13)
        got = c.call(fn, x, weight, bias, EPS)
        reference = LayerNorm(D, EPS)
        with torch.no_grad():
            reference.weight.copy_(weight)
            reference.bias.copy_(bias)
            expected = reference(x)
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        affine = lambda t: t * weight + bias  # noqa: E731
        c.diagnose(
            got,
            expected,
            {
                "you normalised over seq (dim 1); LayerNorm normalises each token over its own features (dim -1)": affine(
                    _normalise(x, 1, EPS)
                ),
                "you normalised over the batch (dim 0): that is BatchNorm's axis; LayerNorm uses each token's features (dim -1)": affine(
                    _normalise(x, 0, EPS)
                ),
                "you normalised over seq and d_model together; each token gets its own mean and variance (dim -1 only)": affine(
                    _normalise(x, (1, 2), EPS)
                ),
                "you used the unbiased variance (divide by d_model - 1); LayerNorm divides by d_model (unbiased=False)": affine(
                    _normalise(x, -1, EPS, unbiased=True)
                ),
                "eps is added outside the square root; it belongs inside: sqrt(var + eps)": affine(
                    (x - mean) / (var.sqrt() + EPS)
                ),
                "you divided by the variance, not by its square root (the standard deviation)": affine(
                    (x - mean) / (var + EPS)
                ),
                "the mean is not subtracted: centre each token before dividing": affine(
                    x / torch.sqrt(var + EPS)
                ),
                "weight and bias are not applied: multiply by weight, then add bias": _normalise(x, -1, EPS),
                "weight and bias are swapped: it is normalised * weight + bias": _normalise(x, -1, EPS) * bias
                + weight,
                "eps is ignored: add it to the variance before the square root": affine(
                    (x - mean) / var.sqrt()
                ),
            },
        )
    return c.passed


def check_rms_norm(fn) -> bool:
    """fn(x, weight, eps) -> x / sqrt(mean(x^2 over d_model) + eps) * weight."""
    with Checker("check_rms_norm") as c:
        x = _x(21)
        weight = random_tensor(D, seed=22) + 1
        got = c.call(fn, x, weight, EPS)
        reference = RMSNorm(D, EPS)
        with torch.no_grad():
            reference.weight.copy_(weight)
            expected = reference(x)
        ms = x.pow(2).mean(-1, keepdim=True)
        c.diagnose(
            got,
            expected,
            {
                "you subtracted the mean: that is LayerNorm; RMSNorm only divides by the root mean square": _normalise(
                    x, -1, EPS
                )
                * weight,
                "you took the mean square over seq (dim 1); use each token's own features (dim -1)": x
                / torch.sqrt(x.pow(2).mean(1, keepdim=True) + EPS)
                * weight,
                "you divided by the mean square, not its square root": x / (ms + EPS) * weight,
                "eps is added outside the square root; it belongs inside: sqrt(mean(x^2) + eps)": x
                / (ms.sqrt() + EPS)
                * weight,
                "weight is not applied: multiply the normalised x by weight": x / torch.sqrt(ms + EPS),
                "you multiplied by the root mean square instead of dividing by it": x
                * torch.sqrt(ms + EPS)
                * weight,
                "you summed the squares; RMSNorm takes their mean over d_model, mean(x^2)": x
                / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + EPS)
                * weight,
                "eps is ignored: add it to the mean square before the square root, sqrt(mean(x^2) + eps)": x
                / ms.sqrt()
                * weight,
                "you divided by the standard deviation (centred): RMSNorm divides by sqrt(mean(x^2) + eps) of x itself": x
                / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + EPS)
                * weight,
            },
        )
    return c.passed


def check_batch_norm_tokens(fn) -> bool:
    """fn(x, eps) -> each feature normalised with the mean and variance over batch and seq (BatchNorm's
    training-mode statistics for tokens), no weight or bias."""
    with Checker("check_batch_norm_tokens") as c:
        x = _x(31)
        got = c.call(fn, x, EPS)
        with torch.no_grad():
            bn = nn.BatchNorm1d(D, eps=EPS, affine=False).train()
            expected = bn(x.transpose(1, 2)).transpose(1, 2)
        c.diagnose(
            got,
            expected,
            {
                "you normalised each token over its features: that is LayerNorm. BatchNorm normalises each feature "
                "over the batch (and, for tokens, over seq too)": _normalise(x, -1, EPS),
                "you normalised over the batch only, so each position has its own statistics; BatchNorm for tokens "
                "pools batch and seq (dims 0 and 1)": _normalise(x, 0, EPS),
                "you normalised over seq only, one sequence at a time (that is InstanceNorm); pool batch and seq": _normalise(
                    x, 1, EPS
                ),
                "you used the unbiased variance; in training mode BatchNorm normalises with the biased one": _normalise(
                    x, (0, 1), EPS, unbiased=True
                ),
                "eps is ignored: add it to the variance before the square root": _normalise(x, (0, 1), 0.0),
                "eps is added outside the square root; it belongs inside: sqrt(var + eps)": (
                    x - x.mean((0, 1), keepdim=True)
                )
                / (x.var((0, 1), keepdim=True, unbiased=False).sqrt() + EPS),
                "the mean is not subtracted: centre each feature before dividing": x
                / torch.sqrt(x.var((0, 1), keepdim=True, unbiased=False) + EPS),
            },
        )
    return c.passed


class _Shift(nn.Module):
    """A sub-layer whose output is easy to tell apart from its input."""

    def __init__(self, d_model: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
            torch.manual_seed(seed)
            self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.proj(x)) * 3


def check_residual(fn) -> bool:
    """fn(x, sublayer, norm, placement) -> x + sublayer(norm(x)) for "pre", norm(x + sublayer(x)) for "post"."""
    with Checker("check_residual") as c:
        x = _x(41)
        sublayer = _Shift(D, 42)
        norm = LayerNorm(D)
        with torch.no_grad():
            norm.weight.copy_(random_tensor(D, seed=43) + 1)
            norm.bias.copy_(random_tensor(D, seed=44))
            f, ln = sublayer, norm
            pre, post = x + f(ln(x)), ln(x + f(x))
            variants = {
                "pre": (
                    pre,
                    {
                        "this is post-norm, LN(x + F(x)); pre-norm normalises the sub-layer's input: x + F(LN(x))": post,
                        "the skip connection is missing: pre-norm returns x + F(LN(x)), not F(LN(x))": f(
                            ln(x)
                        ),
                        "the skip carries LN(x); it must carry x itself, unnormalised: x + F(LN(x))": ln(x)
                        + f(ln(x)),
                        "the norm is not applied: x + F(LN(x))": x + f(x),
                        "you normalised the sum as well, LN(x + F(LN(x))); pre-norm leaves the sum alone (the stack's "
                        "final norm comes once, after the last block)": ln(x + f(ln(x))),
                    },
                ),
                "post": (
                    post,
                    {
                        "this is pre-norm, x + F(LN(x)); post-norm normalises after the sum: LN(x + F(x))": pre,
                        "the skip connection is missing: post-norm returns LN(x + F(x)), not LN(F(x))": ln(
                            f(x)
                        ),
                        "the norm sits on the sub-layer's output only; post-norm normalises the sum: LN(x + F(x))": x
                        + ln(f(x)),
                        "the norm is not applied: LN(x + F(x))": x + f(x),
                        "the sub-layer reads LN(x): post-norm feeds x itself to the sub-layer and normalises the sum, "
                        "LN(x + F(x))": ln(x + f(ln(x))),
                        "you normalised x before adding, LN(x) + F(x); post-norm normalises the sum, LN(x + F(x))": ln(
                            x
                        )
                        + f(x),
                    },
                ),
            }
        for placement, (expected, mistakes) in variants.items():
            got = c.call(fn, x, sublayer, norm, placement)
            c.diagnose(got, expected, mistakes, what=f"your {placement}-norm output")
    return c.passed


def check_feed_forward(fn) -> bool:
    """fn(x, ff) -> ff.down(ff.act(ff.up(x))) using the FeedForward's layers (dropout is off in eval mode)."""
    with Checker("check_feed_forward") as c:
        with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
            torch.manual_seed(51)
            ff = FeedForward(D, 4 * D, activation="gelu").eval()
        x = _x(52)
        with c.forbid(
            {
                ff: "you ran the block itself, ff(x); the exercise is to write it from ff.up, ff.act "
                "and ff.down"
            }
        ):
            got = c.call(fn, x, ff)
        with torch.no_grad():
            expected = ff(x)
            mistakes = {
                "the activation is missing: without it the block is one linear map, d_model -> d_model": ff.down(
                    ff.up(x)
                ),
                "the activation comes after the down projection; it belongs between up and down": ff.act(
                    ff.down(ff.up(x))
                ),
                "there is an extra activation after the down projection: the output must be able to go negative": ff.act(
                    ff.down(ff.act(ff.up(x)))
                ),
                "you used ReLU; use the block's own activation, ff.act (GELU here)": ff.down(
                    torch.relu(ff.up(x))
                ),
                "the activation comes before the up projection; it belongs between up and down": ff.down(
                    ff.up(ff.act(x))
                ),
                "there is a skip connection inside: the block returns down(act(up(x))); the residual is added "
                "around it, outside": x + ff.down(ff.act(ff.up(x))),
            }
        c.expect_shape(got, (B, S, D), hint="the block maps d_model -> d_ff -> d_model at every position")
        c.diagnose(got, expected, mistakes)
    return c.passed


def check_dropout(fn) -> bool:
    """fn(x, p, noise, training) -> inverted dropout: zero where noise < p, scale the rest by 1 / (1 - p);
    x unchanged when not training. `noise` is uniform in [0, 1), the same shape as x."""
    with Checker("check_dropout") as c:
        x = _x(61)
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(62))
        p = 0.25
        keep = noise >= p
        got = c.call(fn, x, p, noise, True)
        c.diagnose(
            got,
            x * keep / (1 - p),
            {
                "the kept values are not rescaled: divide them by 1 - p so the expected output equals x": x
                * keep,
                "you multiplied the kept values by 1 - p; divide by it instead": x * keep * (1 - p),
                "you dropped with probability 1 - p: p is the probability of dropping, so zero where noise < p": x
                * ~keep
                / p,
                "you dropped with probability 1 - p and scaled by 1 / (1 - p)": x * ~keep / (1 - p),
                "nothing is dropped: zero the entries where noise < p": x / (1 - p),
                "where noise < p you left x as it is; dropped entries must be 0": torch.where(
                    keep, x / (1 - p), x
                ),
                "you kept the entries where noise < 1 - p: the same rate, but the exercise keeps noise >= p": x
                * (noise < 1 - p)
                / (1 - p),
            },
            what="your training-mode output",
        )
        got = c.call(fn, x, p, noise, False)
        c.diagnose(
            got,
            x,
            {
                "dropout is still applied in eval mode: when not training, return x unchanged": x
                * keep
                / (1 - p),
                "in eval mode you scaled x by 1 - p; with inverted dropout eval mode returns x unchanged": x
                * (1 - p),
                "in eval mode you still zeroed entries: when not training, return x unchanged": x * keep,
            },
            what="your eval-mode output",
        )
    return c.passed
