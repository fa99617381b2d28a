"""Where the microseconds of a scope go: cProfile over the three hot paths, per operation.

    python benchmarks/profile_paths.py [--backend asyncio] [--only idle,call,sse] [--top 15]

* ``idle``: ``async with RequestScope(): pass``, 5,000 times;
* ``call``: a small GET through the scoped ``httpx2.AsyncClient``, a scope open, 500 times
  (the raw client is profiled the same way, so the scoped-only functions stand out);
* ``sse``: one OpenAI chat stream of 3,000 chunks through the scoped client;
* ``mass`` (not in the default set): ``--streams`` streams cancelled at once, raw (cancel scopes
  cancelled by hand) and scoped (a scope per stream), profiled from the first cancel until every
  task has unwound; "per operation" is per stream.

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


def mass_work(provider: RemoteProvider, streams: int, scoped: bool, profiler: cProfile.Profile) -> Any:
    """``streams`` streams (a scope each, or raw tasks in cancel scopes), all cancelled at once; the profile
    runs from the first cancel until every task has unwound."""

    async def work() -> int:
        provider.reset()
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
        client: Any = (scoped_clients.httpx2.AsyncClient if scoped else httpx2.AsyncClient)(limits=limits)
        handles: list[Any] = []

        async def one(i: int) -> None:
            handle: Any = RequestScope(f"s{i}") if scoped else anyio.CancelScope()
            handles.append(handle)
            if scoped:
                async with handle:
                    await read()
            else:
                with handle:
                    await read()

        async def read() -> None:
            async with client.stream("GET", provider.url + "/units?n=100000&interval=0.25") as response:
                async for _ in response.aiter_raw():
                    pass

        async with client:
            async with anyio.create_task_group() as tg:
                for i in range(streams):
                    tg.start_soon(one, i)
                await anyio.to_thread.run_sync(
                    provider.wait, lambda log: len(log) == streams and all(len(e["units"]) >= 2 for e in log)
                )
                profiler.enable()
                for handle in handles:
                    handle.cancel() if isinstance(handle, anyio.CancelScope) else handle.cancel("client_disconnected")
            profiler.disable()
        return streams

    return work


def profile(name: str, work: Any, backend: str, top: int, profiler: cProfile.Profile | None = None) -> None:
    own = profiler is None
    profiler = profiler or cProfile.Profile()
    result: list[int] = []

    async def run() -> None:
        if own:
            profiler.enable()
        result.append(await work())
        if own:
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
    parser.add_argument("--streams", type=int, default=1000, help="streams cancelled at once (--only mass)")
    args = parser.parse_args()
    only = args.only.split(",")
    if "idle" in only:
        profile("idle RequestScope open + close", idle, args.backend, args.top)
    if "mass" in only:
        with RemoteProvider(token_interval=0.25) as provider:
            for scoped in (False, True):
                profiler = cProfile.Profile()
                what = "scoped, a scope per stream" if scoped else "raw, cancel scopes cancelled by hand"
                work = mass_work(provider, args.streams, scoped, profiler)
                profile(f"{args.streams} streams cancelled at once, {what}", work, args.backend, args.top, profiler)
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
