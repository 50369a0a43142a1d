"""The static-site explorer: every state drawn once, controls linked on the client side and in Python."""

import matplotlib

matplotlib.use("Agg")
import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest

from companion.viz import MAX_EXPLORER_STATES, explorer


def draw(calls):
    def render(scale, shape):
        calls.append((scale, shape))
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [0, scale] if shape == "line" else [scale, scale])
        return fig

    return render


def test_every_state_is_drawn_once_and_linked():
    calls = []
    ex = explorer(draw(calls), {"scale": [1, 2, 3], "shape": ["line", "flat"]}, alt="scale {scale}, {shape}")
    assert sorted(calls) == sorted((s, p) for s in (1, 2, 3) for p in ("line", "flat"))
    assert ex.states == 6
    assert ex.shown == {"scale": 1, "shape": "line"}
    assert isinstance(ex.controls["scale"], widgets.SelectionSlider)
    assert isinstance(ex.controls["shape"], widgets.ToggleButtons)
    # one client-side link per stack a control drives: 1 top stack, 3 inner stacks
    pairs = [(link.source[0], link.source[1], link.target[0], link.target[1]) for link in ex.links]
    top = ex.widget.children[-1]
    assert (ex.controls["scale"], "index", top, "selected_index") in pairs
    for inner in top.children:
        assert (ex.controls["shape"], "index", inner, "selected_index") in pairs
    assert len(pairs) == 4
    ex.select(scale=3, shape="flat")
    assert ex.shown == {"scale": 3, "shape": "flat"}
    leaf = ex.widget.children[-1].children[2].children[1]
    assert 'data-explorer-state="scale=3, shape=flat"' in leaf.value
    assert 'alt="scale 3, flat"' in leaf.value
    assert plt.get_fignums() == []  # every drawing closed once stored


def test_start_picks_the_first_state():
    ex = explorer(draw([]), {"scale": [1, 2], "shape": ["line"]}, alt="x", start={"scale": 2})
    assert ex.shown == {"scale": 2, "shape": "line"}
    assert ex.controls["scale"].index == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"controls": {}}, "non-empty dict"),
        ({"controls": {"scale": []}}, "non-empty list"),
        ({"controls": {"scale": "abc"}}, "non-empty list"),
        ({"controls": {"scale": [1, 1]}}, "repeats a value"),
        ({"controls": {"not a name": [1]}}, "identifiers"),
        ({"controls": {"scale": list(range(MAX_EXPLORER_STATES + 1)), "shape": ["line"]}}, "states"),
        ({"alt": ""}, "alt must be"),
        ({"start": {"scale": 9}}, "start="),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"controls": {"scale": [1, 2], "shape": ["line"]}, "alt": "x", **kwargs}
    with pytest.raises(ValueError, match=message):
        explorer(draw([]), **arguments)


def test_render_must_return_a_figure():
    with pytest.raises(TypeError, match="must return a matplotlib Figure"):
        explorer(lambda scale: None, {"scale": [1]}, alt="x")
    with pytest.raises(ValueError, match="select\\(\\) got control"):
        explorer(draw([]), {"scale": [1], "shape": ["line"]}, alt="x").select(size=2)


def test_render_may_return_the_numbers_it_drew():
    def render(scale):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, scale])
        return fig, [0, scale]

    ex = explorer(render, {"scale": [1, 2, 3]}, alt="scale {scale}", start={"scale": 2})
    assert ex.data == {(1,): [0, 1], (2,): [0, 2], (3,): [0, 3]}
    assert ex.shown_data == [0, 2]
    ex.select(scale=3)
    assert ex.shown_data == [0, 3]
    assert "course-explorer" in ex.widget._dom_classes  # how the browser test finds it
    leaves = ex.widget.children[-1].children
    assert len({id(leaf.layout) for leaf in leaves}) == 1 and len({id(leaf.style) for leaf in leaves}) == 1


def test_attention_explorer_shows_each_query_row():
    import torch

    from companion.viz import attention_explorer

    weights = torch.rand(1, 2, 5, 5).softmax(-1)
    ex = attention_explorer(weights, list("abcde"))
    assert list(ex.controls) == ["head", "query"]  # a single layer gets no control
    assert ex.states == 10 and ex.shown == {"head": 0, "query": 4}
    ex.select(head=1, query=2)
    assert torch.equal(ex.shown_data, weights[0, 1, 2])
    with pytest.raises(ValueError, match="tokens has 4 entries"):
        attention_explorer(weights, list("abcd"))
    with pytest.raises(ValueError, match="expected \\(layers, heads, q_pos, k_pos\\)"):
        attention_explorer(weights[0], list("abcde"))


def test_sinusoid_explorer_draws_the_tables_columns():
    import torch

    from companion.positions import sinusoidal_table
    from companion.viz import sinusoid_explorer

    ex = sinusoid_explorer(d_model=16, positions=32, pairs=(0, 3, 7), bases=(100, 10000))
    assert ex.states == 6 and ex.shown == {"pair": 0, "base": 10000}
    ex.select(pair=3, base=100)
    torch.testing.assert_close(ex.shown_data, sinusoidal_table(32, 16, 100.0)[:, 6:8])
    with pytest.raises(ValueError, match="pairs \\[8\\] are outside 0 .. 7"):
        sinusoid_explorer(d_model=16, pairs=(0, 8))
    with pytest.raises(ValueError, match="d_model=15"):
        sinusoid_explorer(d_model=15)
