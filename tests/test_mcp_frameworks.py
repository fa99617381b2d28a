"""Agent frameworks calling a tool on a real MCP server (tests/_mcp_server.py): the server's handler is
cancelled when the scope is.  openai-agents runs its tools in asyncio tasks of its own, which the scope
never cancels: without ``scope_session`` the tool runs to its end on the server."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")
agents = pytest.importorskip("agents")
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled  # noqa: E402
from agents.mcp import MCPServerStdio, MCPServerStreamableHttp  # noqa: E402

from _mcp import SERVER, ServerLog, serve_http  # noqa: E402
from scoped_clients import RequestScope, ScopeCancelled  # noqa: E402
from scoped_clients.mcp import scope_session  # noqa: E402
from scoped_clients.openai import AsyncOpenAI  # noqa: E402
from scoped_clients.provider import LocalProvider, Reply, ToolCall  # noqa: E402


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    with serve_http() as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # openai-agents runs on asyncio


@pytest.fixture
def log(tmp_path: Path) -> ServerLog:
    return ServerLog(tmp_path / "server.log")


@pytest.fixture(params=["http", "stdio"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "http":
        mcp_server: Any = MCPServerStreamableHttp(params={"url": request.getfixturevalue("http_url")}, name="docs")
    else:
        mcp_server = MCPServerStdio(params={"command": sys.executable, "args": [SERVER, "stdio"]}, name="docs")
    async with mcp_server:
        yield mcp_server


@pytest.mark.anyio
@pytest.mark.parametrize("scoped", [True, False], ids=["scoped", "vendor"])
async def test_openai_agents_mcp_tool_stops_on_the_server(
    server: Any, log: ServerLog, provider: LocalProvider, scoped: bool
) -> None:
    set_tracing_disabled(True)
    if scoped:
        scope_session(server.session)  # the session openai-agents built on connect()
    seconds = 30 if scoped else 0.3
    provider.script(Reply(tool_calls=[ToolCall("slow", {"seconds": seconds, "tag": "agent", "log": str(log.path)})]))
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
    agent = Agent(
        name="docs",
        model=OpenAIChatCompletionsModel(model="local-50", openai_client=llm),
        model_settings=ModelSettings(max_tokens=60),
        mcp_servers=[server],
    )
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await Runner.run(agent, "slow, please")
        except BaseException as exc:
            raised.append(exc)

    with anyio.fail_after(20):
        async with RequestScope(name="agent") as scope:
            # a task of its own that the scope never cancels (a fire-and-forget run, a framework's worker)
            task = asyncio.get_running_loop().create_task(run())
            await log.wait("start", "agent")
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        if scoped:
            stopped = await log.wait("cancelled", "agent")
            assert stopped - t_cancel < 1.0
        else:  # the vendor's session: openai-agents' tool task is never cancelled by anyone
            await log.wait("done", "agent")
            assert ("cancelled", "agent") not in log.entries()
        await task
    await llm.close()
    calls = [(c.provider, c.operation, c.outcome) for c in scope.report.calls]  # type: ignore[union-attr]
    first_turn = ("openai", "chat.completions", "completed")
    assert calls[:2] == [("mcp", "tools/list", "completed"), first_turn] if scoped else calls[0] == first_turn
    assert len(raised) == 1  # ScopeCancelled, or openai-agents' own error wrapping it
    if scoped:
        assert calls[2:] == [("mcp", "tools/call", "aborted")]  # and no turn after the cancel
        assert isinstance(raised[0], ScopeCancelled)


@pytest.mark.anyio
@pytest.mark.parametrize("scoped", [True, False], ids=["scoped", "vendor"])
async def test_pydantic_ai_mcp_toolset_stops_on_the_server(
    http_url: str, log: ServerLog, provider: LocalProvider, scoped: bool
) -> None:
    """pydantic-ai's ``MCPToolset`` runs on the fastmcp client, whose ``session`` is an ``mcp.ClientSession``
    (a subclass): ``scope_session(toolset.client.session)`` once the toolset is entered."""
    mcp_module = pytest.importorskip("pydantic_ai.mcp", reason="pydantic-ai's MCPToolset needs pydantic-ai-slim[mcp]")
    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    seconds = 30 if scoped else 0.3
    provider.script(Reply(tool_calls=[ToolCall("slow", {"seconds": seconds, "tag": "pai", "log": str(log.path)})]))
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
    toolset = mcp_module.MCPToolset(http_url)
    agent = PydanticAgent(OpenAIChatModel("local-50", provider=OpenAIProvider(openai_client=llm)), toolsets=[toolset])
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await agent.run("slow, please")
        except BaseException as exc:
            raised.append(exc)

    with anyio.fail_after(20):
        async with agent:
            if scoped:
                scope_session(toolset.client.session)
            async with RequestScope(name="pydantic-ai") as scope:
                task = asyncio.get_running_loop().create_task(run())  # a task the scope never cancels
                await log.wait("start", "pai")
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
            if scoped:
                assert await log.wait("cancelled", "pai") - t_cancel < 1.0
            else:
                await log.wait("done", "pai")
            await task
    await llm.close()
    assert len(raised) == 1 and isinstance(raised[0], ScopeCancelled)
    calls = [(c.provider, c.operation, c.outcome) for c in scope.report.calls]  # type: ignore[union-attr]
    if scoped:
        assert calls == [
            ("mcp", "tools/list", "completed"),
            ("openai", "chat.completions", "completed"),
            ("mcp", "tools/call", "aborted"),
        ]
    else:
        assert ("cancelled", "pai") not in log.entries()
