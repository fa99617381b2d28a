"""A LangGraph agent loop (LLM turn -> tool -> LLM turn) under a RequestScope, measured at the loopback provider.

LangChain's async API runs on asyncio only (langchain-core awaits ``asyncio.gather``), so these
async tests run on asyncio alone; the sync test covers a worker thread cancelled from outside.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypedDict

import anyio
import psutil
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from scoped_clients_langchain import retry_on, retry_policy, scope_model

import scoped_clients.openai as scoped_openai
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.provider import LocalProvider
from scoped_clients.tools import run_command, tool

# A shell that starts a long child, then publishes both pids (atomically) and waits.
SHELL = 'sleep 30 & echo $$ $! > "$MARKER.tmp"; mv "$MARKER.tmp" "$MARKER"; wait'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    # One per test: langchain-openai and langchain-anthropic share one HTTP client per base URL
    # (lru_cache), and a pooled connection from an earlier test's event loop fails ("Event loop is
    # closed") and is retried by the SDK.
    with LocalProvider(token_interval=0.01, default_tokens=50) as p:
        yield p


def chat(vendor: str, provider: LocalProvider, model: str = "local-1000") -> Any:
    if vendor == "openai":
        return scope_model(ChatOpenAI(model=model, base_url=provider.url + "/v1", api_key="x", max_tokens=150))
    return scope_model(ChatAnthropic(model=model, base_url=provider.url, api_key="x", max_tokens=150))


class State(TypedDict):
    messages: list[Any]


def agent_loop(llm: Any, action: Callable[[], Awaitable[None]], final_llm: Any | None = None) -> Any:
    """LLM turn, then a tool, then another LLM turn; every node has LangGraph's default RetryPolicy."""

    async def turn(state: State) -> State:
        return {"messages": [*state["messages"], await llm.ainvoke(state["messages"])]}

    async def final(state: State) -> State:
        return {"messages": [*state["messages"], await (final_llm or llm).ainvoke(state["messages"])]}

    async def act(state: State) -> State:
        await action()
        return state

    graph = StateGraph(State)
    graph.add_node("agent", turn, retry_policy=RetryPolicy())
    graph.add_node("tool", act, retry_policy=RetryPolicy())
    graph.add_node("final", final, retry_policy=RetryPolicy())
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "tool")
    graph.add_edge("tool", "final")
    graph.add_edge("final", END)
    return graph.compile()


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


async def run_and_cancel(
    graph: Any, where: str, ready: Callable[[], Awaitable[None]]
) -> tuple[RequestScope, Any, float]:
    """Run the graph in the scope's body or in a background task; cancel once ``ready`` returns.
    Returns the scope, what the run raised (or returned) and the cancel's time."""
    scope = RequestScope("agent")
    outcome: list[Any] = []
    t_cancel = 0.0

    async def run() -> None:
        try:
            outcome.append(await graph.ainvoke({"messages": [("user", "tell me a long story")]}))
        except BaseException as exc:
            outcome.append(exc)
            raise

    async def cancel_when_ready() -> None:
        nonlocal t_cancel
        await ready()
        t_cancel = time.monotonic()
        scope.cancel("client_disconnected")

    with anyio.fail_after(20):
        if where == "body":
            async with anyio.create_task_group() as tg, scope:
                tg.start_soon(cancel_when_ready)
                await run()
        else:
            async with scope:
                task = asyncio.create_task(run())
                await cancel_when_ready()
                with scope.shield():
                    await asyncio.wait([task], timeout=20)
    assert task.done() if where == "task" else True
    (result,) = outcome
    return scope, result, t_cancel


def assert_cancellation(where: str, result: Any) -> None:
    # In the body the scope's own cancel stops the run; outside it, the scoped call raises.
    allowed = (asyncio.CancelledError,) if where == "body" else (ScopeCancelled, asyncio.CancelledError)
    assert isinstance(result, allowed), repr(result)


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
@pytest.mark.parametrize("where", ["body", "task"])
async def test_cancel_during_the_llm_turn(vendor: str, where: str, provider: LocalProvider) -> None:
    async def no_tool() -> None:
        raise AssertionError("the tool ran after the cancel")

    async def ready() -> None:
        (log,) = await _blocking(provider.wait_for_requests, 1)
        await _blocking(log.wait_units, 10)

    scope, result, t_cancel = await run_and_cancel(agent_loop(chat(vendor, provider), no_tool), where, ready)
    assert_cancellation(where, result)
    (log,) = provider.requests  # no retry, no later turn: 0 calls started after the cancel
    seen = await _blocking(log.wait_disconnect)
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.model, record.outcome) == (vendor, "local-1000", "aborted")
    assert record.tokens_saved_max == 150 and record.tokens_saved is not None and record.tokens_saved > 0


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["body", "task"])
async def test_cancel_during_an_async_tool(where: str, provider: LocalProvider) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    @tool
    async def search() -> None:  # a scoped tool: cancelled with the scope even outside its body
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    llm = chat("openai", provider, "local-5")
    scope, result, t_cancel = await run_and_cancel(agent_loop(llm, search), where, started.wait)
    assert_cancellation(where, result)
    assert stopped.is_set()
    (log,) = provider.requests  # the first turn only: the final turn never started
    assert log.started_at < t_cancel and log.disconnected_at is None
    records = scope.report.calls  # type: ignore[union-attr]
    assert [(r.provider, r.outcome) for r in records] == [("openai", "completed"), ("tool", "aborted")]


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["body", "task"])
async def test_cancel_during_a_subprocess_tool(where: str, provider: LocalProvider, tmp_path: Any) -> None:
    marker = str(tmp_path / "ready")

    async def command() -> None:
        await run_command(["sh", "-c", SHELL], grace=2.0, env={**os.environ, "MARKER": marker})

    async def ready() -> None:
        await _blocking(_wait_for_file, marker)

    llm = chat("anthropic", provider, "local-5")
    scope, result, _ = await run_and_cancel(agent_loop(llm, command), where, ready)
    assert_cancellation(where, result)
    pids = [int(pid) for pid in (await anyio.Path(marker).read_text()).split()]  # the shell and its child
    assert len(pids) == 2 and _survivors(pids) == []  # the process group is gone
    assert len(provider.requests) == 1
    outcomes = [(r.provider, r.outcome) for r in scope.report.calls]  # type: ignore[union-attr]
    assert outcomes[0] == ("anthropic", "completed") and outcomes[1][1] == "aborted" and len(outcomes) == 2


@pytest.mark.anyio
async def test_refused_turn_is_a_cancellation_and_never_retried(provider: LocalProvider) -> None:
    """Regression: without ``scope_model`` langchain-core raised AttributeError, which LangGraph retried."""

    async def no_tool() -> None:
        raise AssertionError("the tool ran after the cancel")

    graph = agent_loop(chat("openai", provider), no_tool)
    async with RequestScope() as scope:
        scope.cancel("client_disconnected")
        task = asyncio.create_task(graph.ainvoke({"messages": [("user", "hi")]}))
        with scope.shield():
            await asyncio.wait([task])
    assert isinstance(task.exception(), ScopeCancelled)
    assert provider.requests == []
    assert [r.outcome for r in scope.report.calls] == ["refused"]  # type: ignore[union-attr]


def test_sync_invoke_cancelled_from_another_thread(provider: LocalProvider) -> None:
    llm = chat("openai", provider)
    scope = RequestScope("sync")
    errors: list[BaseException] = []

    def worker() -> None:
        with scope:
            try:
                llm.invoke("tell me a long story")
            except ScopeCancelled as exc:
                errors.append(exc)
                raise

    thread = threading.Thread(target=worker)
    thread.start()
    (log,) = provider.wait_for_requests(1)
    log.wait_units(10)
    t_cancel = time.monotonic()
    scope.cancel("client_disconnected")
    assert log.wait_disconnect() >= t_cancel and log.units_after(t_cancel) <= 1
    thread.join(10)
    assert not thread.is_alive() and len(errors) == 1 and len(provider.requests) == 1
    assert [r.outcome for r in scope.report.calls] == ["aborted"]  # type: ignore[union-attr]
    llm.root_client.close()  # langchain caches this client per base URL and never closes it


@pytest.mark.anyio
async def test_retry_predicates() -> None:
    async with RequestScope() as scope:
        assert retry_on(ConnectionError()) and not retry_on(ValueError())  # LangGraph's default decides
        policy = retry_policy(max_attempts=5, retry_on=lambda exc: isinstance(exc, AttributeError))
        assert policy.max_attempts == 5 and policy.retry_on(AttributeError())
        scope.cancel("client_disconnected")
        assert not retry_on(ConnectionError()) and not policy.retry_on(AttributeError())


def _wait_for_file(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.001)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _survivors(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.001)
    return left


def test_http_client_recipe_reports_the_vendor(provider: LocalProvider) -> None:
    """ChatOpenAI given only HTTP clients (no scope_model) still reports OpenAI calls."""
    http_client = scoped_openai.http_client()
    llm = ChatOpenAI(
        model="local-7",
        base_url=provider.url + "/v1",
        api_key="x",
        http_client=http_client,
        http_async_client=scoped_openai.async_http_client(),
    )
    with RequestScope() as scope, http_client:
        llm.invoke("hi")
    assert [(r.provider, r.model, r.outcome, r.tokens_out) for r in scope.report.calls] == [  # type: ignore[union-attr]
        ("openai", "local-7", "completed", 7)
    ]
