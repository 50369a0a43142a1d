"""Sphinx extension: a figure's image with no alt text of its own takes the figure's caption as its alt.

Notebook outputs reach the page as images whose alt defaults to their file name, which tells a screen
reader nothing. A cell with `mystnb: image: alt: ...` keeps its own text; a cell with only
`mystnb: figure: caption: ...` gets the caption. tests/test_site.py fails a page whose images have neither.
"""

from __future__ import annotations

from docutils import nodes


def caption_as_alt(app, doctree: nodes.document) -> None:
    for figure in doctree.findall(nodes.figure):
        captions = [c for c in figure.children if isinstance(c, nodes.caption)]
        if not captions:
            continue
        text = " ".join(captions[0].astext().split())
        for image in figure.findall(nodes.image):
            if not image.get("alt"):
                image["alt"] = text


def setup(app) -> dict:
    app.connect("doctree-read", caption_as_alt)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
