"""The example's MCP server (the SDK's own MCPServer, on stdio): one slow research tool.

It appends what its handler saw to the file named by ``RESEARCH_LOG``, one line each
(``started`` / ``cancelled`` / ``finished`` and ``time.monotonic()``), so the example can show
when the server stopped.
"""

from __future__ import annotations

import os
import time

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("research")


def note(what: str) -> None:
    with open(os.environ["RESEARCH_LOG"], "a") as f:
        f.write(f"{what} {time.monotonic():.6f}\n")


@server.tool()
async def research(topic: str) -> str:
    """Research a topic thoroughly (takes a while)."""
    note("started")
    try:
        await anyio.sleep(30)  # the expensive part: crawling, reading, summarising
    except BaseException:
        note("cancelled")
        raise
    note("finished")
    return f"everything about {topic}"


if __name__ == "__main__":
    server.run("stdio")
