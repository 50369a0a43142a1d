"""Plots the chapters share: attention heatmaps, an interactive attention explorer, loss curves.

Chapter 2 (attention) introduces the heatmap and the explorer.
"""
from __future__ import annotations

from typing import Sequence

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
        raise ValueError(f"weights has shape {tuple(weights.shape)}; pass one (q_pos, k_pos) matrix, e.g. weights[0, head]")
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


def attention_explorer(weights: Tensor, tokens: Sequence[str]):
    """An ipywidgets explorer of (layers, heads, q_pos, k_pos) weights: pick a layer, a head and a query
    and see which keys it attends to. Needs a live kernel to react; returns the widget."""
    import ipywidgets as widgets

    weights = weights.detach().float().cpu()
    if weights.dim() != 4:
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected (layers, heads, q_pos, k_pos)")
    layers, heads, q_len, k_len = weights.shape
    if len(tokens) != k_len:
        raise ValueError(f"tokens has {len(tokens)} entries but the weights have {k_len} key positions")
    output = widgets.Output()
    layer = widgets.IntSlider(0, 0, layers - 1, description="layer")
    head = widgets.IntSlider(0, 0, heads - 1, description="head")
    query = widgets.IntSlider(q_len - 1, 0, q_len - 1, description="query")

    def redraw(_change=None) -> None:
        row = weights[layer.value, head.value, query.value]
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 2.4))
            ax.bar(range(k_len), row, color="tab:blue")
            ax.set_xticks(range(k_len), labels=list(tokens), rotation=90)
            ax.set_ylabel("weight")
            ax.set_ylim(0, 1)
            ax.set_title(f"layer {layer.value}, head {head.value}: query {query.value} ({tokens[query.value]!r}) attends to")
            plt.show()

    for slider in (layer, head, query):
        slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([layer, head, query]), output])


def loss_curves(curves: dict[str, Sequence[float]], *, xlabel: str = "step", ylabel: str = "loss (nats/token)",
                title: str = "", ax: plt.Axes | None = None, log: bool = False) -> plt.Axes:
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

    Uses the readable (non-fused) path only for this call, so the weights exist.
    """
    from .attention import MultiHeadAttention

    modules = [m for name, m in model.named_modules() if isinstance(m, MultiHeadAttention) and "cross" not in name]
    if not modules:
        raise ValueError("the model has no MultiHeadAttention layers")
    try:
        for m in modules:
            m.record_weights = True
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for m in modules:
            m.record_weights = False
    return torch.stack([m.last_weights for m in modules])
