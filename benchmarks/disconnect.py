"""Disconnect scenarios through real uvicorn, repeated: raw SDK app vs scoped app, same code otherwise.

    python benchmarks/disconnect.py [--reps 3]

The scenarios and the sample app are the demo's (``scoped_clients.demo``):
streaming chat, non-streaming chat, RAG (search -> rerank -> LLM),
non-streaming Anthropic messages, fire-and-forget task, tool subprocess.
Each request is dropped by a raw socket once the upstream is busy; the
provider's log says what happened next.  "Tasks left" counts the app's asyncio
tasks 100 ms after the drop, above its idle baseline.
Targets: at most 1 unit after the drop, p99 latency < 5 ms, zero late calls,
zero tasks left.
"""

from __future__ import annotations

import argparse

from _common import machine, median, percentile, table, verdict

from scoped_clients.demo.scenarios import SCENARIOS, Outcome, run_scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rows = []
    results = run_scenarios(args.reps, count_tasks=True)
    for scenario in SCENARIOS:
        raw, scoped = results[scenario.name]["raw"], results[scenario.name]["scoped"]
        latencies = [o.latency_ms for o in scoped if o.latency_ms is not None]
        units = [o.units_after_drop for o in scoped]
        late = [o.calls_after_drop for o in scoped]
        tasks = [o.tasks_left if o.tasks_left is not None else 99 for o in scoped]
        ok = (
            max(units) <= 1
            and max(late) == 0
            and max(tasks) == 0
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
