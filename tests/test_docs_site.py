"""The documentation site builds strict, and its pages render in headless Chromium.

The site is built with ``mkdocs build --strict`` into a temporary directory (what ``scripts/docs.sh``
runs), served on 127.0.0.1, and opened in Debian's ``chromium`` through Playwright (no browser
download, as ``tests/test_browser.py``): the landing page and one API reference page must have their
title, the navigation and a rendered code block, and no request may leave 127.0.0.1 (no CDN, no web
fonts: the machines that read it may have no internet).  The pictures are redrawn by their script and
compared, by their text, with the committed ones.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

pytest.importorskip("mkdocs", reason='the docs extra is not installed: pip install -e ".[docs]"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, build.stderr
    return out


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="docs-site")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_every_public_module_has_a_reference_page(site: Path) -> None:
    public = sorted(p.stem for p in (ROOT / "src" / "scoped_clients").glob("*.py") if not p.stem.startswith("_"))
    for name in [*public, "scoped_clients"]:
        page = site / "api" / name / "index.html"
        assert page.is_file(), f"no API reference page for {name}: add docs/api/{name}.md and its nav entry"
        assert 'class="doc doc-contents' in page.read_text(), f"{page} has no rendered docstrings"


def test_the_package_page_lists_every_name_of_the_package() -> None:
    import scoped_clients

    page = (ROOT / "docs" / "api" / "scoped_clients.md").read_text()
    listed = re.findall(r"^ {8}- (\w+)$", page, re.M)
    assert sorted(listed) == sorted(scoped_clients.__all__), "docs/api/scoped_clients.md's members must be __all__"


def test_no_page_loads_anything_from_the_network(site: Path) -> None:
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)
    for page in site.rglob("*.html"):
        hits = [m.group(0) for m in remote.finditer(page.read_text())]
        # <link rel=...> to a remote page is a plain link, not a load; none of ours is a stylesheet or script
        assert not [h for h in hits if not h.lower().startswith("<link")], f"{page}: {hits}"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test.sh does it)")
def test_the_landing_page_and_a_reference_page_render_in_chromium(served: str) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    outside: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith(served) else outside.append(r.url))

            page.goto(served + "/", wait_until="networkidle")
            assert page.title() == "scoped_clients"
            assert page.locator("h1").first.inner_text().strip().startswith("scoped_clients")
            nav = page.locator("nav.md-nav--primary")
            for entry in ("Quickstart", "Web apps", "Agent frameworks", "The path of one call", "API"):
                assert nav.get_by_text(entry, exact=True).count() >= 1, entry
            code = page.locator("div.highlight pre code").first
            assert "ScopeMiddleware" in code.inner_text()
            assert code.locator("span").count() > 10  # highlighted: tokens in spans, not one plain string
            timeline = page.locator("img[src$='timeline.svg']")
            assert timeline.evaluate("img => img.complete && img.naturalWidth > 0")

            page.goto(served + "/api/scoped_clients/", wait_until="networkidle")
            assert page.title().startswith("scoped_clients - scoped_clients")
            assert page.locator("nav.md-nav--primary").get_by_text("scoped_clients.openai", exact=True).count() >= 1
            heading = page.locator("h2#scoped_clients.RequestScope, [id='scoped_clients.RequestScope']").first
            assert "RequestScope" in heading.inner_text()
            assert page.locator(".doc-signature pre code, .doc-signature code").count() > 0
            page.goto(served + "/api/tools/", wait_until="networkidle")
            assert page.locator("[id='scoped_clients.tools.run_command']").count() == 1
        finally:
            browser.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"


def test_the_pictures_are_the_scripts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason='the pictures need matplotlib: pip install -e ".[bench]"')
    subprocess.run(
        [sys.executable, str(ROOT / "docs" / "_scripts" / "diagrams.py"), str(tmp_path)], check=True, timeout=120
    )
    texts = re.compile(r"<text\b[^>]*>(.*?)</text>|<!-- (.*?) -->", re.S)
    for name in ("layers.svg", "timeline.svg"):
        drawn = sorted(filter(None, sum(texts.findall((tmp_path / name).read_text()), ())))
        committed = sorted(filter(None, sum(texts.findall((ROOT / "docs" / "images" / name).read_text()), ())))
        assert drawn, f"{name} has no text"
        assert drawn == committed, f"docs/images/{name} is not what docs/_scripts/diagrams.py draws: rerun it"
