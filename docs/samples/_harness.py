"""What the docs' samples share to run against the embedded provider (never shown in the docs).

``tests/test_docs.py`` sets the vendors' environment variables to the provider before it imports a
sample (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ``CO_API_URL``, ``QDRANT_URL``,
``GOOGLE_GEMINI_BASE_URL``, the API keys), then
calls the sample's ``check()``, which drives it and asserts what the provider observed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from scoped_clients import ScopeReport, add_report_sink
from scoped_clients.provider import LocalProvider, RequestLog


class Reports:
    """The reports of the scopes that end while it is installed."""

    def __init__(self) -> None:
        self.items: list[ScopeReport] = []
        self._arrived = threading.Condition()

    def __call__(self, report: ScopeReport) -> None:
        with self._arrived:
            self.items.append(report)
            self._arrived.notify_all()

    def wait(self, n: int = 1, timeout: float = 10) -> ScopeReport:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.items) >= n, timeout):
                raise AssertionError(f"{n} scope report(s) expected, {len(self.items)} arrived")
            return self.items[n - 1]

    def of(self, scope_id: str, timeout: float = 10) -> ScopeReport:
        """The report of the scope with that id."""

        def found() -> ScopeReport | None:
            return next((r for r in self.items if r.scope_id == scope_id), None)

        with self._arrived:
            if not self._arrived.wait_for(found, timeout):
                raise AssertionError(f"no report of scope {scope_id!r}")
            return found()  # type: ignore[return-value]


@contextmanager
def reports() -> Iterator[Reports]:
    sink = Reports()
    remove = add_report_sink(sink)
    try:
        yield sink
    finally:
        remove()


def post_and_leave(
    port: int, path: str, provider: LocalProvider, *, units: int = 3, headers: str = ""
) -> tuple[RequestLog, float]:
    """POST ``path`` from a raw socket and close it once the provider produced ``units`` units of the
    answer, like a user closing the tab; returns the provider's log of the call and the time of the drop."""
    before = len(provider.requests)
    sock = socket.create_connection(("127.0.0.1", port))
    request = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n{headers}\r\n"
    sock.sendall(request.encode())
    log = provider.wait_for_requests(before + 1)[before]
    log.wait_units(units)
    t_drop = time.monotonic()
    sock.close()
    return log, t_drop


def assert_stopped(log: RequestLog, t_cancel: float) -> None:
    """The provider saw the client go at or after the cancel and produced at most one unit after it."""
    seen = log.wait_disconnect(timeout=10)
    assert seen >= t_cancel, "the provider saw a disconnect before the cancel"
    assert log.units_after(t_cancel) <= 1, f"{log.units_after(t_cancel)} units produced after the cancel"
    assert log.completed_at is None, "the provider ran the answer to its end"


@contextmanager
def serve_aiohttp(app: object) -> Iterator[int]:
    """Serve an aiohttp ``web.Application`` on 127.0.0.1 in a thread with its own loop; yields the port."""
    import asyncio

    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)  # type: ignore[arg-type]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="aiohttp")
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
