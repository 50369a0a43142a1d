"""Chapter 4 checkers (layers): typical wrong answers, each rejected with the hint that names it."""

import pytest
import torch

from companion.checks import CheckFailed
from companion.checks import layers as checks


def _layer_norm(x, w, b, eps, dim=-1, unbiased=False):
    mean, var = x.mean(dim, keepdim=True), x.var(dim, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _batch_norm(x, eps, dims=(0, 1), unbiased=False):
    mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, unbiased=unbiased)
    return (x - mean) / torch.sqrt(var + eps)


def _residual(x, f, norm, placement):
    return x + f(norm(x)) if placement == "pre" else norm(x + f(x))


def _dropout(x, p, noise, training):
    return x * (noise >= p) / (1 - p) if training else x


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_residual(_residual)
    checks.check_feed_forward(lambda x, ff: ff.down(ff.act(ff.up(x))))
    torch.testing.assert_close(torch.rand(3), expected)


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize(
    "checker, wrong, hint",
    [
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, w, b, eps, dim=1), "over seq"),
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, w, b, eps, dim=0), "BatchNorm's axis"),
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, w, b, eps, dim=(1, 2)), "seq and d_model together"),
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, w, b, eps, unbiased=True), "unbiased variance"),
        (checks.check_layer_norm, lambda x, w, b, eps: (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + eps) * w + b, "outside the square root"),
        (checks.check_layer_norm, lambda x, w, b, eps: (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False) + eps) * w + b, "divided by the variance"),
        (checks.check_layer_norm, lambda x, w, b, eps: x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w + b, "mean is not subtracted"),
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, 1, 0, eps), "weight and bias are not applied"),
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, b, w, eps), "swapped"),
        (checks.check_layer_norm, lambda x, w, b, eps: _layer_norm(x, w, b, 0.0), "eps is ignored"),
        (checks.check_rms_norm, lambda x, w, eps: _layer_norm(x, w, 0, eps), "that is LayerNorm"),
        (checks.check_rms_norm, lambda x, w, eps: x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + eps) * w, "over seq"),
        (checks.check_rms_norm, lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True) + eps) * w, "not its square root"),
        (checks.check_rms_norm, lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w, "outside the square root"),
        (checks.check_rms_norm, lambda x, w, eps: _rms_norm(x, 1, eps), "weight is not applied"),
        (checks.check_rms_norm, lambda x, w, eps: x * torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w, "instead of dividing"),
        (checks.check_batch_norm_tokens, lambda x, eps: _batch_norm(x, eps, dims=-1), "that is LayerNorm"),
        (checks.check_batch_norm_tokens, lambda x, eps: _batch_norm(x, eps, dims=0), "over the batch only"),
        (checks.check_batch_norm_tokens, lambda x, eps: _batch_norm(x, eps, dims=1), "InstanceNorm"),
        (checks.check_batch_norm_tokens, lambda x, eps: _batch_norm(x, eps, unbiased=True), "unbiased variance"),
        (checks.check_residual, lambda x, f, n, pl: _residual(x, f, n, "post" if pl == "pre" else "pre"), "this is post-norm"),
        (checks.check_residual, lambda x, f, n, pl: f(n(x)) if pl == "pre" else n(x + f(x)), "skip connection is missing: pre-norm"),
        (checks.check_residual, lambda x, f, n, pl: n(x) + f(n(x)) if pl == "pre" else n(x + f(x)), "skip carries LN"),
        (checks.check_residual, lambda x, f, n, pl: x + f(x), "norm is not applied"),
        (checks.check_residual, lambda x, f, n, pl: x + f(n(x)) if pl == "pre" else n(f(x)), "skip connection is missing: post-norm"),
        (checks.check_residual, lambda x, f, n, pl: x + f(n(x)) if pl == "pre" else x + n(f(x)), "sub-layer's output only"),
        (checks.check_residual, lambda x, f, n, pl: x + f(n(x)), "this is pre-norm"),
        (checks.check_feed_forward, lambda x, ff: ff.down(ff.up(x)), "activation is missing"),
        (checks.check_feed_forward, lambda x, ff: ff.act(ff.down(ff.up(x))), "after the down projection"),
        (checks.check_feed_forward, lambda x, ff: ff.act(ff.down(ff.act(ff.up(x)))), "extra activation"),
        (checks.check_feed_forward, lambda x, ff: ff.up(x), "shape"),
        (checks.check_dropout, lambda x, p, n, t: x * (n >= p) if t else x, "not rescaled"),
        (checks.check_dropout, lambda x, p, n, t: x * (n >= p) * (1 - p) if t else x, "multiplied the kept values"),
        (checks.check_dropout, lambda x, p, n, t: x * (n < p) / p if t else x, "dropped with probability 1 - p"),
        (checks.check_dropout, lambda x, p, n, t: x / (1 - p) if t else x, "nothing is dropped"),
        (checks.check_dropout, lambda x, p, n, t: x * (n >= p) / (1 - p), "still applied in eval mode"),
        (checks.check_dropout, lambda x, p, n, t: x * (n >= p) / (1 - p) if t else x * (1 - p), "scaled x by 1 - p"),
        # beyond the first audit
        (checks.check_feed_forward, lambda x, ff: ff(x), "you ran the block itself"),
        (checks.check_rms_norm, lambda x, w, eps: x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w, "summed the squares"),
        (checks.check_residual, lambda x, f, n, pl: x + f(n(x)) if pl == "pre" else n(x) + f(x), "normalised x before adding"),
        (checks.check_dropout, lambda x, p, n, t: torch.where(n >= p, x / (1 - p), x) if t else x, "left x as it is"),
        (checks.check_layer_norm, lambda x, w, b, eps: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps),
         "weight and bias are not applied"),
        (checks.check_rms_norm, lambda x, w, eps: x / x.pow(2).mean(-1, keepdim=True).sqrt() * w, "eps is ignored"),
        (checks.check_rms_norm, lambda x, w, eps: x / (x.norm(dim=-1, keepdim=True) / x.shape[-1] ** 0.5) * w, "eps is ignored"),
        (checks.check_rms_norm, lambda x, w, eps: x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w,
         "divided by the standard deviation"),
        (checks.check_batch_norm_tokens, lambda x, eps: _batch_norm(x, 0.0), "eps is ignored"),
        (checks.check_batch_norm_tokens, lambda x, eps: (x - x.mean((0, 1), keepdim=True)) / (x.std((0, 1), keepdim=True, unbiased=False) + eps),
         "outside the square root"),
        (checks.check_batch_norm_tokens, lambda x, eps: x / torch.sqrt(x.var((0, 1), keepdim=True, unbiased=False) + eps),
         "mean is not subtracted"),
        (checks.check_residual, lambda x, f, n, pl: n(x + f(n(x))) if pl == "pre" else n(x + f(x)), "normalised the sum as well"),
        (checks.check_residual, lambda x, f, n, pl: x + f(n(x)) if pl == "pre" else n(x + f(n(x))), "the sub-layer reads LN(x)"),
        (checks.check_feed_forward, lambda x, ff: ff.down(torch.relu(ff.up(x))), "you used ReLU"),
        (checks.check_feed_forward, lambda x, ff: ff.down(ff.up(ff.act(x))), "before the up projection"),
        (checks.check_feed_forward, lambda x, ff: x + ff.down(ff.act(ff.up(x))), "skip connection inside"),
        (checks.check_dropout, lambda x, p, n, t: x * (n < 1 - p) / (1 - p) if t else x, "noise < 1 - p"),
        (checks.check_dropout, lambda x, p, n, t: x * (n >= p) / (1 - p) if t else x * (n >= p), "in eval mode you still zeroed entries"),
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)
# fmt: on
