"""torch.compile: no graph breaks in the forward pass or a training step, `generate` takes a compiled model
and a compiled cached decode compiles once per kind of step, not once per length.

Graphs are captured by dynamo and run by the "eager" or "aot_eager" backends, so the tests check what
dynamo sees (graph breaks, recompiles) and the backward AOTAutograd builds, without spending minutes in
inductor's C++ compiler; benchmarks/bench_compile.py times inductor itself.
"""

import pytest
import torch
import torch._dynamo

from companion import generate
from companion.training import next_token_loss
from helpers import random_ids, small_model


class Counting:
    """A torch.compile backend that counts the graphs dynamo hands it and runs each as it is."""

    def __init__(self, inner: str = "eager"):
        self.inner = torch._dynamo.lookup_backend(inner)
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


def small(kind="decoder", **changes):
    return small_model(kind, vocab_size=37, context_length=48, d_model=32, heads=4, layers=2, **changes)


def ids(shape, seed=0, vocab=37):
    return random_ids(shape, vocab, seed)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "kind, changes",
    [
        ("decoder", {}),
        ("decoder", {"positional": "rope", "attention_path": "einops"}),
        ("encoder", {"pad_id": 0, "task_head": "mlm", "segment_vocab_size": 2}),
    ],
)
def test_forward_has_no_graph_breaks(kind, changes):
    model = small(kind, **changes)
    x = ids((2, 11))
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_encoder_decoder_forward_compiles_in_one_graph():
    model = small("encoder-decoder", pad_id=0)
    src, tgt = ids((2, 9), 1), ids((2, 7), 2)
    counter = Counting()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    torch.testing.assert_close(compiled(src, tgt), model(src, tgt))
    assert counter.graphs == 1


def test_fullgraph_training_step_matches_eager():
    """Forward, loss and backward (AOTAutograd) compiled with fullgraph=True give eager's loss and gradients."""
    model = small(dropout=0.0)
    twin = small(dropout=0.0)
    x = ids((3, 16), 3)
    counter = Counting("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for m in (compiled, twin):
        next_token_loss(m(x), x).backward()
    assert counter.graphs == 1
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_loss_compiles_in_the_same_graph_as_the_model():
    """The library's cross-entropy reads the targets back only in eager mode: compiled, forward and loss are
    one graph (bench_compile's "training step" row), and eager still names an out-of-range target."""
    model, x = small(dropout=0.0), ids((3, 16), 3)
    explained = torch._dynamo.explain(lambda t: next_token_loss(model(t), t))(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    with pytest.raises(ValueError, match=r"targets hold ids in \[1, 40\]"):
        next_token_loss(torch.randn(1, 4, 37), torch.tensor([[0, 40, 1, 2]]))


def test_generate_takes_a_compiled_model_and_compiles_once_for_every_length():
    model = small()
    counter = Counting()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    prompt = ids((2, 1), 4)
    for n in (8, 20, 5):
        assert torch.equal(generate(compiled, prompt, n), generate(model, prompt, n))
    # The first step (an empty cache) and then every later step, whatever the length: two graphs.
    assert counter.graphs == 2
    longer = ids((2, 4), 5)
    for n in (6, 10):  # a longer prompt is a new shape once, then dynamic too
        assert torch.equal(generate(compiled, longer, n), generate(model, longer, n))
    assert counter.graphs <= 3
    uncached = generate(compiled, prompt, 4, use_cache=False)
    assert torch.equal(uncached, generate(model, prompt, 4))


def test_generate_takes_a_compiled_encoder_decoder():
    model = small("encoder-decoder")
    compiled = torch.compile(model, fullgraph=True, backend=Counting())
    src, start = ids((2, 8), 6), torch.zeros(2, 1, dtype=torch.long)
    assert torch.equal(generate(compiled, start, 10, src_ids=src), generate(model, start, 10, src_ids=src))


def test_generate_refuses_a_compiled_encoder_with_its_own_name():
    compiled = torch.compile(small("encoder"), backend=Counting())
    with pytest.raises(TypeError, match="got EncoderLM"):
        generate(compiled, ids((1, 3)), 2)


def test_eager_model_still_refuses_bad_ids_with_a_clear_error():
    """The value checks are skipped only while compiling or inside values_trusted(); eager mode keeps them."""
    from companion.device import values_trusted

    model = small()
    with pytest.raises(ValueError, match=r"token ids in \[0, 40\]: expected ids in the vocabulary \[0, 36\]"):
        model(torch.tensor([[0, 40]]))
    with (
        values_trusted(),
        pytest.raises(IndexError),
    ):  # unchecked, the embedding lookup fails on its own terms
        model(torch.tensor([[0, 40]]))
    with pytest.raises(ValueError, match="vocabulary"):  # and the check is back after the block
        model(torch.tensor([[0, 40]]))
