"""Memory and open descriptors across 10,000 scopes with random cancellation points: must stay flat.

    python benchmarks/memory.py [--scopes 10000]

Each scope streams a short response and is cancelled before the call, during
the body, after it, or not at all (seeded RNG); RSS (psutil) and open file
descriptors are sampled every 1,000 scopes.  The raw client doing the same
requests (tasks cancelled by hand at the same points) is the baseline.
"""

from __future__ import annotations

import argparse
import gc
import random
from typing import Any

import anyio
import httpx2
import psutil
from _common import machine, table, verdict
from _remote import RemoteProvider

import scoped_clients.httpx2 as scoped
from scoped_clients import RequestScope

PATH = "/units?n=4&interval=0.001"
BATCH = 50


async def run(provider: RemoteProvider, scopes: int, scoped_mode: bool) -> list[tuple[int, float, int]]:
    process = psutil.Process()
    rng = random.Random(42)
    client: Any = scoped.AsyncClient() if scoped_mode else httpx2.AsyncClient()
    samples: list[tuple[int, float, int]] = []

    async def one(point: int) -> None:
        async def body(cancel: Any) -> None:
            if point == 0:
                cancel()
            async with client.stream("GET", provider.url + PATH) as response:
                n = 0
                async for _ in response.aiter_raw():
                    n += 1
                    if n == point:
                        cancel()

        if scoped_mode:
            async with RequestScope() as scope:
                await body(lambda: scope.cancel("client_disconnected"))
        else:
            with anyio.CancelScope() as cs:
                await body(cs.cancel)

    async with client:
        done = 0
        while done < scopes:
            async with anyio.create_task_group() as tg:
                for _ in range(BATCH):
                    tg.start_soon(one, rng.choice([0, 1, 2, 9]))
            done += BATCH
            if done % 1000 == 0:
                gc.collect()
                samples.append((done, process.memory_info().rss / 2**20, process.num_fds()))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scopes", type=int, default=10_000)
    args = parser.parse_args()
    with RemoteProvider(token_interval=0.0) as provider:
        results = {mode: anyio.run(run, provider, args.scopes, mode == "scoped") for mode in ("raw", "scoped")}
    rows = []
    for i, (done, rss_raw, fds_raw) in enumerate(results["raw"]):
        _, rss_scoped, fds_scoped = results["scoped"][i]
        rows.append([done, f"{rss_raw:.1f}", f"{rss_scoped:.1f}", fds_raw, fds_scoped])
    first, last = results["scoped"][0], results["scoped"][-1]
    growth = last[1] - first[1]
    print(f"Machine: {machine()}\n")
    print(table(["scopes", "raw RSS MiB", "scoped RSS MiB", "raw open fds", "scoped open fds"], rows))
    print(
        f"\nscoped, from {first[0]:,} to {last[0]:,} scopes: RSS {growth:+.1f} MiB, fds {last[2] - first[2]:+d} "
        f"-> flat: {verdict(growth < 5 and last[2] <= first[2] + 2)}"
    )


if __name__ == "__main__":
    main()
