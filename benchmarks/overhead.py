"""What the scope costs a streaming client: throughput, client CPU per chunk, latency per call.

    python benchmarks/overhead.py [--reps 5]

Raw and scoped clients run interleaved in the same process against the local
provider in its own process (token interval 0: it streams as fast as it can).
Targets: >= 97 % of the raw throughput, < 50 us added per call.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import httpx2
import openai
from _common import machine, median, table, verdict
from _remote import RemoteProvider

import scoped_clients.httpx
import scoped_clients.httpx2
import scoped_clients.openai
from scoped_clients import RequestScope

CHUNKS = 20_000
TOKENS = 3_000
CALLS = 300


async def stream_units(client: Any, url: str) -> int:
    n = 0
    async with client.stream("GET", f"{url}/units?n={CHUNKS}&interval=0") as response:
        async for chunk in response.aiter_raw():
            n += chunk.count(b"\n")
    return n


async def stream_chat(client: Any, url: str) -> int:
    stream = await client.chat.completions.create(
        model=f"local-{TOKENS}", messages=[{"role": "user", "content": "go"}], stream=True
    )
    n = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
    return n


async def measure(work: Callable[[], Awaitable[int]], scoped: bool) -> tuple[float, float]:
    """Units per second (wall) and client CPU microseconds per unit."""
    wall, cpu = time.perf_counter(), time.process_time()
    if scoped:
        async with RequestScope():
            units = await work()
    else:
        units = await work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return units / wall, cpu / units * 1e6


async def throughput(provider: RemoteProvider, reps: int) -> list[list[object]]:
    rows: list[list[object]] = []
    cases: list[tuple[str, Any, Any, Callable[[Any, str], Awaitable[int]]]] = [
        ("httpx stream", httpx.AsyncClient(), scoped_clients.httpx.AsyncClient(), stream_units),
        ("httpx2 stream", httpx2.AsyncClient(), scoped_clients.httpx2.AsyncClient(), stream_units),
        (
            "openai chat stream",
            openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x"),
            scoped_clients.openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x"),
            stream_chat,
        ),
    ]
    for name, raw, scoped, fn in cases:
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(reps):
            for is_scoped, client in ((False, raw), (True, scoped)):
                work = functools.partial(fn, client, provider.url)
                results[is_scoped].append(await measure(work, is_scoped))
        raw_rate = median(r for r, _ in results[False])
        scoped_rate = median(r for r, _ in results[True])
        rows.append(
            [
                name,
                f"{raw_rate:,.0f}",
                f"{scoped_rate:,.0f}",
                f"{min(r for r, _ in results[True]):,.0f} / {max(r for r, _ in results[True]):,.0f}",
                f"{scoped_rate / raw_rate:.1%}",
                f"{median(c for _, c in results[False]):.1f} -> {median(c for _, c in results[True]):.1f}",
                verdict(scoped_rate / raw_rate >= 0.97),
            ]
        )
        for client in (raw, scoped):
            await (client.aclose() if hasattr(client, "aclose") else client.close())
    return rows


async def per_call(provider: RemoteProvider, reps: int) -> list[list[object]]:
    url = f"{provider.url}/units?n=1&interval=0"
    raw, scoped = httpx2.AsyncClient(), scoped_clients.httpx2.AsyncClient()
    samples: dict[str, list[float]] = {"raw": [], "scoped": [], "scope per call": []}
    async with raw, scoped:
        for client in (raw, scoped):  # warm the pools
            await client.get(url)
        for _ in range(reps):
            for _ in range(CALLS):
                t = time.perf_counter()
                await raw.get(url)
                samples["raw"].append(time.perf_counter() - t)
                async with RequestScope():
                    t = time.perf_counter()
                    await scoped.get(url)
                    samples["scoped"].append(time.perf_counter() - t)
                t = time.perf_counter()
                async with RequestScope():
                    await scoped.get(url)
                samples["scope per call"].append(time.perf_counter() - t)
    base = median(samples["raw"]) * 1e6
    rows: list[list[object]] = []
    for name, values in samples.items():
        us = median(values) * 1e6
        added = us - base
        rows.append(
            [
                name,
                f"{us:.0f}",
                f"{min(values) * 1e6:.0f} / {max(values) * 1e6:.0f}",
                f"{added:+.0f}",
                "-" if name == "raw" else verdict(added < 50),
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    with RemoteProvider(token_interval=0.0) as provider:
        for backend in ("asyncio", "trio"):
            rows = anyio.run(throughput, provider, args.reps, backend=backend)
            print(f"### Streaming throughput ({backend}, {args.reps} interleaved runs each)\n")
            print(
                table(
                    [
                        "stream",
                        "raw units/s",
                        "scoped units/s",
                        "scoped min / max",
                        "ratio",
                        "client CPU us/unit raw -> scoped",
                        ">= 97 %",
                    ],
                    rows,
                )
            )
            rows = anyio.run(per_call, provider, args.reps, backend=backend)
            print(f"\n### Latency per small call ({backend}, {args.reps} x {CALLS} calls, medians)\n")
            print(table(["client", "us per call", "min / max", "added us", "< 50 us added"], rows))
            print()


if __name__ == "__main__":
    main()
