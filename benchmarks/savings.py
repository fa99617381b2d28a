"""How right the savings figures are, against the provider's ground truth.

    python benchmarks/savings.py [--calls 90]

For each kind of call (streamed and non-streamed text, streamed and non-streamed
tool calls, and the non-streamed ones again with ``always_stream=True``), a
workload with varied output lengths (``natural`` units drawn from a seeded
lognormal, ``max_tokens`` 400; text from models ``local-N``, tool calls scripted
with N argument pieces): the first third completes (the estimator learns lengths
and rates from it), the rest is cancelled once the provider has produced a random
number of units.  For each aborted call the provider knows what it would have
produced (``min(N, max_tokens)``) and what it did produce (its units), so:

* ``tokens_saved_max`` must be an upper bound of ``max_tokens - produced``
  (labelled ``upper_bound``); the table says how often it held and by how much
  it overshot.  For a stream it is off only by units the provider wrote while the
  abort was under way, which the client never received; for a non-streamed call
  it subtracts the units the provider probably produced (elapsed time times the
  model's learned rate) instead of nothing;
* ``tokens_saved`` (an ``estimate``) is set against ``min(N, max_tokens) - produced``;
* nothing may be labelled ``exact`` that is not.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import anyio
from _common import machine, median, percentile, table, verdict

from scoped_clients import RequestScope
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, Reply, ToolCall

MAX_TOKENS = 400
MESSAGES: Any = [{"role": "user", "content": "go"}]
TOOLS: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
#: name: (streamed, tool call, always_stream)
KINDS = {
    "streamed text": (True, False, False),
    "non-streamed text": (False, False, False),
    "non-streamed text, always_stream": (False, False, True),
    "streamed tool call": (True, True, False),
    "non-streamed tool call": (False, True, False),
    "non-streamed tool call, always_stream": (False, True, True),
}


def client(provider: LocalProvider, always_stream: bool) -> AsyncOpenAI | None:
    extra = {"always_stream": True} if always_stream else {}
    try:
        return AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0, **extra)
    except TypeError:  # a release without always_stream
        return None


async def one_call(
    llm: AsyncOpenAI, provider: LocalProvider, kind: str, natural: int, stop_after: int | None
) -> dict[str, Any] | None:
    """One call of ``kind``; cancelled once the provider produced ``stop_after`` units (None: completes)."""
    stream, tool, _ = KINDS[kind]
    model = f"tool-{natural}" if tool else f"local-{natural}"
    provider.reset()
    if tool:
        provider.script(Reply(tool_calls=[ToolCall("lookup", arguments=["ab"] * natural)]), model=model)
    scope = RequestScope()

    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": MAX_TOKENS,
    }
    if tool:
        request["tools"] = TOOLS

    async def call() -> None:
        async with scope:
            if stream:
                async for _ in await llm.chat.completions.create(stream=True, **request):
                    pass
            else:
                await llm.chat.completions.create(**request)

    t_cancel = 0.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        (log,) = await anyio.to_thread.run_sync(provider.wait_for_requests, 1)
        # A completed call is watched the same way as an aborted one (a thread woken at every
        # unit, sharing the in-process provider's GIL), so that the rates learned from
        # completed calls are those of the aborted ones.
        if stop_after is None:
            await anyio.to_thread.run_sync(log.wait_done)
        else:
            await anyio.to_thread.run_sync(log.wait_units, stop_after)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
    await anyio.to_thread.run_sync(log.wait_done)
    if stop_after is None:
        return None
    (record,) = scope.report.calls  # type: ignore[union-attr]
    produced = len(log.units)
    return {
        "saved_max": record.tokens_saved_max,
        "saved_max_source": record.tokens_saved_max_source,
        "true_max": MAX_TOKENS - produced,
        "saved": record.tokens_saved,
        "saved_source": record.tokens_saved_source,
        "true_remaining": min(natural, MAX_TOKENS) - produced,
        "method": record.saved_method,
        "after_cancel": log.units_after(t_cancel),
        "produced_source": record.tokens_produced_source,
    }


async def run(calls: int, kinds: list[str]) -> dict[str, list[dict[str, Any]] | None]:
    results: dict[str, list[dict[str, Any]] | None] = {}
    with LocalProvider(token_interval=0.002) as provider:
        for kind in kinds:
            always = KINDS[kind][2]
            llm = client(provider, always)
            if llm is None:
                results[kind] = None
                continue
            rng = random.Random(7)
            rows = []
            for i in range(calls):
                natural = max(5, min(1200, int(rng.lognormvariate(5.0, 0.6))))
                stop_after = rng.randint(1, max(1, min(natural, MAX_TOKENS) - 1))
                row = await one_call(llm, provider, kind, natural, None if i < calls // 3 else stop_after)
                if row is not None:
                    rows.append(row)
            await llm.close()
            results[kind] = rows
    return results


def summarise(kind: str, rows: list[dict[str, Any]] | None) -> list[object]:
    if rows is None:
        return [kind, "n/a (always_stream not supported yet)", *["-"] * 8]
    held = sum(1 for r in rows if r["saved_max"] >= r["true_max"])
    overshoot = [r["saved_max"] - r["true_max"] for r in rows]
    errors = [r["saved"] - r["true_remaining"] for r in rows]
    absolute = [abs(e) for e in errors]
    truth = sum(r["true_remaining"] for r in rows)
    sources = sorted({f"{r['saved_max_source']}/{r['saved_source']}" for r in rows})
    wrong_exact = sum(
        1
        for r in rows
        if (r["saved_max_source"] == "exact" and r["saved_max"] != r["true_max"])
        or (r["saved_source"] == "exact" and r["saved"] != r["true_remaining"])
    )
    return [
        kind,
        len(rows),
        ", ".join(sources),
        f"{held}/{len(rows)}",
        f"{min(overshoot)} / {median(overshoot):.0f} / {max(overshoot)}",
        f"{median(absolute):.0f}",
        f"{percentile(absolute, 90):.0f}",
        f"{statistics.fmean(errors):+.0f}",
        f"{(sum(r['saved'] for r in rows) - truth) / truth * 100:+.1f} %" if truth else "-",
        verdict(held == len(rows) and wrong_exact == 0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=90, help="calls per kind (a third complete, the rest aborted)")
    parser.add_argument("--kind", action="append", choices=list(KINDS), help="only these kinds (repeatable)")
    args = parser.parse_args()
    results = anyio.run(run, args.calls, args.kind or list(KINDS))
    print(f"Machine: {machine()}\n")
    headers = [
        "call kind",
        "aborted",
        "sources (max/saved)",
        "tokens_saved_max >= truth",
        "overshoot min / median / max",
        "tokens_saved median abs error",
        "p90 abs error",
        "mean error (bias)",
        "summed error",
        "verdict",
    ]
    print(table(headers, [summarise(kind, rows) for kind, rows in results.items()]))
    methods = sorted({r["method"] for rows in results.values() if rows for r in rows})
    print(f"\nEstimate methods used: {', '.join(methods)}.")
    print(
        "Overshoot: tokens_saved_max minus the truth (what the provider could still have produced). Streams: units "
        "written while the abort was under way. Non-streamed: what the elapsed-time estimate of the units produced "
        "fell short by."
    )


if __name__ == "__main__":
    main()
