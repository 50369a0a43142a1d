"""Layers: own LayerNorm and RMSNorm equal torch's; residual wiring for pre- and post-norm; the gradient
tools of chapter 4; checkers catch the typical mistakes."""
import pytest
import torch

from companion.checks import CheckFailed
from companion.checks import layers as checks
from companion.layers import (
    FeedForward, LayerNorm, Residual, RMSNorm, parameter_gradient_norms, residual_stack, stream_gradients,
)


def test_own_layernorm_equals_torch():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 32) * 3 + 1
    ours, theirs = LayerNorm(32), torch.nn.LayerNorm(32)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_()
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_own_rmsnorm_equals_torch():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 32)
    torch.testing.assert_close(RMSNorm(32)(x), torch.nn.RMSNorm(32, eps=1e-6)(x), atol=1e-5, rtol=1e-5)


def test_pre_and_post_norm_are_wired_as_named():
    torch.manual_seed(0)
    ff = FeedForward(8, 32)
    x = torch.randn(2, 3, 8)
    pre, post = Residual(ff, 8, "pre"), Residual(ff, 8, "post")
    torch.testing.assert_close(pre(x), x + ff(pre.norm(x)))
    torch.testing.assert_close(post(x), post.norm(x + ff(x)))


def test_residual_without_skip_drops_only_the_skip():
    torch.manual_seed(0)
    ff = FeedForward(8, 32)
    x = torch.randn(2, 3, 8)
    pre, post = Residual(ff, 8, "pre", skip=False), Residual(ff, 8, "post", skip=False)
    torch.testing.assert_close(pre(x), ff(pre.norm(x)))
    torch.testing.assert_close(post(x), post.norm(ff(x)))
    torch.testing.assert_close(Residual(ff, 8, "none")(x), x + ff(x))


def test_residual_stack_has_attention_and_feed_forward_per_layer():
    stack = residual_stack(16, 3, heads=2, norm="pre")
    assert len(stack) == 2 * 3 + 1  # a final LayerNorm after pre-norm layers
    assert isinstance(stack[-1], LayerNorm)
    assert len(residual_stack(16, 3, heads=2, norm="post")) == 6
    assert stack(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_skip_connection_keeps_the_gradient_from_vanishing():
    torch.manual_seed(0)
    x, target = torch.randn(4, 6, 16), torch.randn(4, 6, 16)
    loss = lambda out: (out - target).pow(2).mean()  # noqa: E731
    with_skip = stream_gradients(list(residual_stack(16, 8, heads=2, norm="none")), x, loss)
    without = stream_gradients(list(residual_stack(16, 8, heads=2, norm="none", skip=False)), x, loss)
    assert len(with_skip) == 2 * 8 + 1  # before each of the 16 sub-layers, and at the output
    assert with_skip[0].norm() > 0.1 * with_skip[-1].norm()
    assert without[0].norm() < 1e-4 * without[-1].norm()


def test_stream_gradients_match_autograd():
    torch.manual_seed(0)
    blocks = list(residual_stack(8, 2, heads=2))
    x = torch.randn(2, 3, 8, requires_grad=True)
    grads = stream_gradients(blocks, x, lambda out: out.pow(3).sum())
    out = x
    for block in blocks:
        out = block(out)
    (expected,) = torch.autograd.grad(out.pow(3).sum(), x)
    torch.testing.assert_close(grads[0], expected)


def test_parameter_gradient_norms_per_module():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    b(a(torch.randn(5, 3))).sum().backward()
    expected = torch.cat([a.weight.grad.flatten(), a.bias.grad.flatten()]).norm()
    assert parameter_gradient_norms([a, b])[0] == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="no gradients"):
        parameter_gradient_norms([torch.nn.Linear(2, 2)])


def test_layernorm_is_per_token_and_the_same_in_train_and_eval():
    torch.manual_seed(0)
    norm = LayerNorm(8)
    x = torch.randn(4, 5, 8)
    alone = norm(x[:1, :1])
    torch.testing.assert_close(norm(x)[:1, :1], alone)
    torch.testing.assert_close(norm.eval()(x), norm.train()(x))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: LayerNorm(8)(torch.randn(2, 3, 6)), "d_model=8"),
        (lambda: RMSNorm(8)(torch.randn(2, 3, 6)), "d_model=8"),
        (lambda: FeedForward(8, 32)(torch.randn(2, 3, 6)), "d_model=8"),
        (lambda: LayerNorm(0), "d_model=0"),
        (lambda: FeedForward(8, 0), "d_ff=0"),
        (lambda: FeedForward(8, 32, activation="tanh"), "activation='tanh'"),
        (lambda: FeedForward(8, 32, dropout=1.5), "dropout=1.5"),
        (lambda: Residual(FeedForward(8, 32), 8, norm="middle"), "norm='middle'"),
        (lambda: residual_stack(8, 0), "layers=0"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# --- the exercise checkers accept the reference and reject typical mistakes with the matching hint ---

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


def test_checkers_accept_reference_answers(capsys):
    assert checks.check_layer_norm(_layer_norm)
    assert checks.check_layer_norm(lambda x, w, b, eps: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps))
    assert checks.check_rms_norm(_rms_norm)
    assert checks.check_batch_norm_tokens(_batch_norm)
    assert checks.check_residual(_residual)
    assert checks.check_feed_forward(lambda x, ff: ff.down(ff.act(ff.up(x))))
    assert checks.check_dropout(_dropout)
    assert capsys.readouterr().out.count("passed") == 7


def test_checker_reports_stub_as_not_yet(capsys):
    def stub(x, w, b, eps):
        raise NotImplementedError("exercise")
    assert not checks.check_layer_norm(stub)
    assert "not implemented yet" in capsys.readouterr().out


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_residual(_residual)
    checks.check_feed_forward(lambda x, ff: ff(x))
    torch.testing.assert_close(torch.rand(3), expected)


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
    ],
)
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint.replace("(", r"\(").replace(")", r"\)")):
        checker(wrong)
