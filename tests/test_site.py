"""The website as a reader gets it: every page of _toc.yml opened from disk in headless Chromium, offline.

The browser tests run on a built site named by COURSE_SITE (`make test-site` builds the book and sets it);
the plain unit-test run skips them and runs only the fast checks of the checking code itself.
Chromium is Debian's, installed here with apt-get when missing; where it cannot be, the browser tests
are skipped with the reason, except under CI, where that is a failure. Screenshots of every page, in
light and dark mode, go to the build folder (COURSE_SITE/../screenshots).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from check_site import SiteChecker, broken_links, install_chromium, problems, toc_pages  # noqa: E402
from figure_alt import caption_as_alt  # noqa: E402
from offline_assets import remote_loads  # noqa: E402

SITE = Path(os.environ["COURSE_SITE"]).resolve() if os.environ.get("COURSE_SITE") else None
TOC = Path(os.environ.get("COURSE_TOC", ROOT / "_toc.yml"))
PAGES = toc_pages(TOC)
CHAPTER = re.compile(r"book/(\d\d)_(\w+)")

needs_site = pytest.mark.skipif(
    SITE is None, reason="the browser test needs a built site: run `make test-site` (or set COURSE_SITE=_build/html)")


# --- the checking code itself (fast, no browser) ------------------------------------------------------

def test_remote_loads_flags_network_scripts_and_stylesheets():
    html = ('<script src="https://cdn.example.org/require.js"></script>'
            '<link rel="stylesheet" href="//fonts.example.org/a.css">'
            '<script src="_static/vendor/require.js"></script>'
            '<link rel="canonical" href="https://example.org/page.html">'
            '<a href="https://example.org">a link is not a load</a>')
    assert [t[:12] for t in remote_loads(html)] == ["<script src=", "<link rel=\"s"]


def test_broken_links_finds_missing_pages_and_fragments(tmp_path):
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1>')
    base = tmp_path.as_uri()
    links = [f"{base}/a.html#top", f"{base}/a.html#nowhere", f"{base}/b.html", "https://example.org/x"]
    found = broken_links(tmp_path, links)
    assert found == [f"{base}/a.html#nowhere (no element with id 'nowhere')", f"{base}/b.html (no such file)"]


def test_toc_pages_lists_root_and_every_part(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/00_intro\nparts:\n"
                   "  - caption: A\n    chapters:\n      - file: book/01_x.md\n"
                   "        sections:\n          - file: book/01_y\n"
                   "  - caption: B\n    chapters:\n      - file: exercises/01_x\n")
    assert toc_pages(toc) == ["book/00_intro", "book/01_x", "book/01_y", "exercises/01_x"]


def test_figure_caption_becomes_alt_text_unless_the_image_has_its_own():
    from docutils import nodes
    from docutils.utils import new_document
    from docutils.frontend import get_default_settings
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


# --- the built site in Chromium ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def checker():
    if not (SITE / "index.html").exists():
        pytest.fail(f"there is no built site at {SITE}: build it first (`make book`)")
    try:
        binary = install_chromium()
    except RuntimeError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but Chromium is unavailable: {error}")
        pytest.skip(f"Chromium is unavailable, so the browser test cannot run: {error}")
    site_checker = SiteChecker(SITE, SITE.parent / "screenshots", binary)
    yield site_checker
    site_checker.close()


@pytest.fixture(scope="session")
def reports(checker):
    """Each page is opened once; the tests below read its report."""
    cache = {}

    def get(page: str):
        if page not in cache:
            cache[page] = checker.check(page)
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
    headings in order, text contrast AA in light and dark mode, and every link into the site resolving."""
    report = reports(page)
    found = problems(report)
    assert not found, f"{page}.html:\n  " + "\n  ".join(found)
    assert len(report.screenshots) == 2 and all(Path(s).stat().st_size > 0 for s in report.screenshots)


@needs_site
@pytest.mark.parametrize("page", PAGES)
def test_widget_pages_also_show_a_static_figure(reports, page):
    """A saved widget shows its first state only; a figure of the same content keeps the page complete."""
    report = reports(page)
    if report.widget_views and not page.startswith(("exercises/", "solutions/")):
        html = (SITE / f"{page}.html").read_text()
        assert "<img" in html, f"{page}.html has {report.widget_views} widgets but no static figure"


@needs_site
@pytest.mark.parametrize("page", [p for p in PAGES if CHAPTER.fullmatch(p)])
def test_chapter_page_links_its_notebooks(reports, page):
    """In its own text, not only through the sidebar: a rendered page or a download of the .ipynb."""
    number, concept = CHAPTER.fullmatch(page).groups()
    links = {Path(unquote(urlsplit(link).path)).resolve() for link in reports(page).article_links
             if link.startswith("file:")}
    for folder in ("exercises", "solutions"):
        name = f"{folder}/{number}_{concept}"
        if name not in PAGES:
            continue
        targets = {(SITE / f"{name}.html").resolve(), (SITE / "_sources" / f"{name}.ipynb").resolve()}
        downloads = {p for p in links if p.name == f"{number}_{concept}.ipynb" and "_downloads" in p.parts}
        assert links & targets or downloads, f"{page}.html does not link {name}.ipynb"


@needs_site
def test_no_built_page_loads_from_the_network():
    offending = {str(p.relative_to(SITE)): remote_loads(p.read_text(errors="replace"))
                 for p in SITE.rglob("*.html")}
    offending = {page: tags for page, tags in offending.items() if tags}
    assert not offending, f"pages that load scripts or stylesheets over the network: {offending}"


@needs_site
def test_search_works_offline(checker):
    results = checker.search("attention")
    assert results, "the site's search page found nothing for 'attention' when opened from disk"
