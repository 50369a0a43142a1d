"""Sequence models from before the transformer: a fixed-window MLP, a bag-of-tokens MLP, a causal 1-D CNN
and an RNN (vanilla, GRU, LSTM), each mapping ids (batch, seq) to logits (batch, seq, vocab).

Chapter 1 (before transformers) measures them against attention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from .data import IGNORE_INDEX, recall_targets, recall_task
from .training import evaluating
from .validation import one_of, sizes, token_ids

CELLS = ("rnn", "gru", "lstm")


class WindowMLP(nn.Module):
    """An MLP over a flattened window of exactly `window` tokens.

    The embeddings of all positions are concatenated into one vector, so every position has its own
    weights: nothing learned at position 3 carries over to position 7, and the first layer grows
    linearly with the window. Each position's logits see the whole window (nothing is causal).
    """

    def __init__(self, vocab_size: int, window: int, d_model: int = 32, d_hidden: int = 128):
        super().__init__()
        sizes(vocab_size=vocab_size, window=window, d_model=d_model, d_hidden=d_hidden)
        self.vocab_size, self.window = vocab_size, window
        self.embed = nn.Embedding(vocab_size, d_model)
        self.hidden = nn.Linear(window * d_model, d_hidden)
        self.out = nn.Linear(d_hidden, window * vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        token_ids("ids", ids, self.vocab_size)
        if ids.shape[1] != self.window:
            raise ValueError(
                f"ids has shape {tuple(ids.shape)} but this MLP reads a fixed window of {self.window} tokens; "
                f"pad or crop the sequence to {self.window}, or build a WindowMLP with window={ids.shape[1]}"
            )
        flat = rearrange(self.embed(ids), "batch seq d_model -> batch (seq d_model)")
        logits = self.out(F.relu(self.hidden(flat)))
        return rearrange(logits, "batch (seq vocab) -> batch seq vocab", seq=self.window)


class BagOfTokensMLP(nn.Module):
    """An MLP over the mean of the embeddings seen so far: any length, but blind to order.

    Position t's logits depend on the multiset of tokens 0..t only, so any reordering of
    a prefix gives the same output at its last position.
    """

    def __init__(self, vocab_size: int, d_model: int = 32, d_hidden: int = 128):
        super().__init__()
        sizes(vocab_size=vocab_size, d_model=d_model, d_hidden=d_hidden)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_hidden), nn.ReLU(), nn.Linear(d_hidden, vocab_size))

    def forward(self, ids: Tensor) -> Tensor:
        token_ids("ids", ids, self.vocab_size)
        x = self.embed(ids)
        counts = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=x.dtype)
        prefix_mean = x.cumsum(dim=1) / rearrange(counts, "seq -> 1 seq 1")
        return self.mlp(prefix_mean)


def receptive_field(layers: int, kernel_size: int, dilation_growth: int = 1) -> int:
    """Positions one output of a stack of 1-D convolutions can see: 1 + sum over layers of (kernel - 1) * dilation.

    dilation_growth=1: plain convolutions, the field grows linearly with depth.
    dilation_growth=2: dilations 1, 2, 4, ... (van den Oord et al. 2016), it grows exponentially.
    """
    sizes(layers=layers, kernel_size=kernel_size, dilation_growth=dilation_growth)
    return 1 + (kernel_size - 1) * sum(dilation_growth**i for i in range(layers))


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1) -> Tensor:
    """x (batch, seq, d_in), weight (d_out, d_in, kernel) -> (batch, seq, d_out);
    output t sees x[t - (kernel-1)*dilation .. t].

    Padding only on the left keeps the output as long as the input and never looks ahead.
    """
    kernel = weight.shape[-1]
    x = rearrange(x, "batch seq d_in -> batch d_in seq")
    x = F.pad(x, ((kernel - 1) * dilation, 0))
    return rearrange(F.conv1d(x, weight, bias, dilation=dilation), "batch d_out seq -> batch seq d_out")


class CausalCNN(nn.Module):
    """Embeddings, then `layers` causal 1-D convolutions (ReLU, residual), then a linear head.

    Output t sees the last receptive_field(layers, kernel_size, dilation_growth) tokens and nothing else.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 32,
        layers: int = 2,
        kernel_size: int = 3,
        dilation_growth: int = 1,
    ):
        super().__init__()
        sizes(
            vocab_size=vocab_size,
            d_model=d_model,
            layers=layers,
            kernel_size=kernel_size,
            dilation_growth=dilation_growth,
        )
        self.vocab_size, self.kernel_size = vocab_size, kernel_size
        self.dilations = [dilation_growth**i for i in range(layers)]
        self.receptive_field = receptive_field(layers, kernel_size, dilation_growth)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.convs = nn.ModuleList(nn.Conv1d(d_model, d_model, kernel_size) for _ in range(layers))
        self.head = nn.Linear(d_model, vocab_size)

    def mix(self, x: Tensor) -> Tensor:
        """The sequence-mixing part on embeddings: (batch, seq, d_model) -> (batch, seq, d_model)."""
        for conv, dilation in zip(self.convs, self.dilations):
            # The residual keeps gradients flowing through depth; it does not widen the field.
            x = x + F.relu(causal_conv1d(x, conv.weight, conv.bias, dilation))
        return x

    def forward(self, ids: Tensor) -> Tensor:
        token_ids("ids", ids, self.vocab_size)
        if ids.shape[1] < self.kernel_size:
            raise ValueError(
                f"ids has {ids.shape[1]} positions but the kernel spans kernel_size={self.kernel_size}: "
                "a kernel larger than the sequence only sees padding; use a shorter kernel or a longer sequence"
            )
        return self.head(self.mix(self.embed(ids)))


def rnn_step(x: Tensor, h: Tensor, w_xh: Tensor, w_hh: Tensor, bias: Tensor) -> Tensor:
    """One vanilla (Elman) RNN step: h_t = tanh(x_t W_xh^T + h_{t-1} W_hh^T + bias).

    x (batch, d_in), h (batch, d_model), w_xh (d_model, d_in), w_hh (d_model, d_model): torch's layout.
    """
    mixed = einsum(x, w_xh, "batch d_in, d_model d_in -> batch d_model")
    carried = einsum(h, w_hh, "batch d_prev, d_model d_prev -> batch d_model")
    return torch.tanh(mixed + carried + bias)


def rnn_loop(x: Tensor, cell: nn.RNN, h0: Tensor | None = None) -> Tensor:
    """The readable path: run a one-layer tanh `nn.RNN` one step at a time. (batch, seq, d_in) -> (batch, seq, d_model).

    Equal to `cell(x)[0]`; each step needs the previous one, so the loop cannot run in parallel over time.
    """
    if (
        not isinstance(cell, nn.RNN)
        or cell.num_layers != 1
        or cell.nonlinearity != "tanh"
        or not cell.batch_first
    ):
        raise ValueError("rnn_loop takes a one-layer nn.RNN(..., nonlinearity='tanh', batch_first=True)")
    h = x.new_zeros(x.shape[0], cell.hidden_size) if h0 is None else h0
    bias = cell.bias_ih_l0 + cell.bias_hh_l0 if cell.bias else x.new_zeros(cell.hidden_size)
    states = []
    for t in range(x.shape[1]):
        h = rnn_step(x[:, t], h, cell.weight_ih_l0, cell.weight_hh_l0, bias)
        states.append(h)
    return rearrange(states, "seq batch d_model -> batch seq d_model")


class RNNLM(nn.Module):
    """Embeddings, a recurrent layer (cell "rnn", "gru" or "lstm"), then a linear head.

    fused=False runs the vanilla RNN through `rnn_loop` (same numbers, one Python step per position).
    """

    def __init__(self, vocab_size: int, d_model: int = 32, cell: str = "gru", fused: bool = True):
        super().__init__()
        sizes(vocab_size=vocab_size, d_model=d_model)
        one_of("cell", cell, CELLS)
        if not fused and cell != "rnn":
            raise ValueError(f"fused=False (the step loop) is written for cell='rnn' only, got cell={cell!r}")
        self.vocab_size, self.cell_kind, self.fused = vocab_size, cell, fused
        self.embed = nn.Embedding(vocab_size, d_model)
        self.cell = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell](d_model, d_model, batch_first=True)
        self.head = nn.Linear(d_model, vocab_size)

    def mix(self, x: Tensor) -> Tensor:
        """The sequence-mixing part on embeddings: (batch, seq, d_model) -> (batch, seq, d_model)."""
        return self.cell(x)[0] if self.fused else rnn_loop(x, self.cell)

    def forward(self, ids: Tensor) -> Tensor:
        token_ids("ids", ids, self.vocab_size)
        return self.head(self.mix(self.embed(ids)))


def influence_by_distance(mix: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """How much each input position moves the last output: ||d out[:, -1] / d x[:, t]||, indexed by distance.

    mix: (batch, seq, d) -> (batch, seq, d'). Returns (seq,) where entry k is for the input k steps back
    from the last position (k = 0 is the last position itself), averaged over the batch.
    """
    if x.dim() != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, seq, d_model)")
    x = x.detach().requires_grad_(True)
    out = mix(x)[:, -1]
    # A random direction in output space, fixed by the seed, so no feature is favoured.
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
    (grad,) = torch.autograd.grad((out * direction).sum(), x)
    return grad.norm(dim=-1).mean(dim=0).flip(0)


def autograd_depth(output: Tensor) -> int:
    """Length of the longest chain of operations from the inputs to `output` in its autograd graph.

    Operations on the same chain must run one after another: this counts the sequential steps.
    """
    if output.grad_fn is None:
        return 0
    depth: dict = {}
    stack = [(output.grad_fn, False)]
    while stack:  # iterative post-order, so long RNN graphs do not hit the recursion limit
        node, expanded = stack.pop()
        if node in depth:
            continue
        parents = [p for p, _ in node.next_functions if p is not None]
        if expanded or not parents:
            depth[node] = 1 + max((depth[p] for p in parents), default=0)
            continue
        stack.append((node, True))
        stack.extend((p, False) for p in parents if p not in depth)
    return depth[output.grad_fn]


def recall_loss(model: nn.Module, ids: Tensor, answer: Tensor | None = None) -> Tensor:
    """Cross-entropy against the key at every position after the marker (`recall_targets`): one sequence
    trains every distance. `answer` is accepted so `recall_batches` can feed it directly; it is the last target."""
    logits = model(ids)
    return F.cross_entropy(
        rearrange(logits, "batch seq vocab -> (batch seq) vocab"), recall_targets(ids).flatten()
    )


@torch.no_grad()
def recall_accuracy(model: nn.Module, length: int, vocab: int, batch: int = 512, seed: int = 12345) -> Tensor:
    """Accuracy at recalling the key, per distance 1 .. length - 1 (entry k - 1 is distance k), over one fresh batch.

    Distance k is read off position marker_pos + k, so every sequence scores several distances.
    """
    g = torch.Generator().manual_seed(seed)
    distances = torch.randint(1, length, (batch,), generator=g)
    ids, _ = recall_task(batch, length, distances, vocab, seed=seed)
    targets = recall_targets(ids)
    with evaluating(model):
        correct = (model(ids).argmax(-1) == targets).float()
    distance = torch.arange(length)[None, :] - (ids == 0).long().argmax(1, keepdim=True)
    valid = targets != IGNORE_INDEX
    hits = torch.zeros(length - 1).index_add_(0, distance[valid] - 1, correct[valid])
    counts = torch.bincount(distance[valid] - 1, minlength=length - 1).float()
    return hits / counts.clamp(min=1)
