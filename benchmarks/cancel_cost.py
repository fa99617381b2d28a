"""What one ``scope.cancel()`` costs the client: N scopes, each owning one in-flight stream, cancelled one by one.

    python benchmarks/cancel_cost.py [--backend asyncio] [--streams 1000] [--gc] [--parts]

Each ``cancel("client_disconnected")`` is timed alone (``perf_counter_ns``), in one loop over the
scopes, as a mass cancel makes them (the provider runs in its own process; every stream is in its body
when the loop starts).  Printed: the median, mean, p90 and max per cancel, the whole loop, the
garbage-collected objects each cancel leaves alive (what drives the collector during the loop) and,
with ``--gc``, every collection that ran inside the loop.  The collector is off during the loop unless
``--gc`` (then it is left as the streams left it: no ``gc.collect()`` first).

``--parts`` wraps the pieces of the cancel path in timers (each wrapper adds ~0.13 us, printed):
the reason (``coerce_reason``), the in-flight list, ``HttpCall.abort`` and in it ``shutdown_socket``
(the kernel's ``shutdown()``), and the post of the body's cancel to the loop.  It reads the names of
the tree it runs on, so ``PYTHONPATH=<an older src>`` times an older commit the same way.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
from _remote import RemoteProvider

import scoped_clients._loop as loop_module
import scoped_clients._registry as registry_module
import scoped_clients._scope as scope_module
import scoped_clients._transport._call as call_module
import scoped_clients.httpx2 as scoped
from scoped_clients import RequestScope

PATH = "/units?n=100000&interval=0.25"
now = time.perf_counter_ns


class Parts:
    """Timers around the cancel path's pieces: ``wrap`` replaces ``owner.name`` with a timed copy."""

    def __init__(self) -> None:
        self.times: dict[str, list[int]] = {}

    def timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        times = self.times.setdefault(label, [])

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = now()
            try:
                return fn(*args, **kwargs)
            finally:
                times.append(now() - t)

        return wrapper

    def wrap(self, owner: Any, name: str, label: str) -> None:
        if hasattr(owner, name):
            setattr(owner, name, self.timed(label, getattr(owner, name)))

    def install(self, scopes: list[RequestScope]) -> None:
        self.wrap(scope_module, "coerce_reason", "the reason (coerce_reason)")
        self.wrap(registry_module.CallRegistry, "in_flight_held", "the in-flight list")
        if not hasattr(registry_module.CallRegistry, "in_flight_held"):
            self.wrap(registry_module.CallRegistry, "in_flight", "the in-flight list")
        self.wrap(call_module.HttpCall, "abort", "HttpCall.abort, shutdown included")
        self.wrap(call_module, "shutdown_socket", "shutdown_socket (the kernel's shutdown())")
        if hasattr(loop_module.LoopHandle, "soon"):
            self.wrap(loop_module.LoopHandle, "soon", "the body's cancel posted (LoopHandle.soon)")
        else:  # before the batch: each scope's own poster
            for scope in scopes:
                handle: Any = scope._loop
                handle.post = self.timed("the body's cancel posted (LoopHandle.post)", handle.post)

    def overhead(self) -> float:
        probe = self.timed("probe", lambda: None)
        for _ in range(1000):
            probe()
        return statistics.median(self.times.pop("probe"))


async def measure(url: str, streams: int, collect: bool, parts: Parts | None) -> None:
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
    scopes: list[RequestScope] = []
    reading = anyio.Event()
    started = 0

    async def one(client: Any, i: int) -> None:
        nonlocal started
        async with RequestScope(f"s{i}") as scope:
            scopes.append(scope)
            async with client.stream("GET", url + PATH) as response:
                chunks = response.aiter_raw()
                await chunks.__anext__()
                started += 1
                if started == streams:
                    reading.set()
                async for _ in chunks:
                    pass

    async with scoped.AsyncClient(limits=limits) as client, anyio.create_task_group() as tg:
        for i in range(streams):
            tg.start_soon(one, client, i)
        await reading.wait()
        await anyio.sleep(0.3)
        overhead = 0.0
        if parts is not None:
            parts.install(scopes)
            overhead = parts.overhead()
        collections: list[tuple[int, float]] = []
        begun: list[int] = []

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                begun.append(now())
            else:
                collections.append((info["generation"], (now() - begun.pop()) / 1000))

        if collect:
            gc.callbacks.append(on_gc)
        else:
            gc.disable()
            gc.collect()
        count = gc.get_count()[0]
        times = []
        t0 = now()
        for scope in scopes:
            t = now()
            scope.cancel("client_disconnected")
            times.append(now() - t)
        total = now() - t0
        left = (gc.get_count()[0] - count) / streams
        if collect:
            gc.callbacks.remove(on_gc)
        else:
            gc.enable()
    times.sort()
    n = len(times)
    print(
        f"{streams} cancels, gc {'on' if collect else 'off'}: median {times[n // 2] / 1000:.2f} us, "
        f"mean {statistics.mean(times) / 1000:.2f}, p90 {times[int(n * 0.9)] / 1000:.2f}, "
        f"max {times[-1] / 1000:.1f} us; the loop {total / 1e6:.2f} ms"
    )
    if collect:
        print(f"collections inside the loop (generation, us): {[(g, round(us)) for g, us in collections]}")
    else:
        print(f"garbage-collected objects left alive per cancel: {left:.2f}")
    if parts is not None:
        print(f"\nparts (medians, each with its timer's ~{overhead / 1000:.2f} us):")
        for label, values in parts.times.items():
            print(f"  {label}: {statistics.median(values[:streams]) / 1000:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--gc", action="store_true", help="leave the garbage collector on during the loop")
    parser.add_argument("--parts", action="store_true", help="time the cancel path's pieces (adds a timer each)")
    args = parser.parse_args()
    with RemoteProvider(token_interval=0.25) as provider:
        anyio.run(measure, provider.url, args.streams, args.gc, Parts() if args.parts else None, backend=args.backend)


if __name__ == "__main__":
    main()
