"""Open the built website in headless Chromium, offline, and report what a reader would see go wrong.

Each page is opened from disk (file://), as a reader with no network opens it, with Chromium's host
resolver pointed nowhere. Chromium is driven through its DevTools protocol over a pipe, so nothing but
the Python standard library is needed. tests/test_site.py asserts on the reports; the command prints them:

    python tools/check_site.py _build/html            # every page of _toc.yml, screenshots in _build/screenshots
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags of a browser that must not touch the network: no background services, every host unresolvable.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--remote-debugging-pipe",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,900", "--force-device-scale-factor=1",
)

SCREENSHOT_MAX_HEIGHT = 12000  # pixels: the whole of most pages, the start of the longest


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
        raise RuntimeError("Chromium is not installed and installing it needs root (apt-get install chromium)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(prefix + command, capture_output=True, text=True, env=env, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
    if found := find_chromium():
        return found
    raise RuntimeError("apt-get installed chromium but no chromium binary is on PATH")


def _above_nine(fd: int) -> int:
    import fcntl
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium and a DevTools-protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends move above 9 first, so that putting them on 3 and 4 overwrites neither.
        to_browser_r, from_browser_w = (_above_nine(fd) for fd in (to_browser_r, from_browser_w))
        # bash moves our pipe ends onto the descriptors 3 and 4 that the pipe protocol reads and writes.
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", script, binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._lock = threading.Condition()
        self._replies: dict[int, dict] = {}
        self.events: dict[str, list[dict]] = {}  # by session id
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._lock:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.setdefault(message.get("sessionId", ""), []).append(message)
                    self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while ident not in self._replies:
                if self.process.poll() is not None:
                    raise RuntimeError(f"Chromium exited with code {self.process.returncode} during {method}")
                if not self._lock.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic()))) \
                        and time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, session: str, method: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for event in self.events.get(session, []):
                    if event["method"] == method:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(timeout=min(remaining, 0.5))

    def evaluate(self, session: str, expression: str, timeout: float = 30):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "timeout": int(timeout * 1000)},
                           session, timeout=timeout + 5)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


# Runs in the page once it has loaded: waits for MathJax and the widgets, then measures what was drawn.
PAGE_PROBE = (Path(__file__).with_name("check_site.js")).read_text()


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


class SiteChecker:
    def __init__(self, site: Path, screenshots: Path | None, binary: str) -> None:
        self.site = site.resolve()
        self.screenshots = screenshots
        if screenshots:
            screenshots.mkdir(parents=True, exist_ok=True)
        self.browser = Browser(binary)

    def close(self) -> None:
        self.browser.close()

    def open(self, url: str, load_timeout: float = 30) -> tuple[str, str]:
        target = self.browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.browser.send(f"{domain}.enable", session=session)
        self.browser.send("Page.navigate", {"url": url}, session)
        if self.browser.wait_event(session, "Page.loadEventFired", load_timeout) is None:
            raise TimeoutError(f"{url} did not finish loading in {load_timeout} s")
        return target, session

    def check(self, page: str) -> PageReport:
        start = time.perf_counter()
        report = PageReport(page)
        path = self.site / f"{page}.html"
        if not path.exists():
            report.broken_links.append(f"{path} (the page of a _toc.yml entry was not built)")
            return report
        target, session = self.open(path.as_uri())
        try:
            probe = self.browser.evaluate(session, PAGE_PROBE, timeout=60)
            for key in ("broken_images", "images_without_alt", "widget_images_without_alt", "math_total",
                        "math_untypeset", "math_errors", "widget_views", "widgets_unrendered",
                        "heading_problems", "contrast_problems", "links", "article_links"):
                setattr(report, key, probe[key])
            if self.screenshots:
                for mode in ("light", "dark"):
                    self.browser.evaluate(session, f"window.__courseSetMode({json.dumps(mode)})")
                    height = min(self.browser.evaluate(session, "document.documentElement.scrollHeight"),
                                 SCREENSHOT_MAX_HEIGHT)
                    shot = self.browser.send("Page.captureScreenshot", {
                        "format": "png", "captureBeyondViewport": True,
                        "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}}, session)["data"]
                    out = self.screenshots / f"{page.replace('/', '__')}.{mode}.png"
                    out.write_bytes(base64.b64decode(shot))
                    report.screenshots.append(str(out))
            time.sleep(0.2)  # let late console messages arrive
            self._collect_events(session, report)
        finally:
            self.browser.send("Target.closeTarget", {"targetId": target})
            self.browser.events.pop(session, None)
        report.broken_links = broken_links(self.site, report.links)
        report.seconds = time.perf_counter() - start
        return report

    def _collect_events(self, session: str, report: PageReport) -> None:
        for event in list(self.browser.events.get(session, [])):
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                report.console_errors.append(f"console.{params['type']}: {text[:300]}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text", "")
                report.console_errors.append(f"uncaught: {text[:300]}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                report.console_errors.append(f"{entry.get('source')}: {entry.get('text', '')[:200]} "
                                             f"{entry.get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "blob:", "about:")):
                    report.network_requests.append(url)
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                report.failed_loads.append(f"{params.get('type', '')}: {params.get('errorText', '')}")

    def search(self, query: str) -> list[str]:
        """The result titles that the site's own search page lists for the query."""
        target, session = self.open((self.site / "search.html").as_uri() + f"?q={query}")
        try:
            return self.browser.evaluate(session, """(async () => {
                for (let i = 0; i < 100; i++) {
                  const done = document.querySelector('#search-results p.search-summary, .search-summary');
                  if (done && done.textContent.trim()) break;
                  await new Promise(r => setTimeout(r, 100));
                }
                return [...document.querySelectorAll('#search-results ul.search li a')].map(a => a.textContent.trim());
            })()""")
        finally:
            self.browser.send("Target.closeTarget", {"targetId": target})


def problems(report: PageReport) -> list[str]:
    """Everything wrong with one page, one line each; empty when the page is fine."""
    out = [f"console error: {e}" for e in report.console_errors]
    out += [f"network request (the site must work offline): {u}" for u in report.network_requests]
    out += [f"image did not load: {i}" for i in report.broken_images]
    out += [f"image without alt text (give its cell `mystnb: image: alt:` or `mystnb: figure: caption:`): {i}"
            for i in report.images_without_alt]
    out += [f"math not typeset: {m}" for m in report.math_untypeset]
    out += [f"MathJax error: {m}" for m in report.math_errors]
    if report.widgets_unrendered:
        out.append(f"{report.widgets_unrendered} of {report.widget_views} widgets did not render")
    out += [f"heading order: {h}" for h in report.heading_problems]
    for mode, items in report.contrast_problems.items():
        out += [f"low contrast ({mode} mode): {c}" for c in items]
    out += [f"broken link: {b}" for b in report.broken_links]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            print(f"{'FAIL' if found else 'ok  '} {page} ({report.seconds:.1f} s, {report.math_total} math, "
                  f"{report.widget_views} widgets, {len(report.links)} links)", flush=True)
            if report.widget_images_without_alt:
                print(f"     exception: {report.widget_images_without_alt} image(s) drawn by widgets have no alt text")
            for line in found:
                print(f"     {line}")
    finally:
        checker.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
