"""A pydantic-ai run under a RequestScope: the user leaves while the agent writes its answer.

Run:  python examples/agent_pydantic_ai/agent.py

The agent's first turn calls a tool (a subprocess, run with ``run_command``), the
second turn writes a long answer; the user leaves (the scope is cancelled) as that
answer starts to stream in.  The provider sees the disconnect within a few ms, no
later turn or retry is sent, and the report lists every call.  pydantic-ai needs
no adapter: give its provider a scoped ``AsyncOpenAI``.  Runs on the embedded
provider (no API key).

The answer's ``tokens_saved`` is never 0: tool-calling turns are learned apart from text answers, so with
no answer learned yet it comes from the prior (``saved_method="default"``, see the README).
"""

from __future__ import annotations

import asyncio
import sys

from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.testing import LeftRun, leave_mid_answer
from scoped_clients.tools import run_command


async def list_pages(section: str) -> str:
    """List the pages of a section of the documentation site."""
    # the model chose ``section``: pass it as an argument, never inside the shell's script
    result = await run_command(["sh", "-c", 'for p in intro install api; do echo "$1/$p"; done', "sh", section])
    return result.stdout.decode()


async def main(provider: LocalProvider | None = None) -> LeftRun:
    if provider is None:
        with LocalProvider(token_interval=0.01) as local:
            return await main(local)
    # The embedded provider plays the model: the first turn calls the tool, the next one writes 300 tokens.
    provider.script(Reply(tool_calls=[ToolCall("list_pages", {"section": "guide"})]))
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
    model = OpenAIChatModel("local-300", provider=OpenAIProvider(openai_client=llm))
    agent = Agent(model, instructions="List the pages, then summarise them.", model_settings={"max_tokens": 400})
    agent.tool_plain(list_pages)

    async def answer() -> None:
        result = await agent.run("What is in the guide?")
        print(f"answer: {result.output}")  # not reached: the user left first

    # What a request handler under ScopeMiddleware does; the user leaves once the final answer
    # streams (watched on the embedded provider), and the report is printed.
    run = await leave_mid_answer(provider, answer)
    await llm.close()
    return run


if __name__ == "__main__":
    if sys.platform == "win32":  # process groups are POSIX
        raise SystemExit("this example needs a POSIX system")
    asyncio.run(main())
