"""An openai-agents run under a RequestScope: the user leaves while the agent writes its answer.

Run:  python examples/agent_openai_agents/agent.py

The agent's first turn calls a tool (a subprocess, run with ``run_command``), the
second turn writes a long answer; the user leaves (the scope is cancelled) as that
answer starts to stream in.  The provider sees the disconnect within a few ms, no
later turn is sent, and the report lists every call.  openai-agents needs no
adapter: give its model a scoped ``AsyncOpenAI``.  Runs on the embedded provider
(no API key); openai-agents runs on asyncio.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import anyio
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

from scoped_clients import RequestScope
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.tools import run_command


@function_tool
async def list_pages(section: str) -> str:
    """List the pages of a section of the documentation site."""
    # the model chose ``section``: pass it as an argument, never inside the shell's script
    result = await run_command(["sh", "-c", 'for p in intro install api; do echo "$1/$p"; done', "sh", section])
    return result.stdout.decode()


@dataclass
class Run:
    scope: RequestScope
    t_cancel: float  # time.monotonic() of the cancel


async def main(provider: LocalProvider | None = None) -> Run:
    if provider is None:
        with LocalProvider(token_interval=0.01) as local:
            return await main(local)
    set_tracing_disabled(True)  # no trace export to api.openai.com
    # The embedded provider plays the model: the first turn calls the tool, the next one writes 300 tokens.
    provider.script(Reply(tool_calls=[ToolCall("list_pages", {"section": "guide"})]))
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
    agent = Agent(
        name="docs",
        instructions="List the pages, then summarise them.",
        model=OpenAIChatCompletionsModel(model="local-300", openai_client=llm),
        model_settings=ModelSettings(max_tokens=400),
        tools=[list_pages],
    )

    async def answer() -> None:
        result = await Runner.run(agent, "What is in the guide?")
        print(f"answer: {result.final_output}")  # not reached: the user left first

    async with RequestScope("agent") as scope:
        scope.spawn(answer)  # what a request handler under ScopeMiddleware does
        # The user leaves once the final answer streams (watched on the embedded provider).
        logs = await anyio.to_thread.run_sync(provider.wait_for_requests, 2)
        await anyio.to_thread.run_sync(logs[1].wait_units, 10)
        t_cancel = time.monotonic()
        scope.cancel("client_disconnected")
    await llm.close()
    await _print_report(scope, provider, t_cancel)
    return Run(scope, t_cancel)


async def _print_report(scope: RequestScope, provider: LocalProvider, t_cancel: float) -> None:
    assert scope.report is not None
    for call in scope.report.calls:
        print(f"  {call.provider:6} {call.operation:24} {call.outcome:9} tokens_saved={call.tokens_saved}")
    final = provider.requests[-1]
    seen = await anyio.to_thread.run_sync(final.wait_disconnect)
    print(f"provider saw the disconnect {(seen - t_cancel) * 1000:.1f} ms after the cancel")
    print(f"tokens saved: {scope.report.tokens_saved} (estimate), at most {scope.report.tokens_saved_max}")


if __name__ == "__main__":
    if sys.platform == "win32":  # process groups are POSIX
        raise SystemExit("this example needs a POSIX system")
    asyncio.run(main())
