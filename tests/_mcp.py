"""The MCP test server (tests/_mcp_server.py) as the MCP tests run it, and what its handlers noted."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.client.stdio import StdioServerParameters

SERVER = str(Path(__file__).parent / "_mcp_server.py")
STDIO = StdioServerParameters(command=sys.executable, args=[SERVER, "stdio"])

#: the async generators the raw SDK leaves to trio's collector on streamable HTTP 2025-11-25, beyond
#: those pyproject.toml ignores for every test (httpx2's Response.aiter_bytes, httpcore2's byte stream):
#: httpx2's own SSE reader, which the SDK iterates over the session's streams and drops unexhausted when
#: they end; asyncio finalizes them silently.  tests/test_vendor_warnings.py shows each on the raw SDK.
TRIO_LEFT = ("httpx2._sse.EventSource.__aiter__", "httpx2._models.Response.aiter_text")
TRIO_FILTER = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object (EventSource[.]__aiter__|Response[.]aiter_text) at"
    ":pytest.PytestUnraisableExceptionWarning"
)


class ServerLog:
    """What the test server's tool handlers noted: ``(what, tag) -> time.monotonic()``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> dict[tuple[str, str], float]:
        if not self.path.exists():
            return {}
        out: dict[tuple[str, str], float] = {}
        for line in self.path.read_text().splitlines():
            what, tag, at = line.split()
            out[(what, tag)] = float(at)
        return out

    async def wait(self, what: str, tag: str, *, within: float = 10.0) -> float:
        """When the server noted ``what`` for ``tag`` (it runs in another process: polled)."""
        with anyio.fail_after(within):
            while (at := self.entries().get((what, tag))) is None:  # noqa: ASYNC110 (a file another process writes)
                await anyio.sleep(0.002)
        return at


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_http() -> Iterator[str]:
    """The server on streamable HTTP (uvicorn, 127.0.0.1) in its own process; yields its URL."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, SERVER, "http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the MCP test server did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)
