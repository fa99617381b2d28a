"""1,000 concurrent in-flight streams, all cancelled at once.

    python benchmarks/load.py [--streams 1000] [--reps 3] [--plot benchmarks/load.png]

Two shapes: one RequestScope per stream (a server shutting down) and one
scope owning every stream (one cancel).  Reports the time until the upstream
saw the last disconnect (target < 20 ms) and the event loop's worst lag
from the cancel until every stream's task has unwound (a 1 ms ticker), with
the CPU time of the loop's longest turn in that window (steadier than the
ticker on a shared machine), and the client's own loop of cancels, wall and
CPU (at its end every socket is shut down; the CPU figure leaves out the time
another process held the core).  Baseline: raw clients whose tasks are cancelled by
hand.  The provider runs in its own process.  The first row is the provider's
own floor: as many bare sockets (no HTTP library) opened by this process and
shut down in one tight loop, measured the same way.

``--plot PATH`` also draws every stream's latency (cancel -> the upstream saw it
go), raw vs scoped, one panel per backend, as a PNG; it needs matplotlib
(``pip install 'scoped-clients[bench]'``).  Without it the tables are printed
all the same.

Each stream gets a unit every 0.25 s: 4,000 units/s in all, the aggregate
rate of cancel_latency.py.  Faster streams (say 20 units/s each) saturate a
2-core machine's event loop before any cancel, and every figure then measures
that backlog rather than the cancellation (try ``--interval 0.05``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import os
import resource
import textwrap

import anyio
from _common import machine, median, percentile, table, verdict
from _remote import RemoteProvider
from cancel_latency import floor, run

BACKENDS = ("asyncio", "trio")
CLIENTS = (  # label, scoped, one scope owning every stream
    ("raw, tasks cancelled by hand", False, False),
    ("scoped, one scope per stream", True, False),
    ("scoped, one scope owning all", True, True),
)
TARGET_MS = 20.0  # issue 23 (issue 6 asked for < 50 ms)
#: the provider's own floor: as many bare sockets, shut down in one tight loop by this process (no HTTP library)
FLOOR = "floor: bare sockets shut down in a loop"
NO_MATPLOTLIB = "the plot needs matplotlib: pip install 'scoped-clients[bench]' (or pip install matplotlib)"

#: every stream's latency (ms) of every run, per (backend, client label)
Latencies = dict[tuple[str, str], list[list[float]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between a stream's units")
    parser.add_argument(
        "--plot", metavar="PATH", help="write each stream's latency, raw vs scoped, as a PNG (needs matplotlib)"
    )
    args = parser.parse_args()
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(f"note: {NO_MATPLOTLIB}; running the benchmark without it\n")
    path = f"/units?n=1000000&interval={args.interval}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.streams + 256)), hard))
    load_before = os.getloadavg()[0]
    rows = []
    latencies: Latencies = {}
    with RemoteProvider() as provider:
        floors = [floor(provider, args.streams, path) for _ in range(args.reps)]
        latencies["-", FLOOR] = [f[0] for f in floors]
        lasts = [max(f[0]) for f in floors]
        rows.append(
            [
                "-",
                FLOOR,
                args.streams,
                f"{median(median(f[0]) for f in floors):.1f}",
                f"{median(percentile(f[0], 99) for f in floors):.1f}",
                f"{median(lasts):.1f} ({min(lasts):.1f}-{max(lasts):.1f})",
                max(f[1] for f in floors),
                f"{median(f[2] for f in floors):.1f} / {median(f[3] for f in floors):.1f}",
                "-",
                "-",
                "-",
                "-",
            ]
        )
        for backend in BACKENDS:
            for label, scoped_mode, one_scope in CLIENTS:
                job = functools.partial(run, provider, args.streams, scoped_mode, one_scope=one_scope, path=path)
                runs = [anyio.run(job, backend=backend) for _ in range(args.reps)]
                latencies[backend, label] = [r.latencies for r in runs]
                lasts = [max(r.latencies) for r in runs]
                rows.append(
                    [
                        backend,
                        label,
                        args.streams,
                        f"{median(median(r.latencies) for r in runs):.1f}",
                        f"{median(percentile(r.latencies, 99) for r in runs):.1f}",
                        f"{median(lasts):.1f} ({min(lasts):.1f}-{max(lasts):.1f})",
                        max(r.units_after for r in runs),
                        f"{median(r.cancels for r in runs):.1f} / {median(r.cancels_cpu for r in runs):.1f}",
                        f"{median(r.lag_before for r in runs):.1f} -> {median(r.lag_during for r in runs):.1f}",
                        f"{median(r.longest_turn for r in runs):.1f}",
                        f"{median(r.unwound for r in runs):.0f}",
                        verdict(median(lasts) < TARGET_MS) if scoped_mode else "-",
                    ]
                )
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    print(f"Machine: {machine()}\n")
    print(f"{args.reps} runs each; medians over the runs; {load}.\n")
    headers = [
        "backend",
        "client",
        "streams",
        "p50 ms",
        "p99 ms",
        "last disconnect ms, median (min-max)",
        "max units after",
        "cancel loop ms, wall / CPU",
        "worst loop lag ms, steady -> during cancel",
        "longest loop turn, CPU ms",
        "all unwound ms",
        f"median last < {TARGET_MS:.0f} ms",
    ]
    print(table(headers, rows))
    if not args.plot:
        print("\nAdd --plot PATH for a picture of every stream's latency (needs matplotlib).")
    elif importlib.util.find_spec("matplotlib") is None:
        print(f"\nNo plot written: {NO_MATPLOTLIB}.")
    else:
        plot(latencies, args.plot, streams=args.streams, reps=args.reps, interval=args.interval, load=load)
        print(f"\nPlot: {args.plot}")


def plot(latencies: Latencies, path: str, *, streams: int, reps: int, interval: float, load: str) -> None:
    """Every stream's latency as an ECDF: one panel per backend, one curve per client, runs pooled."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, PercentFormatter

    colours = {CLIENTS[0][0]: "#c0392b", CLIENTS[1][0]: "#2471a3", CLIENTS[2][0]: "#17a589"}
    styles = {CLIENTS[0][0]: "-", CLIENTS[1][0]: "-", CLIENTS[2][0]: "--"}
    every = [ms for runs in latencies.values() for one in runs for ms in one]
    low, high = max(0.1, min(every) * 0.8), max(max(every) * 1.25, TARGET_MS * 1.5)
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if low <= t <= high]
    fig, axes = plt.subplots(1, len(BACKENDS), figsize=(10.5, 5.2), sharey=True, layout="constrained")
    for ax, backend in zip(axes, BACKENDS, strict=True):
        for label, _, _ in CLIENTS:
            pooled = sorted(ms for one in latencies[backend, label] for ms in one)
            last = median(max(one) for one in latencies[backend, label])
            share = [(i + 1) / len(pooled) for i in range(len(pooled))]
            ax.step(
                pooled,
                share,
                where="post",
                color=colours[label],
                linestyle=styles[label],
                linewidth=1.8,
                label=f"{label}: last {last:.0f} ms",
            )
        ax.axvline(TARGET_MS, color="#555555", linestyle=":", linewidth=1.2)
        ax.text(
            TARGET_MS / 1.05,
            0.02,
            f"target: last < {TARGET_MS:.0f} ms",
            fontsize=8,
            color="#555555",
            ha="right",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1},
        )
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(_plain_ms)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1.02)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(backend)
        ax.set_xlabel("cancel -> upstream saw the disconnect (ms, log scale)")
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.17),
            fontsize=8,
            title="last disconnect: median of the runs",
            title_fontsize=8,
        )
    axes[0].set_ylabel(f"streams disconnected (% of {streams:,})")
    fig.suptitle(
        f"{streams:,} streams cancelled at once: when the upstream saw each one go "
        f"({reps} run{'s' * (reps != 1)} pooled, a unit every {interval:g} s per stream)",
        fontsize=11,
    )
    note = textwrap.fill(f"{machine()}; {load}; {datetime.date.today()}", 150)
    fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7)
    fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _plain_ms(value: float, _pos: int) -> str:
    return f"{value:g}"


if __name__ == "__main__":
    main()
