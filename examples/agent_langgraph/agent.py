"""A LangGraph agent under a RequestScope: the user leaves while the agent writes its answer.

Run:  python examples/agent_langgraph/agent.py

A tool-calling graph (model node, ``ToolNode``, back to the model): the first turn
calls a tool (a subprocess, run with ``run_command``), the second writes a long
answer; the user leaves (the scope is cancelled) as that answer starts to stream
in.  The provider sees the disconnect within a few ms, LangGraph does not retry
the node, no later turn is sent, and the report lists every call.  Needs
``pip install scoped-clients[langchain] langgraph langchain-openai``: ``scope_model()``
scopes the clients ChatOpenAI built and keeps a cancel a cancellation (not the
``AttributeError`` langchain-core makes of it); ``retry_policy()`` never retries once
the scope is cancelled.  Runs on the embedded provider (no API key), on asyncio.

The answer's ``tokens_saved`` is never 0: tool-calling turns are learned apart from text answers, so with
no answer learned yet it comes from the prior (``saved_method="default"``, see the README).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import SecretStr
from scoped_clients_langchain import retry_policy, scope_model

from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.testing import LeftRun, leave_mid_answer
from scoped_clients.tools import run_command


@tool
async def list_pages(section: str) -> str:
    """List the pages of a section of the documentation site."""
    # the model chose ``section``: pass it as an argument, never inside the shell's script
    result = await run_command(["sh", "-c", 'for p in intro install api; do echo "$1/$p"; done', "sh", section])
    return result.stdout.decode()


def build_graph(provider_url: str) -> Any:
    chat = ChatOpenAI(model="local-300", base_url=provider_url + "/v1", api_key=SecretStr("local"), max_tokens=400)
    llm = scope_model(chat).bind_tools([list_pages])

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model, retry_policy=retry_policy(max_attempts=3))
    graph.add_node("tools", ToolNode([list_pages]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


async def main(provider: LocalProvider | None = None) -> LeftRun:
    if provider is None:
        with LocalProvider(token_interval=0.01) as local:
            return await main(local)
    # The embedded provider plays the model: the first turn calls the tool, the next one writes 300 tokens.
    provider.script(Reply(tool_calls=[ToolCall("list_pages", {"section": "guide"})]))
    graph = build_graph(provider.url)

    async def answer() -> None:
        state = await graph.ainvoke({"messages": [("user", "What is in the guide?")]})
        print(f"answer: {state['messages'][-1].content}")  # not reached: the user left first

    # What a request handler under ScopeMiddleware does; the user leaves once the final answer
    # streams (watched on the embedded provider), and the report is printed.
    run = await leave_mid_answer(provider, answer)
    return run


if __name__ == "__main__":
    if sys.platform == "win32":  # process groups are POSIX
        raise SystemExit("this example needs a POSIX system")
    asyncio.run(main())
