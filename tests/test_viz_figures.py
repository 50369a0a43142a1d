"""The figure helpers the chapters call (companion.viz): each draws what it is given, on the axis given,
and refuses input that would draw something else; and the run-time note of each chapter's opening."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in tests; the pages use the inline backend

import matplotlib.pyplot as plt
import pytest
import torch

from companion.viz import curves, grouped_bars, matrix_image, ran_on, stacked_bars


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def lines_by_label(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_curves_take_values_pairs_and_dicts(ax):
    out = curves(
        {
            "values": [3, 1, 2],
            "pair": ([10, 20], [5, 6]),
            "dict": {2: 0.5, 4: 0.25},
            "tensor": torch.tensor([1.0, 0.0]),
        },
        ax=ax,
        title="t",
        xlabel="x",
        ylabel="y",
    )
    assert out is ax
    got = lines_by_label(ax)
    assert got["values"] == ([0, 1, 2], [3, 1, 2])
    assert got["pair"] == ([10, 20], [5, 6])
    assert got["dict"] == ([2, 4], [0.5, 0.25])
    assert got["tensor"] == ([0, 1], [1.0, 0.0])
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("t", "x", "y")


def test_curves_shared_x_log_scales_reference_lines_and_styles(ax):
    curves(
        {"a": [1, 10, 100], "b": [2, 20, 200]},
        x=[1, 2, 4],
        log="xy",
        ax=ax,
        styles={"a": "o--", "b": {"lw": 0.6}},
        hlines={"chance": 0.5},
        vlines={"_edge": 3.5},
        ylim=(0.1, 1000),
    )
    got = lines_by_label(ax)
    assert got["a"][0] == [1, 2, 4] and got["b"][1] == [2, 20, 200]
    line_a = next(line for line in ax.get_lines() if line.get_label() == "a")
    line_b = next(line for line in ax.get_lines() if line.get_label() == "b")
    assert line_a.get_linestyle() == "--" and line_a.get_marker() == "o" and line_b.get_linewidth() == 0.6
    assert ax.get_xscale() == ax.get_yscale() == "log" and ax.get_ylim() == (0.1, 1000)
    assert got["chance"][1] == [0.5, 0.5] and got["_edge"][0] == [3.5, 3.5]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["a", "b", "chance"]  # a label starting with "_" stays out


def test_curves_without_an_axis_draw_a_new_figure_and_show_it():
    before = set(plt.get_fignums())
    assert curves({"a": [1, 2]}) is None
    new = set(plt.get_fignums()) - before
    plt.close("all")
    assert len(new) == 1  # one new figure (Agg's show leaves it open; the inline backend closes it)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: curves({}), "series is empty"),
        (lambda: curves({"a": [1, 2]}, log="z"), "log='z'"),
        (lambda: curves({"a": [1, 2, 3]}, x=[0, 1]), "series 'a' has 3 values but 2 x positions"),
        (lambda: stacked_bars({}), "parts is empty"),
        (lambda: stacked_bars({"m": {"a": 1, "b": 2}, "n": {"b": 2, "a": 1}}), r"parts\['n'\] has parts"),
        (lambda: grouped_bars({"g": [1, 2]}, ["x"]), r"groups\['g'\] has 2 values but there are 1 labels"),
        (lambda: grouped_bars({}, []), "groups is empty"),
        (lambda: matrix_image(torch.zeros(2, 3, 4)), r"matrix has shape \(2, 3, 4\)"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    plt.close("all")


def test_stacked_bars_stack_each_part_on_the_last(ax):
    stacked_bars({"m": {"a": 1e6, "b": 2e6}, "n": {"a": 3e6, "b": 1e6}}, scale=1e6, ax=ax, xlabel="millions")
    bars = ax.patches
    assert [(b.get_x(), b.get_width()) for b in bars] == [(0, 1), (0, 3), (1, 2), (3, 1)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.get_xlabel() == "millions"


def test_grouped_bars_put_groups_side_by_side_over_each_label(ax):
    grouped_bars({"g1": [1, 2, 3], "g2": torch.tensor([4.0, 5.0, 6.0])}, ["x", "y", "z"], ax=ax)
    heights = [b.get_height() for b in ax.patches]
    centres = [b.get_x() + b.get_width() / 2 for b in ax.patches]
    assert heights == [1, 2, 3, 4, 5, 6]
    assert centres[0] < 0 < centres[3] and centres[1] < 1 < centres[4]  # g1 left of g2 at each label
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]


def test_matrix_image_shows_rows_down_and_columns_across(ax):
    matrix = torch.arange(6.0).reshape(2, 3)
    matrix_image(matrix, ax=ax, cmap="RdBu", vmin=-1, vmax=10, xlabel="column", ylabel="row")
    image = ax.get_images()[0]
    assert image.get_array().shape == (2, 3) and image.get_clim() == (-1, 10)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("column", "row")
    assert len(ax.figure.axes) == 2  # the colour bar


def test_ran_on_names_the_threads_or_the_device():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ran_on() == "one CPU thread" == ran_on("cpu")
        torch.set_num_threads(2)
        assert ran_on(torch.device("cpu")) == "2 CPU threads"
    finally:
        torch.set_num_threads(threads)
    assert ran_on("meta") == "the meta device"
