"""The pieces around attention: LayerNorm, RMSNorm, the feed-forward block, and the residual wrapper,
plus the small tools chapter 4 (residual connections and LayerNorm) uses to measure them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Dropout, MultiHeadAttention
from .validation import expect, fraction, is_number, one_of, whole_number


def _check_width(x: Tensor, d_model: int, who: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} takes a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != d_model:
        raise ValueError(
            f"{who} got x of shape {tuple(x.shape)}; expected the last dim to be d_model={d_model}"
        )


def _check_eps(eps: float) -> None:
    expect(
        is_number(eps) and eps > 0,
        "eps",
        eps,
        "a small positive number such as 1e-5 (it keeps the division finite)",
    )


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm written out, the formula chapter 4 teaches: each token's features minus their mean,
    divided by the square root of their biased variance plus eps, then scaled and shifted.

    `LayerNorm` computes the same with PyTorch's fused kernel (`F.layer_norm`), which reads x once
    instead of several times; a test keeps the two equal.
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0, variance 1 (biased variance), then scale and shift.

    The formula is `layer_norm` above; forward runs the same through the fused `F.layer_norm`.
    Equal to `torch.nn.LayerNorm(d_model)`; statistics are per token, never across the batch.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        whole_number("d_model", d_model)
        _check_eps(eps)
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, self.d_model, "LayerNorm")
        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Scale each token by its root mean square (no centring, no bias), as in Zhang and Sennrich 2019."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        whole_number("d_model", d_model)
        _check_eps(eps)
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, self.d_model, "RMSNorm")
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class GELUTanh(nn.GELU):
    """GELU with the tanh approximation GPT-2 was trained with:
    0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). It differs from the exact GELU by up to ~5e-4."""

    def __init__(self):
        super().__init__(approximate="tanh")


# The one list of each choice; TransformerConfig validates against these names.
NORMS = ("pre", "post", "none")  # where Residual puts the norm; "none" has no norm at all
NORM_TYPES = {"layer": LayerNorm, "rms": RMSNorm}  # which norm: LayerNorm (GPT-2, BERT) or RMSNorm (Llama)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": GELUTanh, "silu": nn.SiLU}
GATED = ("swiglu",)  # feed-forward blocks with a gate (SwiGLU), built by SwiGLU rather than FeedForward


def make_norm(norm_type: str, d_model: int, eps: float = 1e-5) -> nn.Module:
    """A LayerNorm (norm_type="layer") or an RMSNorm (norm_type="rms") over d_model features."""
    one_of(
        "norm_type",
        norm_type,
        NORM_TYPES,
        "'layer' is LayerNorm (centre and scale), 'rms' is RMSNorm (scale only)",
    )
    return NORM_TYPES[norm_type](d_model, eps)


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> d_ff -> d_model, the same weights at every position.

    `dropout` here drops hidden units after the activation (tensor2tensor's relu_dropout). The paper,
    BERT and GPT-2 do not, and the companion's models build it with 0: their dropout sits on the
    block's output, in `Residual`.
    """

    def __init__(
        self, d_model: int, d_ff: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True
    ):
        super().__init__()
        whole_number("d_model", d_model)
        whole_number("d_ff", d_ff)
        fraction("dropout", dropout)
        one_of("activation", activation, ACTIVATIONS)
        self.d_model = d_model
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)  # hidden dropout, after the activation; 0 in every companion model

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, self.d_model, "FeedForward")
        return self.down(self.dropout(self.act(self.up(x))))


class SwiGLU(nn.Module):
    """The gated feed-forward block of Llama (Shazeer 2020): w2(SiLU(w1 x) * w3 x), no biases by default.

    w1 (d_model -> d_ff) makes the gate, w3 (d_model -> d_ff) the value it lets through, w2 (d_ff ->
    d_model) projects back. Three matrices instead of two, so configs shrink d_ff to about 8/3 d_model
    to keep the parameter count of a 4 d_model MLP (see `TransformerConfig.d_ff`).
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        whole_number("d_model", d_model)
        whole_number("d_ff", d_ff)
        fraction("dropout", dropout)
        self.d_model = d_model
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w3 = nn.Linear(d_model, d_ff, bias=bias)
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = Dropout(dropout)  # inside the block, after the gate, as FeedForward has it

    def forward(self, x: Tensor) -> Tensor:
        _check_width(x, self.d_model, "SwiGLU")
        return self.w2(self.dropout(nn.functional.silu(self.w1(x)) * self.w3(x)))


def residual(
    x: Tensor,
    sublayer: Callable[[Tensor], Tensor],
    norm: nn.Module,
    placement: str = "pre",
    *,
    skip: bool = True,
) -> Tensor:
    """One sub-layer on the residual stream, with its norm where `placement` says:

    "pre":  x + sublayer(norm(x))   (GPT-2 and most modern models)
    "post": norm(x + sublayer(x))   (Vaswani et al. 2017, BERT)
    ("none" passes nn.Identity() as the norm.) skip=False drops the "x +" and leaves the norm where it
    was, so chapter 4 can measure what the skip connection does. `Residual` and the models' blocks
    both add their sub-layers with this one function.
    """
    keep = x if skip else 0.0
    if placement == "pre":
        return keep + sublayer(norm(x))
    return norm(keep + sublayer(x))


class Residual(nn.Module):
    """A sub-layer F wrapped with its residual connection, norm and dropout, as one module (chapter 4):

    norm="pre":  x + dropout(F(LN(x)))
    norm="post": LN(x + dropout(F(x)))
    norm="none": x + dropout(F(x))       (no norm at all, for comparison)
    norm_type="rms" puts an RMSNorm where LN stands (Llama); "layer", the default, is LayerNorm.
    The models' blocks hold each sub-layer and its norm side by side instead (`models.EncoderBlock`).
    """

    def __init__(
        self,
        sublayer: nn.Module,
        d_model: int,
        norm: str = "pre",
        dropout: float = 0.0,
        eps: float = 1e-5,
        *,
        skip: bool = True,
        norm_type: str = "layer",
    ):
        super().__init__()
        one_of("norm", norm, NORMS, "'pre' is x + F(LN(x)), 'post' is LN(x + F(x))")
        fraction("dropout", dropout)
        self.sublayer = sublayer
        self.norm = make_norm(norm_type, d_model, eps) if norm != "none" else nn.Identity()
        self.placement = norm
        self.skip = skip
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return residual(
            x,
            lambda h: self.dropout(self.sublayer(h, *args, **kwargs)),
            self.norm,
            self.placement,
            skip=self.skip,
        )


def residual_stack(
    d_model: int,
    layers: int,
    *,
    heads: int = 4,
    norm: str = "pre",
    skip: bool = True,
    activation: str = "gelu",
) -> nn.Sequential:
    """`layers` encoder-style layers (attention, then feed-forward, each wrapped in `Residual`), for
    measuring gradients with and without the skip connection. A final LayerNorm follows pre-norm layers."""
    for name, value in (("d_model", d_model), ("layers", layers), ("heads", heads)):
        whole_number(name, value)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks.append(Residual(MultiHeadAttention(d_model, heads), d_model, norm, skip=skip))
        blocks.append(Residual(FeedForward(d_model, 4 * d_model, activation), d_model, norm, skip=skip))
    if norm == "pre":
        blocks.append(LayerNorm(d_model))
    return nn.Sequential(*blocks)


def stream_gradients(
    blocks: Sequence[nn.Module], x: Tensor, loss_fn: Callable[[Tensor], Tensor]
) -> list[Tensor]:
    """Run x through `blocks` in order, backpropagate loss_fn(output), and return the gradient of the loss
    with respect to the residual stream at each depth: before every block, and last, at the output."""
    stream: list[Tensor] = []
    x = x.detach().requires_grad_(True)
    for block in blocks:
        x.retain_grad()
        stream.append(x)
        x = block(x)
    x.retain_grad()
    stream.append(x)
    loss_fn(x).backward()
    return [t.grad.detach() for t in stream]


def parameter_gradient_norms(modules: Sequence[nn.Module]) -> list[float]:
    """The norm of each module's parameter gradients (all its parameters together), after a backward pass."""
    norms = []
    for module in modules:
        grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
        if not grads:
            raise ValueError(f"{type(module).__name__} has no gradients; call loss.backward() first")
        norms.append(float(torch.cat(grads).norm()))
    return norms
