"""An agent loop with tools: a subprocess, a Python tool and an LLM, all stopped by one cancel.

Run:  python examples/agent_tools/agent.py

The agent starts a long shell "tool" and keeps asking the LLM; after 300 ms
the request is cancelled (as if the user left).  The subprocess group is
terminated, its output so far is kept, and the report lists every call.
"""

from __future__ import annotations

import sys

import anyio

from scoped_clients import RequestScope
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider
from scoped_clients.tools import CommandCancelled, run_command, tool


@tool(name="word_count")
def word_count(text: str) -> int:
    return len(text.split())


async def agent(llm: AsyncOpenAI) -> None:
    async with anyio.create_task_group() as tg:

        async def crawl() -> None:
            try:
                await run_command(["sh", "-c", "for i in $(seq 100); do echo page $i; sleep 0.05; done"])
            except CommandCancelled as exc:  # raised when the cancel reaches the command first
                print(f"crawler stopped; output so far: {exc.result.stdout.decode().split()[-2:]}")

        tg.start_soon(crawl)
        for step in range(10):
            completion = await llm.chat.completions.create(
                model="local-10", messages=[{"role": "user", "content": f"step {step}"}], max_tokens=100
            )
            print(f"step {step}: {await word_count(completion.choices[0].message.content or '')} words")


async def main() -> None:
    with LocalProvider(token_interval=0.01) as provider:
        llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
        async with RequestScope("agent") as scope:
            scope.spawn(agent, llm)
            await anyio.sleep(0.3)
            scope.cancel("client_disconnected")
        assert scope.report is not None
        for call in scope.report.calls:
            tail = str(call.detail.get("stdout_tail", "")).split()[-2:]
            extra = f" last output: {tail}" if call.provider == "tool" else ""
            print(f"  {call.provider:6} {call.operation:18} {call.outcome:9} tokens_saved={call.tokens_saved}{extra}")
        print(f"tokens saved in all: {scope.report.tokens_saved} (estimate), at most {scope.report.tokens_saved_max}")
        await llm.close()


if __name__ == "__main__":
    if sys.platform == "win32":  # process groups are POSIX
        raise SystemExit("this example needs a POSIX system")
    anyio.run(main)
