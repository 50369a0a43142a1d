"""The website as a reader gets it: every page of _toc.yml opened from disk in headless Chromium, offline.

The browser tests run on a built site named by COURSE_SITE (`make test-site` builds the book and sets it);
the plain unit-test run skips them and runs only the fast checks of the checking code itself.
Chromium is Debian's, installed here with apt-get when missing, and driven by Playwright through its
executable path (Playwright never downloads a browser); where either cannot be had, the browser tests
are skipped with the reason, except under CI (CI=true), where that is a failure. Screenshots of every
page, in light and dark mode, go to the build folder (COURSE_SITE/../screenshots).

Every explorer of every page is worked as a reader works it (tools/check_site.py: each control moved to
each value, the drawing shown must name them); code blocks and outputs must not scroll sideways; the
site's search must find a chapter from disk. The count of checks made is printed at the end.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from check_site import (
    SiteChecker,
    broken_links,
    expected_state,
    install_chromium,
    launch,
    overflow_problems,
    problems,
    sample_positions,
    toc_pages,
)
from figure_alt import caption_as_alt
from helpers import ROOT
from offline_assets import remote_loads

SITE = Path(os.environ["COURSE_SITE"]).resolve() if os.environ.get("COURSE_SITE") else None
TOC = Path(os.environ.get("COURSE_TOC", ROOT / "_toc.yml"))
PAGES = toc_pages(TOC)
CHAPTER = re.compile(r"book/(\d\d)_(\w+)")

needs_site = pytest.mark.skipif(
    SITE is None,
    reason="the browser test needs a built site: run `make test-site` (or set COURSE_SITE=_build/html)",
)


# --- the checking code itself (fast, no browser) ------------------------------------------------------


def test_remote_loads_flags_network_scripts_and_stylesheets():
    html = (
        '<script src="https://cdn.example.org/require.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/a.css">'
        '<script src="_static/vendor/require.js"></script>'
        '<link rel="canonical" href="https://example.org/page.html">'
        '<a href="https://example.org">a link is not a load</a>'
    )
    assert [t[:12] for t in remote_loads(html)] == ["<script src=", '<link rel="s']


def test_broken_links_finds_missing_pages_and_fragments(tmp_path):
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1>')
    base = tmp_path.as_uri()
    links = [f"{base}/a.html#top", f"{base}/a.html#nowhere", f"{base}/b.html", "https://example.org/x"]
    found = broken_links(tmp_path, links)
    assert found == [f"{base}/a.html#nowhere (no element with id 'nowhere')", f"{base}/b.html (no such file)"]


def test_toc_pages_lists_root_and_every_part(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: book/00_intro\nparts:\n"
        "  - caption: A\n    chapters:\n      - file: book/01_x.md\n"
        "        sections:\n          - file: book/01_y\n"
        "  - caption: B\n    chapters:\n      - file: exercises/01_x\n"
    )
    assert toc_pages(toc) == ["book/00_intro", "book/01_x", "book/01_y", "exercises/01_x"]


def test_figure_caption_becomes_alt_text_unless_the_image_has_its_own():
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.utils import new_document

    document = new_document("page", get_default_settings())
    bare, own = nodes.image(uri="a.png"), nodes.image(uri="b.png", alt="two heads")
    for image, text in ((bare, "Attention  weights\nof head 0."), (own, "Caption.")):
        document += nodes.figure("", image, nodes.caption(text=text))
    loose = nodes.image(uri="c.png")
    document += loose
    caption_as_alt(None, document)
    assert (bare["alt"], own["alt"], loose.get("alt")) == ("Attention weights of head 0.", "two heads", None)


def test_toc_lists_the_glossary_and_references():
    assert "book/glossary" in PAGES and "book/references" in PAGES


def test_explorer_state_is_read_back_and_long_controls_are_sampled():
    controls = [{"name": "model", "value": "CNN (3 layers, kernel 3)"}, {"name": "cut", "value": "top-k 3"}]
    assert expected_state(controls) == "model=CNN (3 layers, kernel 3), cut=top-k 3"
    assert sample_positions(5, 64) == [0, 1, 2, 3, 4]
    long = sample_positions(200, 9)
    assert {0, 99, 199} <= set(long) and len(long) <= 10


def test_playwright_is_a_test_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    test_extra = text.split("test = [", 1)[1].split("]", 1)[0]
    assert '"playwright' in test_extra


# --- the built site in Chromium ----------------------------------------------------------------------


def chromium_or_skip() -> str:
    """Debian's Chromium and the playwright package, or a skip with the reason (a failure under CI)."""

    def unavailable(why: str):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the browser test, but {why}")
        pytest.skip(f"the browser test cannot run: {why}")

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        unavailable(f"the playwright package is not installed ({error}); pip install -e '.[test]'")
    try:
        return install_chromium()
    except RuntimeError as error:
        unavailable(f"Chromium is unavailable: {error}")


CHECKS = {
    "pages": 0,
    "explorer moves": 0,
    "pages checked for sideways scrolling (light and dark)": 0,
    "search queries": 0,
    "links": 0,
}


@pytest.fixture(scope="module")
def browser():
    """One Playwright and one Chromium for this file (Playwright's sync API allows one per thread).

    Stopped when the file's tests end: while it runs, the thread has a running asyncio loop, which
    would break any later test that calls asyncio.run()."""
    playwright, launched = launch(chromium_or_skip())
    yield launched
    try:
        launched.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def checker(browser):
    if not (SITE / "index.html").exists():
        pytest.fail(f"there is no built site at {SITE}: build it first (`make book`)")
    site_checker = SiteChecker(SITE, SITE.parent / "screenshots", browser=browser)
    yield site_checker
    site_checker.close()
    if CHECKS["pages"]:
        print("\nbrowser checks made: " + ", ".join(f"{n} {what}" for what, n in CHECKS.items()))


@pytest.fixture(scope="module")
def reports(checker):
    """Each page is opened once; the tests below read its report."""
    cache = {}

    def get(page: str):
        if page not in cache:
            cache[page] = report = checker.check(page)
            CHECKS["pages"] += 1
            CHECKS["explorer moves"] += report.explorer_checks
            CHECKS["links"] += len(set(report.links))
        return cache[page]

    return get


@needs_site
def test_site_is_built_with_every_toc_page():
    missing = [page for page in PAGES if not (SITE / f"{page}.html").exists()]
    assert not missing, f"pages of {TOC.name} missing from {SITE}: {missing}"


@needs_site
@pytest.mark.parametrize("page", PAGES)
def test_page_reads_offline_in_chromium(reports, page):
    """No console error, no network request, images loaded with alt text, math typeset, widgets drawn,
    headings in order, text contrast AA in light and dark mode, every link into the site resolving, and
    every explorer showing the drawing its controls name after each move."""
    report = reports(page)
    found = problems(report)
    assert not found, f"{page}.html:\n  " + "\n  ".join(found)
    assert len(report.screenshots) == 2 and all(Path(s).stat().st_size > 0 for s in report.screenshots)


@needs_site
@pytest.mark.parametrize("page", [p for p in PAGES if CHAPTER.fullmatch(p) and not p.startswith("book/00")])
def test_every_chapter_has_an_explorer_that_reacts(reports, page):
    """Chapters 1 to 7 each have at least one explorer, and its controls were moved and checked."""
    report = reports(page)
    assert report.explorer_checks > 0, f"{page}.html has no explorer (companion.viz.explorer) to move"
    assert not report.explorer_failures, "\n".join(report.explorer_failures)


@needs_site
@pytest.mark.parametrize("page", PAGES)
def test_code_and_outputs_do_not_scroll_sideways(reports, page):
    """Every code block and output fits the content column (about 88 characters), light and dark."""
    report = reports(page)
    CHECKS["pages checked for sideways scrolling (light and dark)"] += 1
    found = overflow_problems(report)
    assert not found, f"{page}.html:\n  " + "\n  ".join(found)


@needs_site
@pytest.mark.parametrize("page", PAGES)
def test_widget_pages_also_show_a_static_figure(reports, page):
    """A figure of the same content keeps the page complete where widgets cannot draw (print, no script)."""
    report = reports(page)
    if report.widget_views and not page.startswith(("exercises/", "solutions/")):
        html = (SITE / f"{page}.html").read_text()
        assert "<img" in html, f"{page}.html has {report.widget_views} widgets but no static figure"


@needs_site
@pytest.mark.parametrize("page", [p for p in PAGES if CHAPTER.fullmatch(p)])
def test_chapter_page_links_its_notebooks(reports, page):
    """In its own text, not only through the sidebar: a rendered page or a download of the .ipynb."""
    number, concept = CHAPTER.fullmatch(page).groups()
    links = {
        Path(unquote(urlsplit(link).path)).resolve()
        for link in reports(page).article_links
        if link.startswith("file:")
    }
    for folder in ("exercises", "solutions"):
        name = f"{folder}/{number}_{concept}"
        if name not in PAGES:
            continue
        targets = {(SITE / f"{name}.html").resolve(), (SITE / "_sources" / f"{name}.ipynb").resolve()}
        downloads = {p for p in links if p.name == f"{number}_{concept}.ipynb" and "_downloads" in p.parts}
        assert links & targets or downloads, f"{page}.html does not link {name}.ipynb"


@needs_site
def test_no_built_page_loads_from_the_network():
    offending = {
        str(p.relative_to(SITE)): remote_loads(p.read_text(errors="replace")) for p in SITE.rglob("*.html")
    }
    offending = {page: tags for page, tags in offending.items() if tags}
    assert not offending, f"pages that load scripts or stylesheets over the network: {offending}"


@needs_site
def test_search_finds_the_kv_cache_chapter_from_disk(checker):
    """The site's own search, opened from disk as a reader with no server opens it: typing "KV cache"
    lists chapter 6, and nothing logs an error (result summaries, which a file:// page cannot fetch,
    are off: html_show_search_summary in _config.yml)."""
    results, errors = checker.search("KV cache")
    CHECKS["search queries"] += 1
    pages = {Path(unquote(urlsplit(href).path)).resolve() for _, href in results}
    assert (SITE / "book" / "06_decoding.html").resolve() in pages, f"search for 'KV cache' listed {results}"
    assert not errors, "the search page logged:\n  " + "\n  ".join(errors)


# --- the checks themselves fire (a browser, but no built book) ----------------------------------------

WIDE_PAGE = """<!doctype html><html><head><style>
article { width: 400px } pre { overflow-x: auto; font: 14px monospace }
</style></head><body><article>
<div class="cell"><div class="cell_input"><div class="highlight"><pre>{code}</pre></div></div>
<div class="cell_output"><div class="output"><pre>short output</pre></div></div></div>
</article></body></html>"""


@pytest.mark.parametrize("width, wide", [(30, False), (120, True)])
def test_sideways_scroll_check_fires_on_a_wide_cell(browser, tmp_path, width, wide):
    (tmp_path / "index.html").write_text(WIDE_PAGE.replace("{code}", "x = " + "1" * (width - 4)))
    checker = SiteChecker(tmp_path, None, browser=browser)
    try:
        report = checker.check("index")
    finally:
        checker.close()
    found = overflow_problems(report)
    assert bool(found) == wide, found
    if wide:
        assert len(found) == 2 and all("code" in f and '"x = 111' in f for f in found)  # light and dark


@needs_site
def test_explorer_check_fails_when_the_drawing_shown_is_not_the_one_named(browser, tmp_path):
    """A copy of a built chapter whose drawings' states are swapped must fail the explorer check."""
    page = "book/03_positions"
    html = (SITE / f"{page}.html").read_text()
    # In the saved widget state each drawing reads data-explorer-state=\"name=value, ...\" (JSON-escaped).
    tokens = re.findall(r'data-explorer-state=\\"[^"\\]+\\"', html)
    assert len(set(tokens)) > 1, f"{page}.html has no explorer to tamper with"
    # Every drawing takes the next one's label (the state's order in the file is not the order the
    # controls visit), so whichever state the check reaches, what it shows is not what it names.
    states = list(dict.fromkeys(tokens))
    swapped = html
    for i, state in enumerate(states):
        swapped = swapped.replace(state, f"\0{i}\0")
    for i in range(len(states)):
        swapped = swapped.replace(f"\0{i}\0", states[(i + 1) % len(states)])
    for entry in SITE.iterdir():  # the copy sees the site's files through links
        if entry.name != "book":
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "book").mkdir()
    (tmp_path / f"{page}.html").write_text(swapped)
    checker = SiteChecker(tmp_path, None, browser=browser)
    try:
        report = checker.check(page)
    finally:
        checker.close()
    assert report.explorer_checks > 0 and report.explorer_failures, report.explorer_failures
