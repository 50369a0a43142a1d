"""Predecessors: the interface, the properties chapter 1 claims and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from companion import MultiHeadAttention, count_parameters
from companion.data import recall_batches, recall_targets, recall_task
from companion.predecessors import (
    RNNLM,
    BagOfTokensMLP,
    CausalCNN,
    WindowMLP,
    autograd_depth,
    causal_conv1d,
    influence_by_distance,
    recall_accuracy,
    recall_loss,
    receptive_field,
    rnn_loop,
    rnn_step,
)
from helpers import random_ids

TOL = dict(atol=1e-5, rtol=1e-5)
V, L = 11, 10


def ids(batch=3, length=L, seed=0):
    return random_ids((batch, length), V, seed)


@pytest.mark.parametrize(
    "make",
    [
        lambda: WindowMLP(V, L, 4, 8),
        lambda: BagOfTokensMLP(V, 4, 8),
        lambda: CausalCNN(V, 4, 2, 3),
        lambda: RNNLM(V, 4, "rnn"),
        lambda: RNNLM(V, 4, "gru"),
        lambda: RNNLM(V, 4, "lstm"),
        lambda: RNNLM(V, 4, "rnn", fused=False),
    ],
)
def test_every_model_maps_ids_to_logits_and_trains(make):
    torch.manual_seed(0)
    model = make()
    out = model(ids())
    assert out.shape == (3, L, V)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_window_mlp_parameters_grow_linearly_with_window():
    counts = [count_parameters(WindowMLP(V, w, 4, 8)) for w in (4, 8, 12, 16)]
    steps = {b - a for a, b in zip(counts, counts[1:])}
    assert len(steps) == 1 and steps.pop() == 4 * (4 * 8 + 8 * V + V)


def test_bag_of_tokens_cannot_tell_permutations_apart():
    torch.manual_seed(0)
    model, x = BagOfTokensMLP(V, 4, 8), ids()
    perm = torch.randperm(L)
    torch.testing.assert_close(model(x)[:, -1], model(x[:, perm])[:, -1], **TOL)


def test_window_mlp_tells_permutations_apart():
    torch.manual_seed(0)
    model, x = WindowMLP(V, L, 4, 8), ids()
    assert not torch.allclose(model(x)[:, -1], model(x.flip(1))[:, -1])


@pytest.mark.parametrize(
    "layers, kernel, growth, field", [(1, 3, 1, 3), (3, 3, 1, 7), (4, 2, 2, 16), (3, 5, 1, 13)]
)
def test_receptive_field_formula(layers, kernel, growth, field):
    assert receptive_field(layers, kernel, growth) == field


@pytest.mark.parametrize("layers, kernel, growth", [(3, 3, 1), (2, 4, 1), (3, 2, 2)])
def test_cnn_sees_exactly_its_receptive_field(layers, kernel, growth):
    torch.manual_seed(0)
    cnn = CausalCNN(V, 6, layers, kernel, growth)
    influence = influence_by_distance(cnn.mix, torch.randn(2, 20, 6))
    field = receptive_field(layers, kernel, growth)
    assert (influence[:field] > 0).all() and (influence[field:] == 0).all()


def test_cnn_is_causal_and_shift_equivariant():
    torch.manual_seed(0)
    cnn = CausalCNN(V, 6, 2, 3).eval()
    x = ids(length=12)
    changed = x.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % V
    torch.testing.assert_close(cnn(x)[:, :8], cnn(changed)[:, :8], **TOL)
    # Dropping the first token shifts the outputs: beyond the field, each output is unchanged.
    torch.testing.assert_close(
        cnn(x[:, 1:])[:, cnn.receptive_field - 1 :], cnn(x)[:, cnn.receptive_field :], **TOL
    )


def test_causal_conv1d_matches_left_padded_conv():
    x, w, b = torch.randn(2, 9, 3), torch.randn(4, 3, 3), torch.randn(4)
    expected = F.conv1d(F.pad(x.transpose(1, 2), (2, 0)), w, b).transpose(1, 2)
    torch.testing.assert_close(causal_conv1d(x, w, b), expected, **TOL)


def test_rnn_step_loop_matches_fused_rnn():
    torch.manual_seed(0)
    cell = torch.nn.RNN(5, 7, batch_first=True)
    x = torch.randn(3, 11, 5)
    torch.testing.assert_close(rnn_loop(x, cell), cell(x)[0], **TOL)
    model = RNNLM(V, 6, "rnn")
    slow = RNNLM(V, 6, "rnn", fused=False)
    slow.load_state_dict(model.state_dict())
    torch.testing.assert_close(slow(ids()), model(ids()), **TOL)


def test_rnn_step_formula():
    x, h, w_xh, w_hh, b = (
        torch.randn(2, 3),
        torch.randn(2, 4),
        torch.randn(4, 3),
        torch.randn(4, 4),
        torch.randn(4),
    )
    expected = torch.tanh(x @ w_xh.T + h @ w_hh.T + b)
    torch.testing.assert_close(rnn_step(x, h, w_xh, w_hh, b), expected, **TOL)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_rnn_is_causal(cell):
    torch.manual_seed(0)
    model = RNNLM(V, 6, cell)
    x = ids()
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % V
    torch.testing.assert_close(model(x)[:, :6], model(changed)[:, :6], **TOL)


def test_rnn_chain_grows_with_length_attention_does_not():
    torch.manual_seed(0)
    cell, mha = torch.nn.RNN(4, 4, batch_first=True), MultiHeadAttention(4, 2)
    depths_rnn = [
        autograd_depth(rnn_loop(torch.randn(1, n, 4, requires_grad=True), cell)) for n in (8, 16, 32)
    ]
    depths_attention = [
        autograd_depth(mha(torch.randn(1, n, 4, requires_grad=True), causal=True)) for n in (8, 16, 32)
    ]
    # 8 more steps add d, 16 more add 2d: the chain is linear in the length.
    assert depths_rnn[2] - depths_rnn[1] == 2 * (depths_rnn[1] - depths_rnn[0]) > 0
    assert len(set(depths_attention)) == 1


def test_vanilla_rnn_influence_fades_with_distance():
    torch.manual_seed(0)
    model = RNNLM(V, 16, "rnn")
    influence = influence_by_distance(model.mix, torch.randn(4, 40, 16))
    assert influence[30] < 1e-3 * influence[0]


def test_recall_task_puts_the_key_after_the_marker():
    x, answer = recall_task(5, 12, torch.tensor([1, 3, 5, 7, 11]), 9, seed=0)
    for row, d in enumerate([1, 3, 5, 7, 11]):
        assert x[row, 11 - d] == 0 and (x[row] == 0).sum() == 1
        assert answer[row] == x[row, 12 - d]
    assert x.min() >= 0 and (x != 1).all() and x.max() < 9


def test_recall_batches_are_deterministic_and_vary_by_step():
    make = recall_batches(8, 12, 6, 9, seed=3)
    assert torch.equal(make(0)[0], recall_batches(8, 12, 6, 9, seed=3)(0)[0])
    assert not torch.equal(make(0)[0], make(1)[0])
    distances = 11 - (make(5)[0] == 0).float().argmax(1)
    assert distances.min() >= 1 and distances.max() <= 6


def test_recall_targets_ask_for_the_key_from_the_key_onwards():
    x, answer = recall_task(2, 8, torch.tensor([3, 6]), 9, seed=0)
    targets = recall_targets(x)
    assert targets[0].tolist() == [-100] * 5 + [answer[0].item()] * 3
    assert targets[1].tolist() == [-100] * 2 + [answer[1].item()] * 6
    assert torch.equal(targets[:, -1], answer)


class Oracle(torch.nn.Module):
    """Knows the rule: puts all its score on the key wherever there is one, on token 2 elsewhere."""

    def __init__(self, vocab, reach=None):
        super().__init__()
        self.vocab, self.reach, self.dummy = vocab, reach, torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        targets = recall_targets(ids)
        if self.reach is not None:  # forget keys further back than `reach`
            distance = torch.arange(ids.shape[1])[None, :] - (ids == 0).long().argmax(1, keepdim=True)
            targets = torch.where(distance <= self.reach, targets, -100)
        return F.one_hot(targets.clamp(min=0).where(targets >= 0, 2), self.vocab).float() * 10 + self.dummy


def test_recall_accuracy_is_per_distance():
    assert torch.equal(recall_accuracy(Oracle(V), 12, V, batch=256), torch.ones(11))
    acc = recall_accuracy(Oracle(V, reach=4), 12, V, batch=1024)
    assert (acc[:4] == 1).all() and (acc[4:] < 0.3).all()


def test_recall_loss_is_low_for_the_oracle_and_high_for_a_guess():
    x, answer = recall_task(16, 12, 5, V, seed=0)
    assert recall_loss(Oracle(V), x, answer) < 1e-3
    assert recall_loss(Oracle(V, reach=0), x, answer) > 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: recall_targets(torch.tensor([[0, 3, 0, 4]])), "exactly one marker"),
        (lambda: recall_targets(torch.tensor([[2, 3, 4, 0]])), "no key follows"),
        (lambda: WindowMLP(V, 8)(ids(length=9)), "fixed window of 8 tokens"),
        (lambda: CausalCNN(V, 4, 2, kernel_size=5)(ids(length=3)), "kernel larger than the sequence"),
        (lambda: RNNLM(V, 4, "transformer"), "cell='transformer'"),
        (lambda: RNNLM(V, 4, "gru", fused=False), "cell='rnn' only"),
        (lambda: WindowMLP(V, 0), "window=0"),
        (lambda: CausalCNN(V, 4, 2, 3)(torch.randn(2, 5)), "integer token ids"),
        (lambda: RNNLM(V, 4)(torch.tensor([[1, V]])), "vocabulary"),
        (lambda: receptive_field(0, 3), "layers=0"),
        (lambda: recall_batches(4, 10, 10, 8), "max_distance=10"),
        (lambda: recall_task(4, 10, 10, 8), "distance must be in"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
