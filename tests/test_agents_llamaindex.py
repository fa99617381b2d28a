"""LlamaIndex's OpenAI LLM with our scoped HTTP client (no adapter): an LLM call and a
FunctionAgent loop cancelled mid-turn, measured at the loopback provider.

``llama-index-llms-openai`` requires ``openai<3``: this runs in the compat venv
(``scripts/compat.py``, openai 2.x) and is skipped beside openai 3.  LlamaIndex runs on asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

pytest.importorskip(
    "llama_index.llms.openai",
    reason="llama-index-llms-openai needs openai<3; run in the openai 2.x venv: python scripts/compat.py",
)

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI

import scoped_clients.openai as scoped_openai
from _helpers import cancel_agent_turn, wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.tools import run_tool

#: a model name LlamaIndex knows (it refuses unknown ones); the scripted reply sets the length
MODEL = "gpt-4o-mini"
LONG = Reply(text="word " * 1000)

# llama-index's workflows list an agent's members with inspect.getmembers (when it is built and
# run), which touches pydantic's deprecated attributes: vendor warnings, not ours
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.PydanticDeprecationWarning")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # LlamaIndex (its LLMs and workflows) is asyncio-only


def llm(provider: LocalProvider) -> OpenAI:
    """The recipe: LlamaIndex builds its own openai 2.x client around our scoped, OpenAI-profiled httpx client."""
    return OpenAI(
        model=MODEL,
        api_base=provider.url + "/v1",
        api_key="x",
        async_http_client=scoped_openai.async_http_client(),
    )


async def lookup(city: str) -> str:
    """The tool's body: runs as a call owned by the scope."""
    return f"sunny in {city}"


def llm_call(provider: LocalProvider, stream: bool) -> Callable[[], Awaitable[Any]]:
    model = llm(provider)
    messages = [ChatMessage(role="user", content="tell me a long story")]

    async def run() -> Any:
        if not stream:
            return await model.achat(messages)
        async for chunk in await model.astream_chat(messages):
            last = chunk
        return last

    return run


def agent_run(provider: LocalProvider) -> Callable[[], Awaitable[Any]]:
    async def weather(city: str) -> str:
        """The weather in a city."""
        return str(await run_tool(lookup, city))

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(async_fn=weather)], llm=llm(provider))
    # turn 1 calls the tool; turn 2 (after the tool's answer) is the long one we cancel
    provider.script(Reply(tool_calls=[ToolCall("weather", {"city": "Paris"})]), LONG)

    async def run() -> Any:
        return await agent.run(user_msg="what is the weather in Paris? then tell me a long story")

    return run


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["chat", "stream_chat", "agent"])
@pytest.mark.parametrize("where", ["body", "task"])
async def test_llm_turn_cancelled(kind: str, where: str, provider: LocalProvider) -> None:
    if kind == "agent":
        run, turns = agent_run(provider), 2
    else:
        provider.script(LONG)
        run, turns = llm_call(provider, stream=kind == "stream_chat"), 1
    scope = RequestScope("agent")
    with anyio.fail_after(20):
        t_cancel, raised = await cancel_agent_turn(provider, scope, run, where, turns)
        logs = provider.requests  # no retry, no later turn: 0 calls started after the cancel
        assert len(logs) == turns
        seen = await wait(logs[-1].wait_disconnect)
    assert seen >= t_cancel and logs[-1].units_after(t_cancel) <= 1
    for log in logs[:-1]:
        assert log.disconnected_at is None  # the tool-calling turn was read to its end
    (exc,) = raised
    assert isinstance(exc, (ScopeCancelled, asyncio.CancelledError)), repr(exc)
    records = scope.report.calls  # type: ignore[union-attr]
    outcomes = [(r.provider, r.model or r.operation, r.outcome) for r in records]
    if kind == "agent":
        assert outcomes == [
            ("openai", MODEL, "completed"),
            ("tool", "lookup", "completed"),
            ("openai", MODEL, "aborted"),
        ]
    else:
        assert outcomes == [("openai", MODEL, "aborted")]
        assert records[0].tokens_saved is not None and records[0].tokens_saved > 0
