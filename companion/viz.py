"""Plots the chapters share: attention heatmaps, explorers that work without a kernel, loss curves.

Chapter 2 (attention) introduces the heatmap and the explorer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import Tensor


def attention_heatmap(
    weights: Tensor,
    queries: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    *,
    title: str = "attention weights",
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Draw one (q_pos, k_pos) weight matrix: rows are queries, columns the keys they attend to."""
    weights = weights.detach().float().cpu()
    if weights.dim() != 2:
        raise ValueError(
            f"weights has shape {tuple(weights.shape)}; pass one (q_pos, k_pos) matrix, e.g. weights[0, head]"
        )
    for name, labels, size in (("queries", queries, weights.shape[0]), ("keys", keys, weights.shape[1])):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{name} has {len(labels)} labels but the weights have {size} {name}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(1e-6, float(weights.max())))
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position")
    ax.set_title(title)
    if queries is not None:
        ax.set_yticks(range(len(queries)), labels=list(queries))
    if keys is not None:
        ax.set_xticks(range(len(keys)), labels=list(keys), rotation=90)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_explorer(weights: Tensor, tokens: Sequence[str], *, dpi: int = 72) -> Explorer:
    """An explorer of (layers, heads, q_pos, k_pos) weights: pick a layer, a head and a query and see
    which keys it attends to. Every choice is drawn now, so it reacts on the static site too; a
    control with one value (a one-layer model's layer) is left out. Its data is the bar heights."""
    weights = weights.detach().float().cpu()
    if weights.dim() != 4:
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected (layers, heads, q_pos, k_pos)")
    layers, heads, q_len, k_len = weights.shape
    if len(tokens) != k_len:
        raise ValueError(f"tokens has {len(tokens)} entries but the weights have {k_len} key positions")
    controls = {"layer": list(range(layers)), "head": list(range(heads)), "query": list(range(q_len))}
    controls = {name: options for name, options in controls.items() if len(options) > 1 or name == "query"}

    def render(layer: int = 0, head: int = 0, query: int = 0):
        row = weights[layer, head, query]
        fig, ax = plt.subplots(figsize=(5.5, 2))
        ax.bar(range(k_len), row.tolist(), color="tab:blue")
        ax.set_xticks(range(k_len), labels=list(tokens), rotation=90, fontsize=7)
        ax.set_ylabel("weight")
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {layer}, head {head}: query {query} ({tokens[query]!r}) attends to", fontsize=9)
        return fig, row

    named = ", ".join(f"{name} {{{name}}}" for name in controls)
    return explorer(
        render,
        controls,
        alt=f"Bar chart of the attention weights of {named} over the keys.",
        start={"query": q_len - 1},
        dpi=dpi,
    )


def loss_curves(
    curves: dict[str, Sequence[float]],
    *,
    xlabel: str = "step",
    ylabel: str = "loss (nats/token)",
    title: str = "",
    ax: plt.Axes | None = None,
    log: bool = False,
) -> plt.Axes:
    """Plot named loss histories on one axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(list(values), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def collect_attention(model: torch.nn.Module, *inputs, **kwargs) -> Tensor:
    """Run `model` once and return every self-attention layer's weights, (layers, batch, heads, q_pos, k_pos).

    `record_attention(model, kind="self")` keeps them (cross-attention calls are left out); the
    readable (non-fused) path runs for this call only, so the weights exist.
    """
    from .attention import record_attention

    with torch.no_grad(), record_attention(model, kind="self") as weights:
        model(*inputs, **kwargs)
    return torch.stack(weights)


# ----- Explorers that work without a kernel ------------------------------------------------------
# A page's explorer must react on the static website too, where no Python runs. So `explorer` draws
# every state its controls can reach when the page is built, and the controls pick which drawing is
# shown on the client side (ipywidgets' `jslink` to a `Stack`'s `selected_index`), the same in Jupyter
# and on the saved page.

MAX_EXPLORER_STATES = 64


class Explorer:
    """What `explorer` returns: the widget (displayed when it is a cell's last value) and its parts.

    controls: name -> the control widget; values: name -> the values that control steps through;
    select(**values) moves controls as a reader would; shown: the values whose drawing is visible;
    shown_data: what render returned beside that drawing (when it returned a (Figure, data) pair).
    """

    def __init__(
        self,
        box,
        controls: dict,
        values: dict,
        stacks: list,
        links: list,
        states: int,
        data: dict | None = None,
    ):
        self.widget = box
        self.data = data or {}  # state (a tuple of values, in control order) -> what render returned with it
        self.links = links  # the client-side links, one per (control, stack it drives)
        self.controls = controls
        self.values = values
        self._stacks = stacks  # one list per control: every Stack that control's index drives
        self.states = states

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def select(self, **values) -> None:
        """Move the named controls to these values, e.g. `select(base=1000)`."""
        for name, value in values.items():
            if name not in self.controls:
                raise ValueError(
                    f"select() got control {name!r}; this explorer's controls are {tuple(self.controls)}"
                )
            if value not in self.values[name]:
                raise ValueError(f"select({name}={value!r}): {name} takes one of {self.values[name]}")
            self.controls[name].index = self.values[name].index(value)

    @property
    def shown(self) -> dict:
        """The control values of the drawing that is visible now, read from the stacks themselves."""
        shown, stack = {}, self.widget.children[-1]
        for name in self.controls:
            shown[name] = self.values[name][stack.selected_index]
            stack = stack.children[stack.selected_index]
        return shown

    @property
    def shown_data(self):
        """What render returned beside the visible drawing (None when it returned a Figure alone)."""
        return self.data.get(tuple(self.shown.values()))


EXPLORER_COLOURS = 64  # a palette this size keeps line and bar plots exact to the eye at a third the bytes


def _figure_html(figure, alt: str, state: str, dpi: int) -> str:
    """One drawing as an <img> holding a palette PNG: rendered once at `dpi` (no second pass for a
    tight bounding box: the figure's layout engine, or tight_layout, fits it), then reduced to
    EXPLORER_COLOURS colours, which is what keeps a page of a few dozen drawings light."""
    import base64
    import html
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    if figure.get_layout_engine() is None:
        figure.tight_layout()
    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    plt.close(figure)
    buffer = io.BytesIO()
    pixels.quantize(EXPLORER_COLOURS, method=Image.Quantize.MEDIANCUT).save(
        buffer, format="png", optimize=True
    )
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'data-explorer-state="{html.escape(state)}" style="max-width:100%">'
    )


def explorer(render, controls: dict, *, alt: str, start: dict | None = None, dpi: int = 72) -> Explorer:
    """An explorer that reacts in Jupyter and on the static website alike.

    render(**values) draws one state and returns its matplotlib Figure, or a (Figure, data) pair
    whose data (the numbers drawn) a page can check against the library (Explorer.shown_data).
    controls maps each control's name to the values it steps through, e.g.
    {"pair": [0, 4, 16], "base": [100, 10000]}; alt is the text that describes each drawing,
    formatted with the values ("pair {pair}, base {base}").
    Every combination is drawn once, now (at most 64 in all, so pages stay light); numbers get a
    slider, anything else a row of buttons.
    """
    import itertools

    import ipywidgets as widgets
    from matplotlib.figure import Figure

    if not callable(render):
        raise TypeError(f"render must be a function of the control values returning a Figure, got {render!r}")
    if not isinstance(controls, dict) or not controls:
        raise ValueError(f"controls must be a non-empty dict of name -> list of values, got {controls!r}")
    values = {}
    for name, options in controls.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"control names must be Python identifiers (they are render's keywords), got {name!r}"
            )
        if isinstance(options, (str, bytes)) or not hasattr(options, "__len__") or len(options) == 0:
            raise ValueError(f"controls[{name!r}] must be a non-empty list of values, got {options!r}")
        options = list(options)
        if len(set(map(repr, options))) != len(options):
            raise ValueError(f"controls[{name!r}] repeats a value: {options!r}")
        values[name] = options
    states = math.prod(len(options) for options in values.values())
    if states > MAX_EXPLORER_STATES:
        sizes = " x ".join(str(len(v)) for v in values.values())
        raise ValueError(
            f"controls reach {sizes} = {states} states; an explorer draws every one, so keep it "
            f"at most {MAX_EXPLORER_STATES} (fewer values per control)"
        )
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError(f"alt must be a non-empty text describing each drawing, got {alt!r}")
    start = dict(start or {})
    for name, value in start.items():
        if name not in values or value not in values[name]:
            raise ValueError(f"start={start!r}: {name!r} must be a control and its value one of its values")

    names = list(values)
    drawings, data = {}, {}
    # One layout and one style for every drawing: the page saves each widget model once, so a layout
    # per drawing would add a few kilobytes per state for nothing.
    from ipywidgets.widgets.widget_string import HTMLStyle

    layout, style = widgets.Layout(), HTMLStyle()
    for combination in itertools.product(*(range(len(values[n])) for n in names)):
        chosen = {n: values[n][i] for n, i in zip(names, combination)}
        figure = render(**chosen)
        if isinstance(figure, tuple) and len(figure) == 2:
            figure, data[tuple(chosen.values())] = figure
        if not isinstance(figure, Figure):
            plt.close("all")
            raise TypeError(
                f"render({chosen}) returned {type(figure).__name__}; it must return a matplotlib Figure "
                "(or a (Figure, data) pair)"
            )
        state = ", ".join(f"{n}={v}" for n, v in chosen.items())
        drawings[combination] = widgets.HTML(
            _figure_html(figure, alt.format(**chosen), state, dpi), layout=layout, style=style
        )

    first = [values[n].index(start[n]) if n in start else 0 for n in names]
    stacks: list[list] = [[] for _ in names]

    def nest(level: int, prefix: tuple):
        if level == len(names):
            return drawings[prefix]
        stack = widgets.Stack(
            [nest(level + 1, prefix + (i,)) for i in range(len(values[names[level]]))],
            selected_index=first[level],
        )
        stacks[level].append(stack)
        return stack

    top = nest(0, ())
    widget_controls, links = {}, []
    for level, name in enumerate(names):
        options = [(str(v), i) for i, v in enumerate(values[name])]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values[name])
        if numeric:
            control = widgets.SelectionSlider(
                options=options,
                index=first[level],
                description=name,
                continuous_update=True,
                style={"description_width": "initial"},
            )
        else:
            # Whole names on the buttons and the label: the defaults cut both to a few characters.
            control = widgets.ToggleButtons(
                options=options,
                index=first[level],
                description=name,
                style={"description_width": "initial", "button_width": "auto"},
            )
        for stack in stacks[level]:
            links.append(widgets.jslink((control, "index"), (stack, "selected_index")))  # links in the page

        def follow(change, level=level):  # the same link in Python, so a kernel (and a test) sees it
            for stack in stacks[level]:
                stack.selected_index = change["new"]

        control.observe(follow, names="index")
        widget_controls[name] = control
    row = widgets.HBox(list(widget_controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
    box = widgets.VBox([row, top])
    box.add_class("course-explorer")  # how the browser test finds every explorer of a page
    return Explorer(box, widget_controls, values, stacks, links, states, data)


# ----- Chapter 3: the sinusoids of the original transformer ---------------------------------------


def draw_sinusoids(axes, pair: int, base: float, d_model: int = 64, positions: int = 128) -> Tensor:
    """Draw pair `pair`'s sine and cosine on axes[0], and PE[0] . PE[k] against k on axes[1];
    return the pair's (positions, 2) columns of the table."""
    from .positions import inverse_frequencies, sinusoidal_table

    table = sinusoidal_table(positions, d_model, base)
    values = table[:, 2 * pair : 2 * pair + 2]
    wavelength = 2 * math.pi / inverse_frequencies(d_model, base)[pair].item()
    axes[0].plot(values[:, 0], label="sin (feature 2i)")
    axes[0].plot(values[:, 1], label="cos (feature 2i+1)")
    axes[0].set_title(f"pair {pair}, base {base:g}: wavelength {wavelength:.4g}")
    axes[0].set_xlabel("position")
    axes[0].set_ylim(-1.1, 1.1)
    axes[0].legend(fontsize=8, loc="lower left")
    axes[1].plot(table @ table[0] / (d_model // 2), label="all pairs, / (d_model/2)")
    axes[1].plot(values[:, 1], label=f"pair {pair} alone: cos(k w)")
    axes[1].set_title(f"PE[0] . PE[k], base {base:g}")
    axes[1].set_xlabel("offset k (positions)")
    axes[1].set_ylim(-1.1, 1.1)
    axes[1].legend(fontsize=8, loc="lower left")
    return values


def sinusoid_explorer(
    d_model: int = 64,
    positions: int = 128,
    pairs: Sequence[int] = (0, 4, 8, 16, 24, 31),
    bases: Sequence[float] = (100, 1000, 10000, 100000),
    *,
    dpi: int = 72,
) -> Explorer:
    """Chapter 3's explorer: a pair i and a base; each state shows the pair's sine and cosine and
    the dot product of position vectors against their offset. Its data: the pair's two columns."""
    if d_model % 2 or d_model <= 0:
        raise ValueError(f"d_model={d_model!r} must be a positive even number (features come in pairs)")
    bad = [i for i in pairs if not 0 <= i < d_model // 2]
    if bad:
        raise ValueError(
            f"pairs {bad} are outside 0 .. {d_model // 2 - 1} (d_model={d_model} has {d_model // 2} pairs)"
        )

    def render(pair: int, base: float):
        fig, axes = plt.subplots(1, 2, figsize=(9, 2.6))
        return fig, draw_sinusoids(axes, pair, base, d_model, positions)

    start = {"base": 10000} if 10000 in bases else None
    return explorer(
        render,
        {"pair": list(pairs), "base": list(bases)},
        start=start,
        dpi=dpi,
        alt="Left: sine and cosine of pair {pair} against position, base {base}; right: "
        "the dot product of position 0 with position k, all pairs and pair {pair}.",
    )


# ---------------------------------------------------------------------------------------------------
# Figures the chapters draw, so that a page shows one call and the idea, not the matplotlib
# assembly; and the run time each chapter's opening shows.

Series = Sequence[float] | Tensor | Mapping[float, float] | tuple[Sequence[float], Sequence[float]]


def _xy(name: str, values: Series, x: Sequence[float] | None) -> tuple[list[float], list[float]]:
    """(x, y) lists from y values (against `x`, or 0, 1, 2, ...), an (x, y) pair, or a {x: y} dict."""
    if isinstance(values, Mapping):
        return [float(k) for k in values], [float(v) for v in values.values()]
    if isinstance(values, tuple) and len(values) == 2 and not isinstance(values[0], (int, float)):
        xs, ys = values
    else:
        xs, ys = (range(len(values)) if x is None else x), values
    xs = [float(v) for v in (xs.tolist() if isinstance(xs, Tensor) else xs)]
    ys = [float(v) for v in (ys.detach().flatten().tolist() if isinstance(ys, Tensor) else ys)]
    if len(xs) != len(ys):
        raise ValueError(f"series {name!r} has {len(ys)} values but {len(xs)} x positions")
    return xs, ys


def _finish(ax: plt.Axes, created: bool, legend: bool, legend_size: float | None) -> plt.Axes | None:
    if legend:
        ax.legend(fontsize=legend_size)
    if created:
        plt.show()
        return None
    return ax


def curves(
    series: Mapping[str, Series],
    *,
    x: Sequence[float] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    log: str = "",
    styles: Mapping[str, str | Mapping] | None = None,
    hlines: Mapping[str, float] | None = None,
    vlines: Mapping[str, float] | None = None,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    legend_size: float | None = None,
    figsize: tuple[float, float] | None = None,
    ax: plt.Axes | None = None,
    **plot_kwargs,
) -> plt.Axes | None:
    """Plot named curves on one axis: {label: y values, (x, y), or {x: y}}, against `x` if given.

    `log` is "", "x", "y" or "xy" (log scales); `styles` gives a label its matplotlib format
    ("o-", "--") or keyword arguments ({"lw": 0.6}); `hlines` and `vlines` draw grey reference lines,
    a label starting with "_" stays out of the legend. Draws on `ax` and returns it; without one, draws a
    new figure and shows it.
    """
    if not series:
        raise ValueError("series is empty; pass {label: values} for at least one curve")
    if log not in ("", "x", "y", "xy"):
        raise ValueError(f"log={log!r}; expected '', 'x', 'y' or 'xy'")
    created = ax is None
    if created:
        _, ax = plt.subplots(figsize=figsize)
    for name, values in series.items():
        xs, ys = _xy(name, values, x)
        style = (styles or {}).get(name, {})
        fmt, kwargs = (style, {}) if isinstance(style, str) else ("", dict(style))
        ax.plot(xs, ys, *([fmt] if fmt else []), label=name, **{**plot_kwargs, **kwargs})
    for name, y in (hlines or {}).items():
        ax.axhline(y, color="gray", linestyle=":", label=name)
    for name, at in (vlines or {}).items():
        ax.axvline(at, color="gray", linestyle="--", linewidth=0.8, label=name)
    ax.set_xscale("log" if "x" in log else "linear")
    ax.set_yscale("log" if "y" in log else "linear")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if xlim is not None:
        ax.set_xlim(xlim)
    if ylim is not None:
        ax.set_ylim(ylim)
    shown = len(series) + sum(not n.startswith("_") for n in [*(hlines or {}), *(vlines or {})])
    return _finish(ax, created, shown > 1, legend_size)


def stacked_bars(
    parts: Mapping[str, Mapping[str, float]],
    *,
    scale: float = 1.0,
    title: str = "",
    xlabel: str = "",
    figsize: tuple[float, float] = (6, 3.5),
    ax: plt.Axes | None = None,
) -> plt.Axes | None:
    """One horizontal bar per name, split into its parts: {name: {part: value}}, values / `scale`.

    Every name must have the same parts, so the colours mean the same thing in every bar.
    """
    if not parts:
        raise ValueError("parts is empty; pass {bar name: {part: value}}")
    names = list(parts)
    order = list(parts[names[0]])
    for name in names:
        if list(parts[name]) != order:
            raise ValueError(
                f"parts[{name!r}] has parts {list(parts[name])}; expected {order} like the first bar"
            )
    created = ax is None
    if created:
        _, ax = plt.subplots(figsize=figsize)
    left = [0.0] * len(names)
    for part in order:
        widths = [parts[n][part] / scale for n in names]
        ax.barh(names, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.set(title=title, xlabel=xlabel)
    return _finish(ax, created, True, 8)


def grouped_bars(
    groups: Mapping[str, Sequence[float]],
    labels: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    figsize: tuple[float, float] = (8, 3.5),
    ax: plt.Axes | None = None,
) -> plt.Axes | None:
    """Bars side by side: for each label on the x axis, one bar per group ({group: one value per label})."""
    if not groups:
        raise ValueError("groups is empty; pass {group name: one value per label}")
    for name, values in groups.items():
        if len(values) != len(labels):
            raise ValueError(f"groups[{name!r}] has {len(values)} values but there are {len(labels)} labels")
    created = ax is None
    if created:
        _, ax = plt.subplots(figsize=figsize)
    width = 0.8 / len(groups)
    middle = (len(groups) - 1) / 2
    for j, (name, values) in enumerate(groups.items()):
        values = values.tolist() if isinstance(values, Tensor) else list(values)
        ax.bar([i + (j - middle) * width for i in range(len(labels))], values, width, label=name)
    ax.set_xticks(range(len(labels)), list(labels))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _finish(ax, created, True, None)


def matrix_image(
    matrix: Tensor,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    figsize: tuple[float, float] = (4.5, 3.5),
    ax: plt.Axes | None = None,
) -> plt.Axes | None:
    """A 2-D tensor as an image with a colour bar: rows down the vertical axis, columns across."""
    matrix = torch.as_tensor(matrix).detach().float().cpu()
    if matrix.dim() != 2:
        raise ValueError(f"matrix has shape {tuple(matrix.shape)}; expected a 2-D (rows, columns) tensor")
    created = ax is None
    if created:
        _, ax = plt.subplots(figsize=figsize)
    image = ax.imshow(matrix.numpy(), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.figure.colorbar(image, ax=ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _finish(ax, created, False, None)


def ran_on(device: torch.device | str | None = None) -> str:
    """Where a page's code ran, for its opening: "one CPU thread", "2 CPU threads", or a GPU's name.

    `device` is the device the page computed on (None or a CPU device: only the CPU).
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        return f"a GPU ({torch.cuda.get_device_name(device)})"
    if device.type != "cpu":
        return f"the {device.type} device"
    threads = torch.get_num_threads()
    return "one CPU thread" if threads == 1 else f"{threads} CPU threads"
