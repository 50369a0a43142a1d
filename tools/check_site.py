"""Open the built website in headless Chromium, offline, and report what a reader would see go wrong.

Each page is opened from disk (file://), as a reader with no network opens it, with Chromium's host
resolver pointed nowhere. Chromium is Debian's (/usr/bin/chromium, installed with apt-get when missing),
driven by Playwright through its executable path: Playwright never downloads a browser of its own.
tests/test_site.py asserts on the reports; the command prints them:

    python tools/check_site.py _build/html            # every page of _toc.yml, screenshots in _build/screenshots

Besides what tools/check_site.js measures in the page (math, widgets, images and alt text, headings,
contrast, links), every explorer (companion.viz.explorer) is worked as a reader works it: each control
is moved to each of its values with the keyboard or the mouse, and the drawing then visible must be the
one whose data-explorer-state names every control's value. Code blocks and outputs must not scroll
sideways, in light and in dark mode.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags of a browser that must not touch the network: no background services, every host unresolvable.
# (Playwright adds its own: headless, the DevTools pipe, a throw-away profile.)
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--force-device-scale-factor=1",
)
VIEWPORT = {"width": 1280, "height": 900}
SCREENSHOT_MAX_HEIGHT = 12000  # pixels: the whole of most pages, the start of the longest
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def install_chromium() -> str:
    """Install Debian's chromium with apt-get (as root); return the binary or say why it could not."""
    if found := find_chromium():
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("Chromium is not installed and there is no apt-get to install it with")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        raise RuntimeError(
            "Chromium is not installed and installing it needs root (apt-get install chromium)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(prefix + command, capture_output=True, text=True, env=env, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
    if found := find_chromium():
        return found
    raise RuntimeError("apt-get installed chromium but no chromium binary is on PATH")


# Runs in the page once it has loaded: waits for MathJax and the widgets, then measures what was drawn.
PAGE_PROBE = (Path(__file__).with_name("check_site.js")).read_text()

# Code blocks and outputs whose content is wider than the box that shows it (a sideways scroll bar).
# The colour mode is set first: light and dark mode differ in fonts' fallbacks and in borders.
OVERFLOW_PROBE = """(mode) => {
  document.documentElement.dataset.theme = mode;
  document.documentElement.dataset.mode = mode;
  const found = [];
  const boxes = document.querySelectorAll(
    "div.highlight pre, .cell_output pre, .cell_output > .output, .cell_output .widget-subarea, pre.literal-block");
  for (const el of boxes) {
    if (!el.getClientRects().length || el.clientWidth === 0) continue;
    if (el.scrollWidth <= el.clientWidth + 1) continue;
    const cell = el.closest(".cell");
    const code = cell && cell.querySelector(".cell_input pre");
    const where = code ? `the cell starting "${code.textContent.trim().split("\\n")[0].slice(0, 60)}"`
                       : `"${el.textContent.trim().split("\\n")[0].slice(0, 60)}"`;
    const kind = el.closest(".cell_input") ? "code" : el.closest(".cell_output") ? "output" : "block";
    found.push(`${kind} ${el.scrollWidth}px wide in a ${el.clientWidth}px box: ${where}`);
  }
  return found;
}"""

# The controls of one explorer as the page shows them: name (the description), kind, current value
# (a slider's readout, the pressed button) and, for buttons, every option.
EXPLORER_CONTROLS = """(root) => [...root.querySelectorAll(".widget-slider, .widget-toggle-buttons")].map((c) => {
  const slider = c.classList.contains("widget-slider");
  const handle = slider && c.querySelector(".noUi-handle");
  const pressed = c.querySelector(".widget-toggle-button.mod-active");
  return {
    name: (c.querySelector(".widget-label") || {textContent: ""}).textContent.trim(),
    kind: slider ? "slider" : "buttons",
    value: slider ? c.querySelector(".widget-readout").textContent.trim()
                  : (pressed ? pressed.textContent.trim() : null),
    index: slider ? Number(handle.getAttribute("aria-valuenow")) : null,
    count: slider ? Number(handle.getAttribute("aria-valuemax")) - Number(handle.getAttribute("aria-valuemin")) + 1
                  : c.querySelectorAll(".widget-toggle-button").length,
    options: slider ? null : [...c.querySelectorAll(".widget-toggle-button")].map((b) => b.textContent.trim()),
  };
})"""

# The data-explorer-state of every drawing of the explorer that a reader can see now.
EXPLORER_SHOWN = """(root) => [...root.querySelectorAll("img[data-explorer-state]")]
  .filter((img) => img.getClientRects().length && img.getBoundingClientRect().height > 0)
  .map((img) => img.dataset.explorerState)"""


def expected_state(controls: list[dict]) -> str:
    """The data-explorer-state that the controls' current values name: 'layer=0, head=1', in the
    order of the controls (the format companion.viz writes; values may hold commas and spaces)."""
    return ", ".join(f"{c['name']}={c['value']}" for c in controls)


def sample_positions(count: int, most: int) -> list[int]:
    """Every position of a control with at most `most` values; else first, last, middle and an even spread."""
    if count <= most:
        return list(range(count))
    spread = {round(i * (count - 1) / (most - 1)) for i in range(most)}
    return sorted(spread | {0, count - 1, (count - 1) // 2})


@dataclass
class PageReport:
    page: str
    console_errors: list[str] = field(default_factory=list)
    network_requests: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images_without_alt: list[str] = field(default_factory=list)
    widget_images_without_alt: int = 0  # an exception: see check_site.js
    math_total: int = 0
    math_untypeset: list[str] = field(default_factory=list)
    math_errors: list[str] = field(default_factory=list)
    widget_views: int = 0
    widgets_unrendered: int = 0
    heading_problems: list[str] = field(default_factory=list)
    contrast_problems: dict[str, list[str]] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # every href, resolved by the browser
    article_links: list[str] = field(default_factory=list)  # those in the page's own text
    broken_links: list[str] = field(default_factory=list)
    overflow: dict[str, list[str]] = field(default_factory=dict)  # mode -> boxes that scroll sideways
    explorer_checks: int = 0  # control moves checked against the drawing shown
    explorer_failures: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)
    seconds: float = 0.0


def toc_pages(toc: Path) -> list[str]:
    """The documents of a Jupyter Book _toc.yml, in order (root first), as paths without suffix."""
    data = yaml.safe_load(toc.read_text())
    pages = [data["root"]]

    def walk(entries) -> None:
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("chapters"))
            walk(entry.get("sections"))
            for part in entry.get("parts", []) or []:
                walk(part.get("chapters"))

    for part in data.get("parts", []) or []:
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return [re.sub(r"\.(md|ipynb|rst)$", "", page) for page in pages]


_ids_cache: dict[Path, set[str]] = {}


def page_ids(path: Path) -> set[str]:
    if path not in _ids_cache:
        text = path.read_text(errors="replace")
        _ids_cache[path] = set(re.findall(r"""\b(?:id|name)\s*=\s*["']([^"']+)["']""", text))
    return _ids_cache[path]


def broken_links(site: Path, links: list[str]) -> list[str]:
    """Links into the site whose file is missing, or whose #fragment names no element of that page."""
    broken = []
    root = site.resolve()
    for link in sorted(set(links)):
        parts = urlsplit(link)
        if parts.scheme != "file":
            continue
        target = Path(unquote(parts.path))
        if not target.resolve().is_relative_to(root):
            broken.append(f"{link} (outside the site)")
        elif target.is_dir():
            if not (target / "index.html").exists():
                broken.append(f"{link} (a folder with no index.html)")
        elif not target.exists():
            broken.append(f"{link} (no such file)")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in page_ids(target):
            broken.append(f"{link} (no element with id '{unquote(parts.fragment)}')")
    return broken


def launch(binary: str):
    """Start Playwright and launch `binary` headless and offline; returns (playwright, browser)."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        return playwright, playwright.chromium.launch(
            executable_path=binary, args=list(CHROMIUM_FLAGS), headless=True, timeout=60_000
        )
    except Exception:
        playwright.stop()
        raise


class SiteChecker:
    """One headless Chromium, driven by Playwright, that opens pages of the built site and reports on them."""

    def __init__(
        self,
        site: Path,
        screenshots: Path | None,
        binary: str | None = None,
        *,
        browser=None,
        sample: int = 64,
    ) -> None:
        """binary: the Chromium to launch; or browser: a Playwright Browser already launched (one
        Playwright per thread, so several checkers share one), which close() leaves open."""
        self.site = site.resolve()
        self.screenshots = screenshots
        self.sample = sample  # the most values of one control that are visited (all of them up to this)
        if screenshots:
            screenshots.mkdir(parents=True, exist_ok=True)
        self._playwright = None
        if browser is None:
            self._playwright, browser = launch(binary)
        self.browser = browser
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.context.set_default_timeout(30_000)

    def close(self) -> None:
        self.context.close()
        if self._playwright is not None:
            try:
                self.browser.close()
            finally:
                self._playwright.stop()

    def open(self, url: str, report: PageReport):
        """A new tab at url, loaded, with its console errors and network requests going into report."""
        page = self.context.new_page()

        def on_console(message) -> None:
            if message.type in ("error", "assert"):
                where = message.location.get("url", "") if message.location else ""
                report.console_errors.append(f"console.{message.type}: {message.text[:300]} {where}".strip())

        def on_request(request) -> None:
            if not request.url.startswith(LOCAL_SCHEMES):
                report.network_requests.append(request.url)

        page.on("console", on_console)
        page.on("pageerror", lambda error: report.console_errors.append(f"uncaught: {str(error)[:300]}"))
        page.on("request", on_request)
        page.on(
            "requestfailed",
            lambda request: report.failed_loads.append(
                f"{request.resource_type}: {request.failure} {request.url[:120]}"
            ),
        )
        page.goto(url, wait_until="load")
        return page

    def check(self, page_name: str, *, explorers: bool = True) -> PageReport:
        start = time.perf_counter()
        report = PageReport(page_name)
        path = self.site / f"{page_name}.html"
        if not path.exists():
            report.broken_links.append(f"{path} (the page of a _toc.yml entry was not built)")
            return report
        page = self.open(path.as_uri(), report)
        try:
            probe = page.evaluate(PAGE_PROBE)
            for key in (
                "broken_images",
                "images_without_alt",
                "widget_images_without_alt",
                "math_total",
                "math_untypeset",
                "math_errors",
                "widget_views",
                "widgets_unrendered",
                "heading_problems",
                "contrast_problems",
                "links",
                "article_links",
            ):
                setattr(report, key, probe[key])
            for mode in ("light", "dark"):
                found = page.evaluate(OVERFLOW_PROBE, mode)
                if found:
                    report.overflow[mode] = found
                if self.screenshots:
                    height = min(
                        page.evaluate("document.documentElement.scrollHeight"), SCREENSHOT_MAX_HEIGHT
                    )
                    out = self.screenshots / f"{page_name.replace('/', '__')}.{mode}.png"
                    page.screenshot(
                        path=str(out),
                        full_page=True,
                        animations="disabled",
                        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height},
                    )
                    report.screenshots.append(str(out))
            page.evaluate("window.__courseSetMode('light')")
            if explorers:
                self.work_explorers(page, report)
            page.wait_for_timeout(200)  # let late console messages arrive
        finally:
            page.close()
        report.broken_links = broken_links(self.site, report.links)
        report.seconds = time.perf_counter() - start
        return report

    def work_explorers(self, page, report: PageReport) -> None:
        """Move every control of every explorer to each of its values (a spread of them past `sample`),
        as a reader does (arrow keys on a slider, a click on a button); after each move the visible
        drawing must be the one whose data-explorer-state names the value of every control."""
        roots = page.locator(".course-explorer")
        for number in range(roots.count()):
            root = roots.nth(number)
            root.scroll_into_view_if_needed()
            controls = root.evaluate(EXPLORER_CONTROLS)
            label = f"explorer {number + 1} ({', '.join(c['name'] for c in controls)})"
            if not controls:
                report.explorer_failures.append(f"{label}: no control was drawn")
                continue
            for position, control in enumerate(controls):
                name = control["name"]
                box = root.locator(".widget-slider, .widget-toggle-buttons").nth(position)
                if control["kind"] == "slider":
                    handle = box.locator(".noUi-handle")
                    handle.focus()
                    targets = sample_positions(control["count"], self.sample)
                    for target in targets:
                        now = root.evaluate(EXPLORER_CONTROLS)[position]["index"]
                        key = "ArrowRight" if target > now else "ArrowLeft"
                        for _ in range(abs(target - now)):
                            handle.press(key)
                        self._expect(root, report, label, name, index=target)
                else:
                    for option in control["options"]:
                        box.locator(".widget-toggle-button", has_text=option).first.click()
                        self._expect(root, report, label, name, value=option)

    def _expect(
        self,
        root,
        report: PageReport,
        label: str,
        name: str,
        *,
        index: int | None = None,
        value: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Wait until control `name` sits at index/value and one drawing is visible whose state names
        every control's value; record one check, and a failure if that does not happen in time."""
        deadline = time.monotonic() + timeout
        while True:
            controls = root.evaluate(EXPLORER_CONTROLS)
            shown = root.evaluate(EXPLORER_SHOWN)
            moved = next(c for c in controls if c["name"] == name)
            reached = (moved["index"] == index) if index is not None else (moved["value"] == value)
            wanted = expected_state(controls)
            ok = reached and shown == [wanted]
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        report.explorer_checks += 1
        if not ok:
            where = f"position {index}" if index is not None else repr(value)
            report.explorer_failures.append(
                f"{label}: {name} moved to {where} (control reads {moved['value']!r}), "
                f"controls say {wanted!r}, visible drawing(s): {shown}"
            )

    def search(self, query: str, base: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
        """The (title, address) results that the site's own search page lists for the query, and the
        console errors it logged. base: the site's address (default: the built folder, from disk)."""
        report = PageReport("search")
        url = (base.rstrip("/") if base else self.site.as_uri()) + f"/search.html?q={quote(query)}"
        page = self.open(url, report)
        try:
            page.wait_for_function(
                """() => {
                const summary = document.querySelector("#search-results .search-summary, .search-summary");
                return summary && summary.textContent.trim() && !/Searching|Preparing/.test(summary.textContent);
            }""",
                timeout=20_000,
            )
            results = page.eval_on_selector_all(
                "#search-results ul.search li a", "links => links.map((a) => [a.textContent.trim(), a.href])"
            )
            page.wait_for_timeout(300)
        finally:
            page.close()
        return [tuple(r) for r in results], report.console_errors + [
            f"network request: {u}" for u in report.network_requests
        ]


def problems(report: PageReport) -> list[str]:
    """Everything wrong with one page, one line each; empty when the page is fine."""
    out = [f"console error: {e}" for e in report.console_errors]
    out += [f"network request (the site must work offline): {u}" for u in report.network_requests]
    out += [f"image did not load: {i}" for i in report.broken_images]
    out += [
        f"image without alt text (give its cell `mystnb: image: alt:` or `mystnb: figure: caption:`): {i}"
        for i in report.images_without_alt
    ]
    out += [f"math not typeset: {m}" for m in report.math_untypeset]
    out += [f"MathJax error: {m}" for m in report.math_errors]
    if report.widgets_unrendered:
        out.append(f"{report.widgets_unrendered} of {report.widget_views} widgets did not render")
    out += [f"heading order: {h}" for h in report.heading_problems]
    for mode, items in report.contrast_problems.items():
        out += [f"low contrast ({mode} mode): {c}" for c in items]
    out += [f"broken link: {b}" for b in report.broken_links]
    out += [f"explorer: {f}" for f in report.explorer_failures]
    return out


def overflow_problems(report: PageReport) -> list[str]:
    """Code blocks and outputs that scroll sideways, per colour mode (a separate check: see issue 17)."""
    return [
        f"scrolls sideways ({mode} mode): {item}" for mode, items in report.overflow.items() for item in items
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("site", type=Path, nargs="?", default=ROOT / "_build" / "html")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    parser.add_argument("--screenshots", type=Path, default=None, help="default: SITE/../screenshots")
    args = parser.parse_args(argv)
    binary = install_chromium()
    checker = SiteChecker(args.site, args.screenshots or args.site.resolve().parent / "screenshots", binary)
    failed = 0
    try:
        for page in toc_pages(args.toc):
            report = checker.check(page)
            found = problems(report)
            failed += bool(found)
            found += overflow_problems(report)
            print(
                f"{'FAIL' if found else 'ok  '} {page} ({report.seconds:.1f} s, {report.math_total} math, "
                f"{report.widget_views} widgets, {report.explorer_checks} explorer moves, "
                f"{len(report.links)} links)",
                flush=True,
            )
            if report.widget_images_without_alt:
                print(
                    f"     exception: {report.widget_images_without_alt} image(s) drawn by widgets have no alt text"
                )
            for line in found:
                print(f"     {line}")
    finally:
        checker.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
