"""Checkers for the chapter 1 (before transformers: MLP, CNN, RNN) exercises."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import count_parameters
from ..predecessors import WindowMLP, causal_conv1d, receptive_field
from ._core import Checker, random_tensor

__all__ = [
    "check_mlp_parameter_count",
    "check_receptive_field",
    "check_causal_conv1d",
    "check_rnn_step",
    "check_recall_batch",
]


def check_mlp_parameter_count(fn) -> bool:
    """fn(vocab, window, d_model, d_hidden) -> the number of parameters of WindowMLP(vocab, window, d_model, d_hidden)."""
    with Checker("check_mlp_parameter_count") as c:
        for vocab, window, d_model, d_hidden in [(11, 7, 5, 13), (20, 16, 8, 32), (3, 1, 2, 4)]:
            got = c.expect_int(c.call(fn, vocab, window, d_model, d_hidden), "your count")
            expected = count_parameters(WindowMLP(vocab, window, d_model, d_hidden))
            if got == expected:
                continue
            embed, hidden, out = vocab * d_model, window * d_model * d_hidden, d_hidden * window * vocab
            mistakes = {
                embed
                + hidden
                + out: "you left out the biases: the hidden layer has d_hidden, the output layer window * vocab",
                hidden
                + d_hidden
                + out
                + window * vocab: "you left out the embedding table (vocab * d_model)",
                embed
                + d_model * d_hidden
                + d_hidden
                + d_hidden * vocab
                + vocab: "you counted one position's weights: the flattened window has window * d_model inputs "
                "and the head writes window * vocab logits",
                embed
                + hidden
                + d_hidden
                + d_hidden * vocab
                + vocab: "the output layer writes logits for every position of the window: window * vocab outputs",
                embed
                + window * d_hidden
                + d_hidden
                + out
                + window
                * vocab: "the first layer reads the flattened embeddings, window * d_model numbers, not window token ids",
                embed
                + hidden
                + d_hidden
                + out: "the output layer's bias is missing: window * vocab, one per logit",
                embed + hidden + out + window * vocab: "the hidden layer's bias is missing: d_hidden of them",
                embed
                + hidden
                + d_hidden
                + d_hidden * vocab
                + window
                * vocab: "the output layer maps d_hidden to window * vocab logits: d_hidden * window * vocab weights",
            }
            c.fail(
                mistakes.get(
                    got,
                    f"for vocab={vocab}, window={window}, d_model={d_model}, d_hidden={d_hidden} "
                    f"you count {got}, but the model has {expected} parameters",
                )
            )
    return c.passed


def check_receptive_field(fn) -> bool:
    """fn(layers, kernel_size) -> how many positions one output of a stack of causal convolutions sees."""
    with Checker("check_receptive_field") as c:
        for layers, kernel in [(3, 5), (1, 4), (6, 2), (4, 1)]:
            got = c.expect_int(c.call(fn, layers, kernel), "your receptive field")
            expected = receptive_field(layers, kernel)
            if got == expected:
                continue
            mistakes = {
                layers * kernel: "you multiplied layers by kernel_size: neighbouring windows overlap, "
                "so each layer adds kernel_size - 1 new positions, not kernel_size",
                layers
                * (
                    kernel - 1
                ): "you forgot the output's own position: the field is 1 + layers * (kernel_size - 1)",
                kernel
                ** layers: "the field grows linearly with depth (without dilation), not as kernel_size ** layers",
                kernel + layers - 1: "each layer adds kernel_size - 1 positions, not 1",
                1
                + layers
                * kernel: "each layer adds kernel_size - 1 new positions, not kernel_size: the window's "
                "first position overlaps the one the layer below already sees",
                1 + (layers - 1) * (kernel - 1): "one layer too few: every layer, the first included, adds "
                "kernel_size - 1 positions to the output's own one",
                1
                + (layers + 1)
                * (kernel - 1): "one layer too many: the first layer sees kernel_size positions, "
                "1 + (kernel_size - 1), and each further layer adds kernel_size - 1",
            }
            c.fail(
                mistakes.get(
                    got, f"for layers={layers}, kernel_size={kernel} you say {got}, expected {expected}"
                )
            )
    return c.passed


def check_causal_conv1d(fn) -> bool:
    """fn(x, weight) -> causal convolution: x (batch, seq, d_in), weight (d_out, d_in, kernel) -> (batch, seq, d_out)."""
    with Checker("check_causal_conv1d") as c:
        batch, seq, d_in, d_out, kernel = 2, 9, 3, 4, 3
        x, weight = random_tensor(batch, seq, d_in, seed=1), random_tensor(d_out, d_in, kernel, seed=2)
        got = c.call(fn, x, weight)
        c.expect_tensor(got)
        channels_first = x.transpose(1, 2)
        if tuple(got.shape) == (batch, seq - kernel + 1, d_out):
            c.fail(
                "your output is shorter than the input: pad kernel - 1 zeros on the left so there is one output per position"
            )
        if tuple(got.shape) == (batch, d_out, seq):
            c.fail("your output is (batch, d_out, seq): move the channels back to the last axis")
        expected = causal_conv1d(x, weight)
        c.diagnose(
            got,
            expected,
            {
                "your convolution is centred (padding on both sides): output t sees x[t + 1], the future. "
                "Pad kernel - 1 zeros on the left only": F.conv1d(
                    channels_first, weight, padding=kernel // 2
                ).transpose(1, 2),
                "you padded on the right: output t sees the next kernel - 1 positions, the future. Pad on the left": F.conv1d(
                    F.pad(channels_first, (0, kernel - 1)), weight
                ).transpose(1, 2),
                "the kernel is applied reversed in time: F.conv1d's weight[..., -1] multiplies the latest position": causal_conv1d(
                    x, weight.flip(-1)
                ),
                "output t does not see x[t]: you padded kernel_size zeros, one zero too many; pad kernel_size - 1": F.conv1d(
                    F.pad(channels_first, (kernel, 0)), weight
                )[..., :-1].transpose(1, 2),
            },
            what="your convolution",
        )
    return c.passed


def check_rnn_step(fn) -> bool:
    """fn(x, h, w_xh, w_hh, bias) -> tanh(x W_xh^T + h W_hh^T + bias), with torch's (d_out, d_in) weight layout."""
    with Checker("check_rnn_step") as c:
        batch, d_in, d_model = 3, 5, 4
        x, h = random_tensor(batch, d_in, seed=3), random_tensor(batch, d_model, seed=4)
        w_xh, w_hh, bias = (
            random_tensor(d_model, d_in, seed=5),
            random_tensor(d_model, d_model, seed=6),
            random_tensor(d_model, seed=7),
        )
        with c.explain(
            {
                "cannot be multiplied": "the weights are (d_model, d_in), torch's (d_out, d_in) layout: "
                "multiply by their transpose, x W_xh^T, or einsum 'batch d_in, d_model d_in -> batch d_model'"
            }
        ):
            got = c.call(fn, x, h, w_xh, w_hh, bias)
        c.expect_shape(
            got, (batch, d_model), "your new state", hint="the new state has one d_model vector per sequence"
        )
        pre = x @ w_xh.T + h @ w_hh.T + bias
        c.diagnose(
            got,
            torch.tanh(pre),
            {
                "the tanh is missing: without a nonlinearity the RNN is a linear filter": pre,
                "you used ReLU; this RNN squashes with tanh, which keeps the state in (-1, 1) step after step": torch.relu(
                    pre
                ),
                "you used sigmoid; this RNN squashes with tanh, which is centred on 0 and keeps the state in (-1, 1)": torch.sigmoid(
                    pre
                ),
                "the input x is ignored: the new state mixes x (through w_xh) and h (through w_hh)": torch.tanh(
                    h @ w_hh.T + bias
                ),
                "the previous state h is ignored: the step must carry h forward through w_hh": torch.tanh(
                    x @ w_xh.T + bias
                ),
                "w_hh is applied transposed: torch stores weights as (d_out, d_in), so use h W_hh^T, "
                "pattern 'batch d_prev, d_model d_prev -> batch d_model'": torch.tanh(
                    x @ w_xh.T + h @ w_hh + bias
                ),
                "the bias is missing": torch.tanh(x @ w_xh.T + h @ w_hh.T),
                "the bias is added after the tanh; it belongs inside, with the two products": torch.tanh(
                    x @ w_xh.T + h @ w_hh.T
                )
                + bias,
            },
            what="your new state",
        )
    return c.passed


def check_recall_batch(fn) -> bool:
    """fn(batch, length, distance, vocab, seed) -> (ids (batch, length), answer (batch,)) for the recall task."""
    with Checker("check_recall_batch") as c:
        batch, length, distance, vocab = 64, 12, 5, 9
        got = c.call(fn, batch, length, distance, vocab, 0)
        if not (isinstance(got, tuple) and len(got) == 2):
            c.fail("return a pair (ids, answer)")
        ids, answer = got
        c.expect_shape(ids, (batch, length), "ids")
        c.expect_shape(answer, (batch,), "answer", hint="one answer token per sequence")
        if ids.dtype.is_floating_point or answer.dtype.is_floating_point:
            c.fail(f"ids and answer should hold integer token ids, got {ids.dtype} and {answer.dtype}")
        marker_pos = length - 1 - distance
        markers = ids == 0
        if markers.sum(1).gt(1).any():
            c.fail(
                "some rows hold the marker token 0 more than once: draw filler tokens from [2, vocab) so the marker is unique"
            )
        if not markers.any(1).all():
            c.fail("some rows have no marker (token 0): put one at position length - 1 - distance")
        where = markers.float().argmax(1)
        if (where == marker_pos + 1).all():
            c.fail(
                f"the marker sits at length - distance = {marker_pos + 1}: one step too late. The sequence ends "
                f"`distance` steps after the marker, so it belongs at length - 1 - distance = {marker_pos}"
            )
        if (where == marker_pos - 1).all():
            c.fail(
                f"the marker sits at {marker_pos - 1}, one step too early; it belongs at length - 1 - distance = {marker_pos}"
            )
        if not (where == marker_pos).all():
            c.fail(
                f"the marker should sit at length - 1 - distance = {marker_pos}, found it at {sorted(set(where.tolist()))[:5]}"
            )
        rows = torch.arange(batch)
        if torch.equal(answer, ids[:, -1]) and not torch.equal(answer, ids[rows, marker_pos + 1]):
            c.fail("the answer is the last token; it is the key, the token right after the marker")
        if not torch.equal(answer, ids[rows, marker_pos + 1]):
            c.fail(
                "the answer should be the key: the token right after the marker, ids[:, length - distance]"
            )
        filler = torch.cat([ids[:, :marker_pos], ids[:, marker_pos + 1 :]], dim=1)
        if (filler == 1).any():
            c.fail("token 1 appears in the sequence: it is reserved; draw filler from [2, vocab)")
        if filler.min() < 2 or filler.max() >= vocab:
            c.fail(
                f"filler tokens lie in [{int(filler.min())}, {int(filler.max())}]; draw them from [2, vocab) = [2, {vocab - 1}]"
            )
        if len(set(answer.tolist())) < 3 or (ids[0] == ids[1]).all():
            c.fail("the rows do not look random: draw the filler and the keys at random, each row on its own")
        again = c.call(fn, batch, length, distance, vocab, 0)
        other = c.call(fn, batch, length, distance, vocab, 1)
        if not torch.equal(again[0], ids):
            c.fail(
                "two calls with the same seed give different batches: draw from a torch.Generator seeded with `seed`"
            )
        if torch.equal(other[0], ids):
            c.fail("a different seed gives the same batch: seed your generator with `seed`")
    return c.passed
