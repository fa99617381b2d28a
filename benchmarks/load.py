"""1,000 concurrent in-flight streams, all cancelled at once.

    python benchmarks/load.py [--streams 1000] [--reps 3]

Two shapes: one RequestScope per stream (a server shutting down) and one
scope owning every stream (one cancel).  Reports the time until the upstream
saw the last disconnect (target < 50 ms) and the event loop's worst lag
meanwhile (a 1 ms ticker).  Baseline: raw clients whose tasks are cancelled by
hand.  The provider runs in its own process.

Each stream gets a unit every 0.25 s: 4,000 units/s in all, the aggregate
rate of cancel_latency.py.  Faster streams (say 20 units/s each) saturate a
2-core machine's event loop before any cancel, and every figure then measures
that backlog rather than the cancellation (try ``--interval 0.05``).
"""

from __future__ import annotations

import argparse
import functools
import resource

import anyio
from _common import machine, median, percentile, table, verdict
from _remote import RemoteProvider
from cancel_latency import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between a stream's units")
    args = parser.parse_args()
    path = f"/units?n=1000000&interval={args.interval}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.streams + 256)), hard))
    rows = []
    with RemoteProvider() as provider:
        for backend in ("asyncio", "trio"):
            for label, scoped_mode, one_scope in (
                ("raw, tasks cancelled by hand", False, False),
                ("scoped, one scope per stream", True, False),
                ("scoped, one scope owning all", True, True),
            ):
                job = functools.partial(run, provider, args.streams, scoped_mode, one_scope=one_scope, path=path)
                runs = [anyio.run(job, backend=backend) for _ in range(args.reps)]
                lasts = [max(latencies) for latencies, _, _, _ in runs]
                rows.append(
                    [
                        backend,
                        label,
                        args.streams,
                        f"{median(median(r[0]) for r in runs):.1f}",
                        f"{median(percentile(r[0], 99) for r in runs):.1f}",
                        f"{median(lasts):.1f} ({min(lasts):.1f}-{max(lasts):.1f})",
                        max(r[1] for r in runs),
                        f"{median(r[2] for r in runs):.1f} -> {median(r[3] for r in runs):.1f}",
                        verdict(median(lasts) < 50) if scoped_mode else "-",
                    ]
                )
    print(f"Machine: {machine()}\n")
    print(f"{args.reps} runs each; medians over the runs.\n")
    headers = [
        "backend",
        "client",
        "streams",
        "p50 ms",
        "p99 ms",
        "last disconnect ms, median (min-max)",
        "max units after",
        "worst loop lag ms, steady -> during cancel",
        "median last < 50 ms",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
