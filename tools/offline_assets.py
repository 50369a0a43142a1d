"""Serve everything the website loads from the built site itself, so it reads the same with no network.

MathJax comes with the sphinx-mathjax-offline package. require.js and the Jupyter widgets embed manager
(which draws the saved ipywidgets of a page) come from the npm registry, pinned by version and checked
against the registry's sha512 integrity, into _build/web-assets/vendor/; the site serves them as
_static/vendor/. This file is both a command and the Sphinx extension that _config.yml loads:

    python tools/offline_assets.py           # fetch the pinned packages (once; later runs reuse them)
    python tools/offline_assets.py --check   # exit 1 if they are missing or differ from the pins

As an extension it fetches them when missing, adds them to the site, and after the build fails it
(as a warning, an error under -W) for any page that loads a script or stylesheet from the network.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "_build" / "web-assets"  # added to html_static_path: its vendor/ becomes _static/vendor/
VENDOR = ASSETS / "vendor"
STAMP = VENDOR / "versions.json"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # the registry's dist.integrity of this exact tarball
    files: tuple[str, ...]  # regular expressions over paths inside the tarball's package/ folder


PACKAGES = (
    Package(
        "requirejs",
        "2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        (r"require\.js",),
    ),
    # 1.0.x is the manager of ipywidgets 8; its bundle holds the base, controls and output widgets.
    Package(
        "@jupyter-widgets/html-manager",
        "1.0.15",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        (r"dist/embed-amd\.js", r"dist/[0-9a-f]+\.woff2?"),
    ),
)

# The bundle derives the address of its icon fonts as `${url.origin}${url.pathname}`; a page opened from
# disk has the origin "null", so the fonts would be looked for under "null/...". `url.href` (with query and
# fragment cleared) is the same address over http and the right one for file://.
PUBLIC_PATH = re.compile(r"(\w)\.p=`\$\{(\w)\.origin\}\$\{\2\.pathname\}`")
PUBLIC_PATH_FIX = r'\1.p=(\2.search="",\2.hash="",\2.href)'
PUBLIC_PATH_COUNT = 5  # occurrences in html-manager 1.0.15: a new version must be looked at again


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def wanted() -> dict[str, str]:
    return {p.name: p.version for p in PACKAGES}


def is_current() -> bool:
    try:
        return json.loads(STAMP.read_text()) == wanted()
    except (OSError, ValueError):
        return False


def npm_pack(package: Package, folder: Path) -> bytes:
    """Download one pinned tarball with npm (the registry's ordinary client) and check its integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "npm is not installed; it fetches require.js and the widget manager once "
            "(Debian: apt-get install npm), after which the build needs no network"
        )
    spec = f"{package.name}@{package.version}"
    result = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm pack {spec} failed:\n{result.stderr.strip()}")
    filename = json.loads(result.stdout)[0]["filename"]
    data = (folder / filename).read_bytes()
    if sri(data) != package.integrity:
        raise RuntimeError(
            f"{spec}: the tarball's integrity {sri(data)} is not the pinned {package.integrity}"
        )
    return data


def extract(package: Package, data: bytes, target: Path) -> list[str]:
    """Write the package's wanted files (flat) into target; return their names."""
    written, matched = [], set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            hits = {p for p in package.files if member.isfile() and re.fullmatch(f"package/{p}", member.name)}
            if not hits:
                continue
            matched |= hits
            name = Path(member.name).name
            content = tar.extractfile(member).read()
            if name == "embed-amd.js":
                text, count = PUBLIC_PATH.subn(PUBLIC_PATH_FIX, content.decode())
                if count != PUBLIC_PATH_COUNT:
                    raise RuntimeError(
                        f"{package.name}@{package.version}: expected {PUBLIC_PATH_COUNT} "
                        f"public-path expressions to fix in embed-amd.js, found {count}"
                    )
                content = text.encode()
            (target / name).write_bytes(content)
            written.append(name)
    missing = sorted(set(package.files) - matched)
    if missing:
        raise RuntimeError(f"{package.name}@{package.version} has no file matching {missing}")
    return written


def copy_glue(folder: Path) -> None:
    """The site's own widget glue goes beside the files it configures (not in _static/, every script
    of which Jupyter Book adds to every page)."""
    glue = Path(__file__).with_name("course-widgets.js").read_bytes()
    target = folder / "course-widgets.js"
    if not target.exists() or target.read_bytes() != glue:
        target.write_bytes(glue)


def fetch(force: bool = False) -> Path:
    """Make VENDOR hold the pinned files; return it. Does nothing when they are already there."""
    if is_current() and not force:
        return VENDOR
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "vendor"
        staging.mkdir()
        for package in PACKAGES:
            names = extract(package, npm_pack(package, Path(tmp)), staging)
            print(f"offline assets: {package.name}@{package.version}: {', '.join(sorted(names))}")
        copy_glue(staging)
        (staging / "versions.json").write_text(json.dumps(wanted(), indent=1) + "\n")
        if VENDOR.exists():
            shutil.rmtree(VENDOR)
        VENDOR.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), VENDOR)
    return VENDOR


# --- the Sphinx extension ---------------------------------------------------------------------------

REMOTE = re.compile(r"""<(script|link)\b[^>]*?\b(src|href)\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)
STYLESHEET_OR_SCRIPT = re.compile(
    r"""<script\b|<link\b[^>]*rel=["'][^"']*(stylesheet|preload|icon)""", re.IGNORECASE
)


def remote_loads(html: str) -> list[str]:
    """The <script src> and <link rel=stylesheet|preload|icon href> tags of a page that point off-site."""
    found = []
    for tag in re.findall(r"<(?:script|link)\b[^>]*>", html, flags=re.IGNORECASE):
        if REMOTE.match(tag) and STYLESHEET_OR_SCRIPT.match(tag):
            found.append(tag)
    return found


def _builder_inited(app) -> None:
    if app.builder.format != "html":
        return
    from sphinx.errors import ExtensionError

    try:
        fetch()
    except RuntimeError as error:
        raise ExtensionError(f"offline assets: {error}") from error
    copy_glue(VENDOR)
    if str(ASSETS) not in app.config.html_static_path:
        app.config.html_static_path.append(str(ASSETS))


def _page_assets(app, pagename, templatename, context, doctree) -> None:
    """Drop thebe's scripts when thebe is off (they name a CDN and are added twice, a SyntaxError in the
    console of every page), and any inline script added twice."""
    launch = (app.config.html_theme_options or {}).get("launch_buttons", {}) or {}
    thebe_on = bool(launch.get("thebe"))
    kept, bodies = [], set()
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body", "")
        filename = getattr(script, "filename", str(script)) or ""
        if not thebe_on and ("THEBE_JS_URL" in body or filename.endswith("sphinx-thebe.js")):
            continue
        if body and body in bodies:
            continue
        bodies.add(body)
        kept.append(script)
    context["script_files"] = kept
    if not thebe_on:
        context["css_files"] = [
            c
            for c in context.get("css_files", [])
            if not (getattr(c, "filename", str(c)) or "").endswith("sphinx-thebe.css")
        ]


def _build_finished(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for page in sorted(Path(app.outdir).rglob("*.html")):
        for tag in remote_loads(page.read_text(errors="replace")):
            logger.warning(
                f"{page.relative_to(app.outdir)} loads from the network, so it breaks offline: {tag[:200]}",
                type="offline",
                subtype="remote",
            )


def setup(app) -> dict:
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _page_assets, priority=900)
    app.connect("build-finished", _build_finished, priority=900)  # after the extensions copy their files
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="do not fetch; exit 1 unless the files are there"
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if the files are there")
    args = parser.parse_args(argv)
    if args.check:
        if is_current():
            print(f"offline assets are current in {VENDOR.relative_to(ROOT)}")
            return 0
        print(
            f"offline assets are missing or stale in {VENDOR.relative_to(ROOT)}: run tools/offline_assets.py",
            file=sys.stderr,
        )
        return 1
    try:
        print(f"offline assets in {fetch(force=args.force).relative_to(ROOT)}")
    except RuntimeError as error:
        print(f"offline assets: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
