"""The demo's agent loops: one request runs an agent with openai-agents, pydantic-ai or LangGraph.

Each loop is the same: an LLM turn that calls a tool (scripted on the provider), the
tool (a subprocess that ticks into a file until it is done), then a final LLM turn.
``mode="scoped"`` gives the frameworks scoped clients, runs the tool with
``run_command`` and adds ``ScopeMiddleware``; ``mode="raw"`` uses the vendor's
client and ``asyncio.create_subprocess_exec``.  Every framework is optional: only
the installed ones get a route (``installed()``), and nothing here imports one
before the app is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .app import Mode, TaskProbe

#: the final turn's model: 100 tokens, one every ``token_interval``
MODEL = "local-100"
TOOL = "crawl_site"
PROMPT = "What is on the docs site? Crawl it, then answer."
INSTRUCTIONS = "Crawl the site with the tool, then answer."
#: the tool's ticks (10 ms apart): long enough to drop the request while it runs
TICKS = 100


def ticker(ticks: int = TICKS) -> str:
    """A tool that works until it is stopped: one timestamped line per tick in the file it is given."""
    return (
        "import os, sys, time\n"
        "with open(sys.argv[1], 'a', buffering=1) as f:\n"
        "    f.write(f'pid {os.getpid()}\\n')\n"
        f"    for i in range({ticks}):\n"
        "        f.write(f'{time.monotonic()}\\n')\n"
        "        time.sleep(0.01)\n"
    )


@dataclass(frozen=True)
class Framework:
    name: str
    path: str
    #: distributions the scenario needs beyond the ``demo`` extra
    distributions: tuple[str, ...]
    install: str

    def installed(self) -> bool:
        try:
            for name in self.distributions:
                importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True


FRAMEWORKS: tuple[Framework, ...] = (
    Framework("openai-agents", "/agent/openai-agents", ("openai-agents",), "pip install openai-agents"),
    Framework("pydantic-ai", "/agent/pydantic-ai", ("pydantic-ai-slim",), "pip install 'pydantic-ai-slim[openai]'"),
    Framework(
        "LangGraph",
        "/agent/langgraph",
        ("langgraph", "langchain-openai", "scoped-clients-langchain"),
        "pip install langgraph langchain-openai 'scoped-clients[langchain]'",
    ),
)

Runner = Callable[[], Awaitable[str]]


def build_agent_app(mode: Mode, provider_url: str, tick_file: str, probe: TaskProbe | None = None) -> ASGIApp:
    """The agent app: one route per installed framework, the same loop in each."""
    import openai

    if mode == "raw":
        llm = openai.AsyncOpenAI(base_url=provider_url + "/v1", api_key="demo")
        http_client = openai.DefaultAsyncHttpxClient()  # LangGraph's: its own, not langchain-openai's cached one
    else:
        import scoped_clients.openai

        llm = scoped_clients.openai.AsyncOpenAI(base_url=provider_url + "/v1", api_key="demo")
        http_client = openai.DefaultAsyncHttpxClient()  # scope_model() scopes the clients built on it

    async def crawl() -> str:
        argv = [sys.executable, "-c", ticker(), tick_file]
        if mode == "scoped":
            from scoped_clients.tools import run_command

            result = await run_command(argv)
            return f"crawled (exit {result.returncode})"
        process = await asyncio.create_subprocess_exec(*argv)
        return f"crawled (exit {await process.wait()})"

    builders: dict[str, Callable[[], Runner]] = {
        "openai-agents": lambda: _openai_agents(llm, crawl),
        "pydantic-ai": lambda: _pydantic_ai(llm, crawl),
        "LangGraph": lambda: _langgraph(mode, provider_url, http_client, crawl),
    }
    routes = []
    for framework in FRAMEWORKS:
        if framework.installed():
            routes.append(Route(framework.path, _endpoint(builders[framework.name]())))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if probe is not None:
            probe.loop = asyncio.get_running_loop()
        yield
        await llm.close()
        await http_client.aclose()

    app: ASGIApp = Starlette(lifespan=lifespan, routes=routes)
    if mode == "scoped":
        from scoped_clients.asgi import ScopeMiddleware

        app = ScopeMiddleware(app)
    return app


def _endpoint(run: Runner) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return JSONResponse({"answer": await run()})

    return endpoint


def _openai_agents(llm: Any, crawl: Runner) -> Runner:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no trace export to api.openai.com

    @function_tool(name_override=TOOL)
    async def crawl_site() -> str:
        """Crawl the documentation site."""
        return await crawl()

    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=llm)
    agent = Agent(name="researcher", instructions=INSTRUCTIONS, model=model, tools=[crawl_site])

    async def run() -> str:
        return str((await Runner.run(agent, PROMPT)).final_output)

    return run


def _pydantic_ai(llm: Any, crawl: Runner) -> Runner:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    agent = Agent(OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=llm)), instructions=INSTRUCTIONS)

    @agent.tool_plain(name=TOOL)
    async def crawl_site() -> str:
        """Crawl the documentation site."""
        return await crawl()

    async def run() -> str:
        return str((await agent.run(PROMPT)).output)

    return run


def _langgraph(mode: Mode, provider_url: str, http_client: Any, crawl: Runner) -> Runner:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition
    from pydantic import SecretStr

    @tool(TOOL)
    async def crawl_site() -> str:
        """Crawl the documentation site."""
        return await crawl()

    chat = ChatOpenAI(
        model=MODEL, base_url=provider_url + "/v1", api_key=SecretStr("demo"), http_async_client=http_client
    )
    if mode == "scoped":
        from scoped_clients_langchain import scope_model

        chat = scope_model(chat)
    llm = chat.bind_tools([crawl_site])

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph: Any = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode([crawl_site]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    agent = graph.compile()

    async def run() -> str:
        state = await agent.ainvoke({"messages": [("system", INSTRUCTIONS), ("user", PROMPT)]})
        return str(state["messages"][-1].content)

    return run
