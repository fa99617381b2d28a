"""An openai-agents run under a RequestScope: the user leaves while the agent writes its answer.

Run:  python examples/agent_openai_agents/agent.py

The agent's first turn calls a tool (a subprocess, run with ``run_command``), the
second turn writes a long answer; the user leaves (the scope is cancelled) as that
answer starts to stream in.  The provider sees the disconnect within a few ms, no
later turn is sent, and the report lists every call.  openai-agents needs no
adapter: give its model a scoped ``AsyncOpenAI``.  Runs on the embedded provider
(no API key); openai-agents runs on asyncio.

The answer's ``tokens_saved`` is never 0: tool-calling turns are learned apart from text answers, so with
no answer learned yet it comes from the prior (``saved_method="default"``, see the README).
"""

from __future__ import annotations

import asyncio
import sys

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.testing import LeftRun, leave_mid_answer
from scoped_clients.tools import run_command


@function_tool
async def list_pages(section: str) -> str:
    """List the pages of a section of the documentation site."""
    # the model chose ``section``: pass it as an argument, never inside the shell's script
    result = await run_command(["sh", "-c", 'for p in intro install api; do echo "$1/$p"; done', "sh", section])
    return result.stdout.decode()


async def main(provider: LocalProvider | None = None) -> LeftRun:
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

    # What a request handler under ScopeMiddleware does; the user leaves once the final answer
    # streams (watched on the embedded provider), and the report is printed.
    run = await leave_mid_answer(provider, answer)
    await llm.close()
    return run


if __name__ == "__main__":
    if sys.platform == "win32":  # process groups are POSIX
        raise SystemExit("this example needs a POSIX system")
    asyncio.run(main())
