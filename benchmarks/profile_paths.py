"""Where the microseconds of a scope go: cProfile over the three hot paths, per operation.

    python benchmarks/profile_paths.py [--backend asyncio] [--only idle,call,sse] [--top 15]

* ``idle``: ``async with RequestScope(): pass``, 5,000 times;
* ``call``: a small GET through the scoped ``httpx2.AsyncClient``, a scope open, 500 times
  (the raw client is profiled the same way, so the scoped-only functions stand out);
* ``sse``: one OpenAI chat stream of 3,000 chunks through the scoped client.

For each, the functions with the most own time (``tottime``), in microseconds per
operation, and the cumulative time of the package's entry points.  cProfile inflates
cheap functions (it charges each call ~0.1-0.3 us), so read shares and call counts,
not absolute figures; ``compare.py`` gives the real ones.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from typing import Any

import anyio
import httpx2
from _remote import RemoteProvider

import scoped_clients.httpx2
import scoped_clients.openai
from scoped_clients import RequestScope

IDLE = 5_000
CALLS = 500
TOKENS = 3_000


async def idle() -> int:
    for _ in range(IDLE):
        async with RequestScope():
            pass
    return IDLE


def call_work(client: Any, url: str, scoped: bool) -> Any:
    async def work() -> int:
        target = f"{url}/units?n=1&interval=0"
        await client.get(target)  # warm
        if scoped:
            async with RequestScope():
                for _ in range(CALLS):
                    await client.get(target)
        else:
            for _ in range(CALLS):
                await client.get(target)
        return CALLS

    return work


def sse_work(url: str) -> Any:
    async def work() -> int:
        client = scoped_clients.openai.AsyncOpenAI(base_url=url + "/v1", api_key="x")
        messages: Any = [{"role": "user", "content": "go"}]
        n = 0
        async with RequestScope():
            stream = await client.chat.completions.create(model=f"local-{TOKENS}", messages=messages, stream=True)
            async for _ in stream:
                n += 1
        await client.close()
        return n

    return work


def profile(name: str, work: Any, backend: str, top: int) -> None:
    profiler = cProfile.Profile()
    result: list[int] = []

    async def run() -> None:
        profiler.enable()
        result.append(await work())
        profiler.disable()

    anyio.run(run, backend=backend)
    ops = result[0]
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)
    ours = [item for item in ranked if "scoped_clients" in item[0][0]]
    ours_total = sum(tt for (_, _, tt, _, _) in (v for _, v in ours))
    print(f"\n### {name} ({backend}): {total / ops * 1e6:.1f} us of profiled time per operation, {ops} operations")
    print(f"\nscoped_clients' own functions: {ours_total / ops * 1e6:.2f} us per operation\n")
    for title, rows in (("all functions", ranked[:top]), ("scoped_clients only", ours[:top])):
        print(f"| function ({title}) | calls per op | own us per op | cumulative us per op |")
        print("|---|---|---|---|")
        for (filename, line, func), (_cc, nc, tt, ct, _callers) in rows:
            where = filename.split("site-packages/")[-1].split("src/")[-1].split("lib/python3.11/")[-1]
            print(f"| `{where}:{line}({func})` | {nc / ops:.2f} | {tt / ops * 1e6:.2f} | {ct / ops * 1e6:.2f} |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--only", default="idle,call,sse")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    only = args.only.split(",")
    if "idle" in only:
        profile("idle RequestScope open + close", idle, args.backend, args.top)
    if "call" in only or "sse" in only:
        with RemoteProvider(token_interval=0.0) as provider:
            if "call" in only:
                raw, scoped = httpx2.AsyncClient(), scoped_clients.httpx2.AsyncClient()
                profile("raw httpx2 GET", call_work(raw, provider.url, False), args.backend, args.top)
                profile("scoped httpx2 GET, scope open", call_work(scoped, provider.url, True), args.backend, args.top)
            if "sse" in only:
                profile("scoped OpenAI chat stream, per chunk", sse_work(provider.url), args.backend, args.top)


if __name__ == "__main__":
    main()
