"""An MCP server for the tests and the benchmark: the SDK's own ``MCPServer``, in its own process.

``python _mcp_server.py http PORT`` (streamable HTTP through uvicorn on 127.0.0.1) or
``python _mcp_server.py stdio``.  Every tool appends what its handler saw to the file
named by its ``log`` argument, one line each: ``start|done|cancelled TAG MONOTONIC``
(``time.monotonic()`` is one clock for every process on Linux), so a test reads what
the server observed and when.
"""

from __future__ import annotations

import sys
import time

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("scoped-clients-test")


def note(log: str, what: str, tag: str) -> None:
    with open(log, "a") as f:
        f.write(f"{what} {tag} {time.monotonic():.6f}\n")


@server.tool()
async def slow(seconds: float, tag: str, log: str) -> str:
    """An async tool: sleeps, and notes whether it finished or was cancelled."""
    note(log, "start", tag)
    try:
        await anyio.sleep(seconds)
    except BaseException:
        note(log, "cancelled", tag)
        raise
    note(log, "done", tag)
    return f"slept {seconds}"


@server.tool()
def slow_sync(seconds: float, tag: str, log: str) -> str:
    """A sync tool: the server runs it in a worker thread, which nothing can stop."""
    note(log, "start", tag)
    time.sleep(seconds)
    note(log, "done", tag)
    return f"slept {seconds}"


@server.tool()
async def stubborn(seconds: float, tag: str, log: str) -> str:
    """A tool that ignores cancels (shielded): only ending the server stops it."""
    note(log, "start", tag)
    with anyio.CancelScope(shield=True):
        await anyio.sleep(seconds)
    note(log, "done", tag)
    return f"slept {seconds}"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
