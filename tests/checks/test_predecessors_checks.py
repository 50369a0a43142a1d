"""Chapter 1 checkers (predecessors): typical wrong answers, each rejected with the hint that names it."""

import pytest
import torch
import torch.nn.functional as F
from einops import einsum

from companion.checks import CheckFailed
from companion.checks import predecessors as checks
from companion.data import recall_task
from companion.predecessors import causal_conv1d


def mlp_count(vocab, window, d_model, d_hidden):
    return (
        vocab * d_model + window * d_model * d_hidden + d_hidden + d_hidden * window * vocab + window * vocab
    )


def rnn_reference(x, h, w_xh, w_hh, b):
    return torch.tanh(
        einsum(x, w_xh, "batch d_in, d_model d_in -> batch d_model")
        + einsum(h, w_hh, "batch d_prev, d_model d_prev -> batch d_model")
        + b
    )


def recall_reference(batch, length, distance, vocab, seed):
    return recall_task(batch, length, distance, vocab, seed)


def _recall_marker_late(batch, length, distance, vocab, seed):
    x, _ = recall_task(batch, length, distance, vocab, seed)
    x[:, length - 1 - distance] = 5
    x[:, length - distance] = 0
    return x, x[:, length - distance + 1]


def _recall_marker_early(batch, length, distance, vocab, seed):
    x, _ = recall_task(batch, length, distance, vocab, seed)
    x[:, length - 1 - distance] = 5
    x[:, length - 2 - distance] = 0
    return x, x[:, length - 1 - distance]


def _recall_no_marker(batch, length, distance, vocab, seed):
    x = torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    return x, x[:, length - distance]


def _recall_filler_from_one(batch, length, distance, vocab, seed):
    x = torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    x[:, length - 1 - distance] = 0
    return x, x[:, length - distance]


def _recall_filler_past_vocab(batch, length, distance, vocab, seed):
    x = torch.randint(2, vocab + 1, (batch, length), generator=torch.Generator().manual_seed(seed))
    x[:, length - 1 - distance] = 0
    return x, x[:, length - distance]


def _recall_filler_with_markers(batch, length, distance, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, length), generator=g)
    x[:, length - 1 - distance] = 0
    return x, x[:, length - distance]


def _recall_last_token(batch, length, distance, vocab, seed):
    x, _ = recall_task(batch, length, distance, vocab, seed)
    return x, x[:, -1]


def _recall_same_rows(batch, length, distance, vocab, seed):
    x, a = recall_task(1, length, distance, vocab, seed)
    return x.repeat(batch, 1), a.repeat(batch)


def _recall_unseeded(batch, length, distance, vocab, seed):
    return recall_task(batch, length, distance, vocab, seed=int(torch.randint(0, 10**6, ())))


def _recall_ignores_seed(batch, length, distance, vocab, seed):
    return recall_task(batch, length, distance, vocab, seed=0)


# One wrong answer per line: a table, not code for the formatter to wrap.
# fmt: off
@pytest.mark.parametrize("checker, wrong, hint", [
    (checks.check_mlp_parameter_count, lambda v, w, d, h: mlp_count(v, w, d, h) - h - w * v, "left out the biases"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: mlp_count(v, w, d, h) - v * d, "embedding table"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: v * d + d * h + h + h * v + v, "one position's weights"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: v * d + w * d * h + h + h * v + v, "every position of the window"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: v * d + w * h + h + h * w * v + w * v, "flattened embeddings"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: float(mlp_count(v, w, d, h)), "whole number"),
    (checks.check_receptive_field, lambda layers, k: layers * k, "overlap"),
    (checks.check_receptive_field, lambda layers, k: layers * (k - 1), "own position"),
    (checks.check_receptive_field, lambda layers, k: k**layers, "linearly"),
    (checks.check_receptive_field, lambda layers, k: k + layers - 1, "not 1"),
    (checks.check_causal_conv1d, lambda x, w: F.conv1d(x.transpose(1, 2), w, padding=w.shape[-1] // 2).transpose(1, 2), "centred"),
    (checks.check_causal_conv1d, lambda x, w: F.conv1d(F.pad(x.transpose(1, 2), (0, w.shape[-1] - 1)), w).transpose(1, 2), "padded on the right"),
    (checks.check_causal_conv1d, lambda x, w: F.conv1d(x.transpose(1, 2), w).transpose(1, 2), "shorter than the input"),
    (checks.check_causal_conv1d, lambda x, w: causal_conv1d(x, w).transpose(1, 2), "move the channels back"),
    (checks.check_causal_conv1d, lambda x, w: causal_conv1d(x, w.flip(-1)), "reversed in time"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: x @ wx.T + h @ wh.T + b, "tanh is missing"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(x @ wx.T + b), "previous state h is ignored"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(x @ wx.T + h @ wh + b), "transposed"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(x @ wx.T + h @ wh.T), "bias is missing"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(x @ wx.T + h @ wh.T + b).T, "shape"),
    (checks.check_recall_batch, _recall_marker_late, "one step too late"),
    (checks.check_recall_batch, _recall_filler_with_markers, "more than once"),
    (checks.check_recall_batch, _recall_last_token, "the answer is the last token"),
    (checks.check_recall_batch, _recall_same_rows, "do not look random"),
    (checks.check_recall_batch, _recall_unseeded, "same seed give different batches"),
    (checks.check_recall_batch, _recall_ignores_seed, "different seed gives the same batch"),
    # beyond the first audit
    (checks.check_recall_batch, _recall_marker_early, "one step too early"),
    (checks.check_recall_batch, _recall_no_marker, "some rows have no marker"),
    (checks.check_recall_batch, lambda *a: (recall_task(*a)[0], recall_task(*a)[0][:, a[1] - 1 - a[2]]), "the answer should be the key"),
    (checks.check_recall_batch, _recall_filler_from_one, "token 1 appears"),
    (checks.check_recall_batch, _recall_filler_past_vocab, "draw them from \\[2, vocab\\)"),
    (checks.check_receptive_field, lambda layers, k: layers * (k - 1) + k, "one layer too many"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: mlp_count(v, w, d, h) - w * v, "output layer's bias"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: mlp_count(v, w, d, h) - h, "hidden layer's bias"),
    (checks.check_mlp_parameter_count, lambda v, w, d, h: v * d + w * d * h + h + h * v + w * v, "d_hidden \\* window \\* vocab weights"),
    (checks.check_receptive_field, lambda layers, k: 1 + layers * k, "adds kernel_size - 1 new positions, not kernel_size"),
    (checks.check_receptive_field, lambda layers, k: 1 + (layers - 1) * (k - 1), "one layer too few"),
    (checks.check_causal_conv1d, lambda x, w: F.conv1d(F.pad(x.transpose(1, 2), (w.shape[-1], 0)), w)[..., :-1].transpose(1, 2),
     "one zero too many"),
    (checks.check_causal_conv1d, lambda x, w: F.conv1d(x.transpose(1, 2), w, padding=w.shape[-1] - 1)[..., -x.shape[1]:].transpose(1, 2),
     "padded on the right"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.relu(x @ wx.T + h @ wh.T + b), "you used ReLU"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.sigmoid(x @ wx.T + h @ wh.T + b), "you used sigmoid"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(x @ wx + h @ wh.T + b), "torch's \\(d_out, d_in\\) layout"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(h @ wh.T + b), "input x is ignored"),
    (checks.check_rnn_step, lambda x, h, wx, wh, b: torch.tanh(x @ wx.T + h @ wh.T) + b, "added after the tanh"),
    (checks.check_recall_batch, lambda *a: tuple(t.float() for t in recall_task(*a)), "integer token ids"),
    (checks.check_recall_batch, lambda b, n, d, v, s: recall_task(b, n, d, v, s)[0], "return a pair"),
])
def test_checker_rejects_typical_mistake(checker, wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checker(wrong)
# fmt: on
