"""Memory and open descriptors across 10,000 scopes with random cancellation points: must stay flat.

    python benchmarks/memory.py [--scopes 10000]
    python benchmarks/memory.py --in-process [--scopes 100000] [--backend trio]

Each scope streams a short response and is cancelled before the call, during
the body, after it, or not at all (seeded RNG); RSS (psutil) and open file
descriptors are sampled every 1,000 scopes.  The raw client doing the same
requests (tasks cancelled by hand at the same points) is the baseline.

``--in-process``: no provider and no network, so 100,000 scopes take a minute or two:
one scope after another, each streaming a two-chunk body from an in-process transport
through the scoped client (a tenth cancelled mid-body); RSS, the Python heap
(tracemalloc) and the number of objects the collector tracks, every 10,000 scopes.
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


async def run_in_process(scopes: int) -> list[tuple[int, float, float, int]]:
    """Scopes one after another, streaming from an in-process transport: (scopes, RSS MiB, heap KiB, gc objects)."""
    import socket
    import tracemalloc

    sock = socket.socket()  # the response's socket, as httpcore's have (never written to)

    class Stream:
        def get_extra_info(self, name: str) -> Any:
            return sock if name == "socket" else None

    class Body(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield b"unit\n"
            yield b"unit\n"

    class Transport(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            headers = {"content-type": "text/plain"}
            return httpx2.Response(200, headers=headers, stream=Body(), extensions={"network_stream": Stream()})

    rng = random.Random(23)
    process = psutil.Process()
    samples: list[tuple[int, float, float, int]] = []
    tracemalloc.start()
    try:
        async with scoped.AsyncClient(transport=Transport()) as client:
            for done in range(1, scopes + 1):
                cancel = rng.random() < 0.1
                async with (
                    RequestScope() as scope,
                    client.stream("GET", "http://in-process.test/units") as response,
                ):
                    async for _ in response.aiter_raw():
                        if cancel:
                            scope.cancel("client_disconnected")
                if done % 10_000 == 0:
                    gc.collect()
                    heap = tracemalloc.get_traced_memory()[0] / 2**10
                    samples.append((done, process.memory_info().rss / 2**20, heap, len(gc.get_objects())))
    finally:
        tracemalloc.stop()
        sock.close()
    return samples


def in_process(scopes: int, backend: str) -> None:
    samples = anyio.run(run_in_process, scopes, backend=backend)
    rows = [[f"{n:,}", f"{rss:.1f}", f"{heap:,.0f}", f"{objects:,}"] for n, rss, heap, objects in samples]
    print(f"Machine: {machine()}; {backend}, in-process transport\n")
    print(table(["scopes", "RSS MiB", "Python heap KiB (tracemalloc)", "objects tracked by gc"], rows))
    first, last = samples[0], samples[-1]
    growth = last[2] - first[2]
    print(
        f"\nfrom {first[0]:,} to {last[0]:,} scopes: heap {growth:+,.0f} KiB, RSS {last[1] - first[1]:+.1f} MiB, "
        f"objects {last[3] - first[3]:+,} -> flat: {verdict(growth < 64 and last[3] - first[3] < 100)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scopes", type=int, default=None, help="default 10,000 (100,000 with --in-process)")
    parser.add_argument("--in-process", action="store_true", help="no provider, no network (see above)")
    parser.add_argument("--backend", default="asyncio", help="--in-process only")
    args = parser.parse_args()
    if args.in_process:
        in_process(args.scopes or 100_000, args.backend)
        return
    args.scopes = args.scopes or 10_000
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
