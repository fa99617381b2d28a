"""Disconnect scenarios through real uvicorn, repeated: raw SDK app vs scoped app, same code otherwise.

    python benchmarks/disconnect.py [--reps 3] [--only "MCP tool"]

The scenarios and the sample app are the demo's (``scoped_clients.demo``):
streaming chat, non-streaming chat, RAG (search -> rerank -> LLM),
non-streaming Anthropic messages, non-streaming Gemini ``generate_content``
(google-genai raw, on the aiohttp session it picks, vs ``scoped_clients.google_genai``),
the same Anthropic messages through LiteLLM (``anthropic/``, when LiteLLM is installed),
fire-and-forget task, tool subprocess, and
one agent loop per framework (openai-agents, pydantic-ai, LangGraph: an LLM
turn that calls a subprocess tool, the tool, a final LLM turn), dropped while
the tool runs, and an MCP tool (the MCP SDK's own server in its own process,
streamable HTTP) called from a task the request does not cancel: the vendor's
``mcp.Client`` in the raw app, ``scoped_clients.mcp.Client`` in the scoped one
(units: the tool's ticks after the drop; the disconnect: its handler cancelled,
both as the server's handler noted them).  A framework or SDK that is not
installed gets an "n/a" row saying what to install.  Each request is dropped
by a raw socket once the upstream is busy; the provider's log and the tool's
own tick file say what happened next (agent rows: LLM units plus tool ticks
after the drop; the disconnect is seen when the tool's process is gone).  "Tasks left" counts the app's asyncio
tasks 100 ms after the drop, above its idle baseline; "tool processes left"
the tool's process (MCP: the server's tool handler) still running then.
Targets: at most 1 unit after the drop, p99 latency < 5 ms, zero late calls,
zero tasks and tool processes left.
"""

from __future__ import annotations

import argparse

from _common import machine, median, percentile, table, verdict

from scoped_clients.demo.scenarios import AGENT_SCENARIOS, BASE_SCENARIOS, MCP_SCENARIOS, Outcome, run_scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", action="append", help="only the scenarios whose name contains this (repeatable)")
    args = parser.parse_args()
    rows = []
    scenarios = [*BASE_SCENARIOS, *AGENT_SCENARIOS, *MCP_SCENARIOS]
    if args.only:
        scenarios = [s for s in scenarios if any(part in s.name for part in args.only)]
    runnable = [s for s in scenarios if s.available()]
    results = run_scenarios(args.reps, count_tasks=True, scenarios=runnable)
    for scenario in scenarios:
        if not scenario.available():
            rows.append([scenario.name, f"n/a ({scenario.install()})", "", "", "", "", ""])
            continue
        raw, scoped = results[scenario.name]["raw"], results[scenario.name]["scoped"]
        latencies = [o.latency_ms for o in scoped if o.latency_ms is not None]
        units = [o.units_after_drop for o in scoped]
        late = [o.calls_after_drop for o in scoped]
        tasks = [o.tasks_left if o.tasks_left is not None else 99 for o in scoped]
        tools = [o.tools_left or 0 for o in scoped]
        ok = (
            max(units) <= 1
            and max(late) == 0
            and max(tasks) == 0
            and max(tools) == 0
            and len(latencies) == len(scoped)
            and percentile(latencies, 99) < 5
        )
        rows.append(
            [
                scenario.name,
                f"{_spread([o.units_after_drop for o in raw])} -> {_spread(units)}",
                f"{_latency(raw)} -> {_latency(scoped)}",
                f"{max(o.calls_after_drop for o in raw)} -> {max(late)}",
                f"{max(o.tasks_left or 0 for o in raw)} -> {max(tasks)}",
                f"{max(o.tools_left or 0 for o in raw)} -> {max(tools)}" if scenario.tool or scenario.mcp else "-",
                verdict(ok),
            ]
        )
    print(f"Machine: {machine()}\n")
    print(f"{args.reps} runs per scenario and app; medians with (min-max); raw SDK app -> scoped app.\n")
    print(
        table(
            [
                "scenario",
                "upstream units after drop",
                "drop -> upstream disconnect ms",
                "max calls started after drop",
                "max tasks left after 100 ms",
                "max tool processes left after 100 ms",
                "targets",
            ],
            rows,
        )
    )


def _spread(values: list[int]) -> str:
    return f"{median(values):.0f} ({min(values)}-{max(values)})"


def _latency(outcomes: list[Outcome]) -> str:
    seen = [o.latency_ms for o in outcomes if o.latency_ms is not None]
    if not seen:
        return "never (ran to the end)"
    never = len(outcomes) - len(seen)
    text = f"{median(seen):.2f} ({min(seen):.2f}-{max(seen):.2f})"
    return text + (f", {never} never" if never else "")


if __name__ == "__main__":
    main()
