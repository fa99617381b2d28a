"""Soak: the randomized cancellation engine of tests/test_fuzz.py for 10,000+ iterations.

Every client (async and sync), cancel source and cancel point, against the embedded
provider; the invariants are the engine's (``tests/_fuzz.py``): no unexpected exception,
no late call, <= 1 unit after the cancel, one request per call, one record per call,
no growth of tasks, descriptors, threads or child processes between checkpoints.
Prints Markdown tables: iterations and violations per client, source and point, the
cancel -> upstream-disconnect latency the provider saw, and the process before/after.

    .venv/bin/python benchmarks/soak.py                      # 10,000 iterations, half per backend
    .venv/bin/python benchmarks/soak.py --iterations 2000 --seed 7

A violation prints its replay line: ``FUZZ_SEED=<seed> FUZZ_ITERATION=<i> pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import anyio
import psutil
from _common import machine, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _fuzz import POINTS, SHAPES, SOURCES, Engine, Result, draw_cases, percentile, running_provider


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.2f}" if values else "-"


def _all_refused(r: Result) -> bool:
    return all(c.outcome == "refused" for c in r.report.calls)


def _rows(results: list[Result], key: str, order: list[str]) -> list[list[object]]:
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[getattr(r.case, key) if key != "client" else f"{r.case.shape} ({r.case.mode})"].append(r)
    rows = []
    for name in [o for o in order if o in groups] + sorted(set(groups) - set(order)):
        rs = groups[name]
        lat = [ms for r in rs for ms in r.disconnect_ms]
        refused = sum(
            1 for r in rs if r.report is not None and r.report.calls and r.report.calls[0].outcome == "refused"
        )
        rows.append(
            [
                name,
                len(rs),
                sum(1 for r in rs if r.violations),
                sum(1 for r in rs if r.main == "returned"),
                refused,
                len(lat),
                _ms(lat, 50),
                _ms(lat, 99),
                f"{max(lat):.2f}" if lat else "-",
            ]
        )
    return rows


HEADERS = [
    "",
    "iterations",
    "violations",
    "completed",
    "refused (never started)",
    "disconnects seen",
    "p50 ms",
    "p99 ms",
    "max ms",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10_000, help="in total, split over the backends")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--backends", default="asyncio,trio")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    backends = args.backends.split(",")
    process = psutil.Process()
    results: list[Result] = []
    violations: list[str] = []
    started = time.monotonic()
    print(f"soak: {args.iterations} iterations, seed {seed}, backends {backends}", flush=True)
    with running_provider() as provider:
        before = (process.memory_info().rss, process.num_fds())
        for k, backend in enumerate(backends):
            run_seed = seed + k
            engine = Engine(provider, run_seed)
            engine.prepare()
            cases = draw_cases(run_seed, args.iterations // len(backends))

            async def soak(engine: Engine = engine, cases: list = cases) -> None:  # type: ignore[type-arg]
                await engine.run(cases, checkpoint_every=100, stop_on_violation=False)

            t0 = time.monotonic()
            anyio.run(soak, backend=backend)
            bad = [r for r in engine.results if r.violations]
            print(
                f"{backend}: {len(engine.results)} iterations in {time.monotonic() - t0:.0f} s, "
                f"{len(bad)} with violations (seed {run_seed})",
                flush=True,
            )
            violations += [f"[{backend}] " + engine.explain(r) for r in bad]
            results += engine.results
            base, last = engine.checkpoints[0], engine.checkpoints[-1]
            print(
                f"{backend} checkpoints ({len(engine.checkpoints)}): tasks {base.tasks} -> {last.tasks}, "
                f"descriptors {base.fds} -> {last.fds}, threads {base.threads} -> {last.threads}, "
                f"worker threads {base.pool_threads} -> {last.pool_threads}, children {last.children}, "
                f"RSS {base.rss / 2**20:.1f} -> {last.rss / 2**20:.1f} MiB",
                flush=True,
            )
        after = (process.memory_info().rss, process.num_fds())
    elapsed = time.monotonic() - started
    print()
    print(f"Machine: {machine()}")
    print(f"{len(results)} iterations in {elapsed:.0f} s, seed {seed} ({', '.join(backends)}: seed, seed+1, ...)")
    print()
    print("#### Per client (mode)\n")
    print(table(["client", *HEADERS[1:]], _rows(results, "client", [])))
    print("\n#### Per cancel source\n")
    print(table(["source", *HEADERS[1:]], _rows(results, "source", list(SOURCES))))
    print("\n#### Per cancel point\n")
    print(table(["point", *HEADERS[1:]], _rows(results, "point", list(POINTS))))
    print("\n#### Where the call ran\n")
    print(table(["call in", *HEADERS[1:]], _rows(results, "placement", ["body", "spawn", "outside", "thread"])))
    lat = [ms for r in results for ms in r.disconnect_ms]
    print("\n#### Totals and the process\n")
    print(
        table(
            [
                "iterations",
                "violations",
                "disconnects seen",
                "p50 ms",
                "p99 ms",
                "max ms",
                "RSS MiB before -> after",
                "descriptors before -> after",
            ],
            [
                [
                    len(results),
                    sum(1 for r in results if r.violations),
                    len(lat),
                    _ms(lat, 50),
                    _ms(lat, 99),
                    f"{max(lat):.2f}" if lat else "-",
                    f"{before[0] / 2**20:.1f} -> {after[0] / 2**20:.1f}",
                    f"{before[1]} -> {after[1]}",
                ]
            ],
        )
    )
    print(f"\nshapes covered: {len({r.case.shape for r in results})} of {len(SHAPES)}")
    if violations:
        print("\n#### Violations\n")
        for v in violations:
            print(v)
            print()
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
