"""The demo's "MCP tool" row: a request calls a tool on a real MCP server, and the tab is closed mid-tool.

The server is the MCP SDK's own ``MCPServer`` on streamable HTTP (the protocol the
client negotiates by default: 2026-07-28, where the cancel is the request's POST
closing), run in its own process (``serve()``).  Its
async tool ticks into the file it is given every 10 ms and notes there when its
handler is cancelled, on ``time.monotonic()`` (one clock for every process on
Linux): the demo measures at the server, not at the client.

The app's handler runs the call in a task of its own and awaits it shielded, as an
agent framework runs a tool, or as a job handed to a worker: the request's cancel
does not reach that task.  ``mode="raw"``: the vendor's ``mcp.Client``, whose tool
runs on to its end (so would it under ``ScopeMiddleware``: nothing cancels the task
that awaits it); ``mode="scoped"``: ``scoped_clients.mcp.Client`` and
``ScopeMiddleware``, where the request's scope owns the call wherever it runs.
Needs the ``mcp`` extra (part of ``demo``); nothing here imports the SDK before
the app or the server is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .app import Mode, TaskProbe

PATH = "/mcp-tool"
TOOL = "crawl"
#: the tool's ticks (10 ms apart) when nobody stops it: long enough to drop the request while it runs
TICKS = 100
INSTALL = "pip install 'scoped-clients[mcp]'"


def installed() -> bool:
    """Whether the MCP SDK is installed (the row needs it; the rest of the demo does not)."""
    return importlib.util.find_spec("mcp") is not None


# ------------------------------------------------------------------ the server (its own process)


def _server() -> Any:
    import anyio
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("scoped-clients-demo", log_level="WARNING")

    def note(log: str, what: str) -> None:
        with open(log, "a") as f:
            f.write(f"{what} {time.monotonic():.6f}\n")

    @server.tool(name=TOOL)
    async def crawl(ticks: int, log: str) -> str:
        """Crawl a site: a tick every 10 ms into ``log``; notes when its handler is cancelled."""
        note(log, "start")
        try:
            for _ in range(ticks):
                note(log, "tick")
                await anyio.sleep(0.01)
        except BaseException:
            note(log, "cancelled")
            raise
        note(log, "done")
        return f"crawled {ticks} pages"

    return server


def main() -> None:
    """Serve on 127.0.0.1 on a port of the OS's choosing, printed first on stdout (``serve()`` runs it)."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(_server().streamable_http_app(), log_level="critical", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """The demo's MCP server in its own process until the block exits; yields its URL."""
    argv = [sys.executable, "-c", "from scoped_clients.demo.mcp_tool import main; main()"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the port, once bound (the process exits at once if it cannot)
        if not line.strip().isdigit():
            raise RuntimeError(f"the demo's MCP server did not start (exit code {process.wait(10)})")
        port = int(line)
        _wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _wait_listening(port: int, process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:  # bound before uvicorn listens: poll until it accepts
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the demo's MCP server did not start listening") from None
            time.sleep(0.02)


# ------------------------------------------------------------------ the app


def build_mcp_app(mode: Mode, mcp_url: str, tick_file: str, probe: TaskProbe | None = None) -> ASGIApp:
    """The app of the row: one route calling the tool.  ``mode="scoped"`` swaps the import, adds the middleware."""
    if mode == "raw":
        import mcp

        client: Any = mcp.Client(mcp_url)
    else:  # the one change a user makes: the import
        from scoped_clients.mcp import Client

        client = Client(mcp_url)
    jobs: set[asyncio.Task[Any]] = set()

    async def crawl(request: Request) -> Response:
        # The call runs in a task of its own, awaited shielded (an agent framework's tool task, a
        # job handed to a worker): cancelling this handler does not cancel it.
        job = asyncio.create_task(client.call_tool(TOOL, {"ticks": TICKS, "log": tick_file}))
        jobs.add(job)
        job.add_done_callback(jobs.discard)
        job.add_done_callback(lambda t: t.cancelled() or t.exception())
        result = await asyncio.shield(job)
        return JSONResponse({"answer": result.content[0].text if result.content else ""})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if probe is not None:
            probe.loop = asyncio.get_running_loop()
        async with client:  # one session, opened at start-up, shared by every request
            yield
            for job in list(jobs):
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    app: ASGIApp = Starlette(lifespan=lifespan, routes=[Route(PATH, crawl)])
    if mode == "scoped":
        from scoped_clients.asgi import ScopeMiddleware

        app = ScopeMiddleware(app)
    return app


# ------------------------------------------------------------------ what the server's handler noted


def read(tick_file: str) -> tuple[list[float], dict[str, float]]:
    """The tool's ticks, and when it noted ``start``, ``cancelled`` or ``done``."""
    ticks: list[float] = []
    marks: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError), open(tick_file) as f:
        for line in f:
            what, _, at = line.partition(" ")
            if what == "tick":
                ticks.append(float(at))
            elif what:
                marks[what] = float(at)
    return ticks, marks


def wait_ticks(tick_file: str, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(read(tick_file)[0]) < n:  # another process writes it: poll
        if time.monotonic() > deadline:
            raise TimeoutError("the MCP tool did not start ticking")
        time.sleep(0.001)


def running(tick_file: str) -> bool:
    """Whether the server's tool handler is still running."""
    marks = read(tick_file)[1]
    return "start" in marks and "cancelled" not in marks and "done" not in marks


def observe(tick_file: str, t_drop: float, window: float) -> tuple[int, float | None, bool]:
    """Wait until the handler ended (or ``window`` s); returns the ticks after the drop, the ms from
    the drop to the handler's cancel (None if it was not cancelled), and whether it ran to its end."""
    deadline = time.monotonic() + window
    while running(tick_file) and time.monotonic() < deadline:
        time.sleep(0.0005)
    ticks, marks = read(tick_file)
    cancelled = marks.get("cancelled")
    latency = None if cancelled is None else max(0.0, cancelled - t_drop) * 1000
    return sum(1 for t in ticks if t > t_drop), latency, "done" in marks
