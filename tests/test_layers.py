"""Layers: own LayerNorm and RMSNorm equal torch's; residual wiring for pre- and post-norm; the gradient
tools of chapter 4; checkers catch the typical mistakes."""

import pytest
import torch

from companion.layers import (
    FeedForward,
    LayerNorm,
    Residual,
    RMSNorm,
    parameter_gradient_norms,
    residual_stack,
    stream_gradients,
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
