"""openai-agents and pydantic-ai take our clients as they are (no adapter): an LLM turn
cancelled mid-generation, measured at the loopback provider.  Both frameworks run on asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import scoped_clients.openai as scoped_openai
from _helpers import cancel_agent_turn, wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.provider import LocalProvider


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def openai_agents_run(provider: LocalProvider) -> Callable[[], Awaitable[Any]]:
    set_tracing_disabled(True)  # no trace export to api.openai.com
    client = scoped_openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
    model = OpenAIChatCompletionsModel(model="local-1000", openai_client=client)
    agent = Agent(name="writer", instructions="write", model=model)
    return lambda: Runner.run(agent, "tell me a long story")


def pydantic_ai_run(provider: LocalProvider) -> Callable[[], Awaitable[Any]]:
    client = scoped_openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
    agent = PydanticAgent(OpenAIChatModel("local-1000", provider=OpenAIProvider(openai_client=client)))
    return lambda: agent.run("tell me a long story")


@pytest.mark.anyio
@pytest.mark.parametrize("framework", [openai_agents_run, pydantic_ai_run], ids=["openai-agents", "pydantic-ai"])
@pytest.mark.parametrize("where", ["body", "task"])
async def test_llm_turn_cancelled(framework: Any, where: str, provider: LocalProvider) -> None:
    run = framework(provider)
    scope = RequestScope("agent")
    with anyio.fail_after(20):
        t_cancel, raised = await cancel_agent_turn(provider, scope, run, where)
        (log,) = provider.requests  # no retry, no second turn: 0 calls started after the cancel
        seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1
    (exc,) = raised
    assert isinstance(exc, asyncio.CancelledError if where == "body" else (ScopeCancelled, asyncio.CancelledError))
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.model, record.outcome) == ("openai", "local-1000", "aborted")
    assert record.tokens_saved is not None and record.tokens_saved > 0
