"""End to end in headless Chromium: open the example chat page, start an answer, close the tab.

The local provider must see the disconnect and the scope report must say
``client_disconnected``.  Uses Debian's ``chromium`` (installed by
scripts/test.sh) driven by Playwright; no browser is downloaded.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scoped_clients import ScopeReport, add_report_sink
from scoped_clients.provider import LocalProvider
from scoped_clients.testing import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test.sh does it)")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def load_example() -> Any:
    path = Path(__file__).parent.parent / "examples" / "chat_page" / "app.py"
    spec = importlib.util.spec_from_file_location("chat_page_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_closing_the_tab_stops_the_llm(tmp_path: Path) -> None:
    reports: list[ScopeReport] = []
    arrived = threading.Event()

    def sink(report: ScopeReport) -> None:
        if report.scope == "chat" and report.cancel_reason is not None:
            reports.append(report)
            arrived.set()

    remove = add_report_sink(sink)
    example = load_example()
    try:
        with (
            LocalProvider(token_interval=0.05) as provider,
            serve(example.create_app(provider.url)) as port,
            playwright.sync_playwright() as p,
        ):
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # its own temporary profile
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.click("#send")
            page.wait_for_function("document.getElementById('answer').textContent.includes('tok3')")
            (log,) = provider.wait_for_requests(1)
            t_close = time.monotonic()
            page.close()  # the user closes the tab
            seen = log.wait_disconnect(timeout=10)
            assert arrived.wait(10)
            browser.close()
    finally:
        remove()
    assert seen >= t_close
    assert log.units_after(t_close) <= 1
    (report,) = reports
    assert report.cancel_reason == "client_disconnected"
    assert [c.outcome for c in report.calls] == ["aborted"]
    assert report.tokens_saved_max > 0
