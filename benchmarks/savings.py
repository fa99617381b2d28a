"""How right the savings figures are, against the provider's ground truth.

    python benchmarks/savings.py [--calls 300]

A workload with varied output lengths (models ``local-N``, N drawn from a
seeded lognormal, ``max_tokens`` 400): the first third completes (the
estimator learns from it), the rest is cancelled after a random number of
tokens.  For each aborted call the provider knows what it would have produced
(N) and what it produced (its units); we compare:

* ``tokens_saved_max`` with ``max_tokens - produced``: must be exact, except
  for a unit the provider wrote while the abort was under way (the one unit
  after the cancel the other benchmarks allow): the client never receives it
  and cannot count it, so the figure is then high by that unit.  The table
  says how many misses there were and whether each is such a unit;
* ``tokens_saved`` (the estimate) with ``min(N, max_tokens) - produced``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import anyio
from _common import machine, median, percentile, table, verdict

from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider

MAX_TOKENS = 400


async def run(calls: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows: list[dict[str, Any]] = []
    with LocalProvider(token_interval=0.002) as provider:
        llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
        for i in range(calls):
            natural = max(5, min(1200, int(rng.lognormvariate(5.0, 0.6))))
            train = i < calls // 3
            stop_after = rng.randint(1, max(1, min(natural, MAX_TOKENS) - 1))
            if train:
                stop_after = 10**9  # run to the end: the estimator learns from it
            provider.reset()
            scope = RequestScope()
            received = 0
            reached = anyio.Event()

            async def consume(natural: int = natural, stop_after: int = stop_after, reached: Any = reached) -> None:
                nonlocal received
                try:
                    stream = await llm.chat.completions.create(
                        model=f"local-{natural}",
                        messages=[{"role": "user", "content": "go"}],
                        max_tokens=MAX_TOKENS,
                        stream=True,
                    )
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            received += 1
                            if received == stop_after:
                                reached.set()
                except ScopeCancelled:
                    pass
                reached.set()

            t_cancel = 0.0
            async with anyio.create_task_group() as tg, scope:
                tg.start_soon(consume)
                await reached.wait()
                if not train:
                    t_cancel = time.monotonic()
                    scope.cancel("client_disconnected")
            if train:
                continue
            (log,) = provider.requests
            await anyio.to_thread.run_sync(log.wait_done)
            (record,) = scope.report.calls  # type: ignore[union-attr]
            produced = len(log.units)
            rows.append(
                {
                    "saved_max": record.tokens_saved_max,
                    "true_max": MAX_TOKENS - produced,
                    "saved": record.tokens_saved,
                    "true_remaining": min(natural, MAX_TOKENS) - produced,
                    "method": record.saved_method,
                    "after_cancel": log.units_after(t_cancel),
                }
            )
        await llm.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    rows = anyio.run(run, args.calls)
    exact = sum(1 for r in rows if r["saved_max"] == r["true_max"])
    misses = [r for r in rows if r["saved_max"] != r["true_max"]]
    explained = sum(1 for r in misses if r["saved_max"] - r["true_max"] == r["after_cancel"])
    worst = max((abs(r["saved_max"] - r["true_max"]) for r in rows), default=0)
    errors = [r["saved"] - r["true_remaining"] for r in rows]
    absolute = [abs(e) for e in errors]
    truth = statistics.fmean(r["true_remaining"] for r in rows)
    print(f"Machine: {machine()}\n")
    print(
        table(
            [
                "figure",
                "aborted calls",
                "exact",
                "max abs error",
                "median abs error",
                "p90 abs error",
                "mean error (bias)",
                "mean truth",
                "verdict",
            ],
            [
                [
                    "tokens_saved_max",
                    len(rows),
                    f"{exact}/{len(rows)}",
                    worst,
                    "-",
                    "-",
                    "-",
                    "-",
                    verdict(exact == len(rows)),
                ],
                [
                    "tokens_saved (estimate)",
                    len(rows),
                    "-",
                    max(absolute),
                    f"{median(absolute):.0f}",
                    f"{percentile(absolute, 90):.0f}",
                    f"{statistics.fmean(errors):+.0f}",
                    f"{truth:.0f}",
                    "-",
                ],
            ],
        )
    )
    if misses:
        print(
            f"\ntokens_saved_max misses: {len(misses)}; {explained} of them are exactly the units the provider "
            "produced after the cancel (written while the abort was under way, never received by the client)."
        )
    methods = sorted({r["method"] for r in rows})
    print(f"\nEstimate methods used: {', '.join(methods)}.")


if __name__ == "__main__":
    main()
