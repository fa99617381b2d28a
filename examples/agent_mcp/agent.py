"""An openai-agents agent calling an MCP tool, served under ScopeMiddleware: the user leaves mid-tool.

Run:  python examples/agent_mcp/agent.py

A Starlette app under ``ScopeMiddleware`` starts an openai-agents run in a task of its own (a run
that outlives its response) whose first turn calls ``research`` on an MCP server
(``research_server.py``, stdio, connected once at start-up and shared by every request).  The
user closes the page while the tool runs.  Nothing cancels that task, so with the vendor's session
the tool would research on for 30 s.  The session is scoped (``scope_session``), so the request's
scope owns the tool call: the MCP server's handler is cancelled a few ms after the user left, no
later turn is sent, and the report lists the calls.  Runs on the embedded provider (no API key);
openai-agents runs on asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.mcp import MCPServerStdio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from scoped_clients import ScopeCancelled, ScopeReport, add_report_sink
from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.mcp import scope_session
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.testing import serve

HERE = Path(__file__).parent


@dataclass
class LeftMidTool:
    report: ScopeReport
    t_left: float
    server_log: str


def build_app(provider: LocalProvider, log: Path) -> Starlette:
    mcp_server = MCPServerStdio(
        params={
            "command": sys.executable,
            "args": [str(HERE / "research_server.py")],
            "env": {"RESEARCH_LOG": str(log)},
        },
        name="research",
    )
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
    agent = Agent(
        name="researcher",
        instructions="Research the topic, then answer.",
        model=OpenAIChatCompletionsModel(model="local-300", openai_client=llm),
        model_settings=ModelSettings(max_tokens=400),
        mcp_servers=[mcp_server],
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with mcp_server:  # one MCP session for the whole app
            scope_session(mcp_server.session)  # each request it sends belongs to the request's scope
            yield
        await llm.close()

    running: set[asyncio.Task[None]] = set()

    async def ask(request: Request) -> StreamingResponse:
        answers: asyncio.Queue[str] = asyncio.Queue()

        async def run() -> None:
            # A run that outlives its response (a page that reconnects could pick it up): a task of
            # its own, which nothing cancels when the user leaves.  It holds the request's scope.
            try:
                result = await Runner.run(agent, "What is known about cancellation?")
                await answers.put(str(result.final_output))
            except ScopeCancelled:
                pass  # the user left: the scope stopped the tool on the MCP server and refused the next turn

        task = asyncio.get_running_loop().create_task(run())
        running.add(task)
        task.add_done_callback(running.discard)

        async def page() -> AsyncIterator[str]:
            yield "researching...\n"
            yield await answers.get()

        return StreamingResponse(page(), media_type="text/plain")

    return Starlette(routes=[Route("/ask", ask, methods=["POST"])], lifespan=lifespan)


def started(log: Path, what: str) -> float | None:
    lines = log.read_text().splitlines() if log.exists() else []
    return next((float(line.split()[1]) for line in lines if line.startswith(what)), None)


async def wait_for(log: Path, what: str, within: float = 20) -> float:
    deadline = time.monotonic() + within
    while (at := started(log, what)) is None:  # another process writes it
        if time.monotonic() > deadline:
            raise TimeoutError(f"the MCP server never noted {what!r}")
        await asyncio.sleep(0.005)
    return at


async def main(provider: LocalProvider | None = None) -> LeftMidTool:
    if provider is None:
        with LocalProvider(token_interval=0.01) as local:
            return await main(local)
    set_tracing_disabled(True)  # no trace export to api.openai.com
    # The embedded provider plays the model: its first turn calls the MCP tool.
    provider.script(Reply(tool_calls=[ToolCall("research", {"topic": "cancellation"})]))
    reports: list[ScopeReport] = []
    reported = threading.Event()  # the sink runs in the server's thread

    def sink(report: ScopeReport) -> None:
        reports.append(report)
        reported.set()

    remove = add_report_sink(sink)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "research.log"
        try:
            with serve(ScopeMiddleware(build_app(provider, log))) as port:
                async with httpx2.AsyncClient() as http:
                    # The page asks, and is closed once the MCP tool has started.
                    async with http.stream("POST", f"http://127.0.0.1:{port}/ask") as response:
                        await wait_for(log, "started")
                        t_left = time.monotonic()
                    stopped = await wait_for(log, "cancelled")
                await asyncio.to_thread(reported.wait, 10)  # the scope's report, as the handler unwinds
        finally:
            remove()
        server_log = log.read_text()
    report = reports[0]
    print(f"response status {response.status_code}; the user left while the MCP tool ran")
    for call in report.calls:
        tool = call.detail.get("tool", "")
        print(f"  {call.provider:6} {call.operation:18} {tool:9} {call.outcome}")
    print(f"MCP server: tool handler cancelled {(stopped - t_left) * 1000:.1f} ms after the user left")
    return LeftMidTool(report, t_left, server_log)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
