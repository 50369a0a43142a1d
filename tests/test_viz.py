"""The static-site explorer: every state drawn once, controls linked on the client side and in Python."""
import matplotlib

matplotlib.use("Agg")
import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from companion.viz import MAX_EXPLORER_STATES, explorer  # noqa: E402


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


@pytest.mark.parametrize("kwargs, message", [
    ({"controls": {}}, "non-empty dict"),
    ({"controls": {"scale": []}}, "non-empty list"),
    ({"controls": {"scale": "abc"}}, "non-empty list"),
    ({"controls": {"scale": [1, 1]}}, "repeats a value"),
    ({"controls": {"not a name": [1]}}, "identifiers"),
    ({"controls": {"scale": list(range(MAX_EXPLORER_STATES + 1)), "shape": ["line"]}}, "states"),
    ({"alt": ""}, "alt must be"),
    ({"start": {"scale": 9}}, "start="),
])
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"controls": {"scale": [1, 2], "shape": ["line"]}, "alt": "x", **kwargs}
    with pytest.raises(ValueError, match=message):
        explorer(draw([]), **arguments)


def test_render_must_return_a_figure():
    with pytest.raises(TypeError, match="must return a matplotlib Figure"):
        explorer(lambda scale: None, {"scale": [1]}, alt="x")
    with pytest.raises(ValueError, match="select\\(\\) got control"):
        explorer(draw([]), {"scale": [1], "shape": ["line"]}, alt="x").select(size=2)
