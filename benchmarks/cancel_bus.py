"""The cancel bus: cross-replica cancel latency, and what the bus costs per scope.

    python benchmarks/cancel_bus.py [--iterations 200] [--seconds 3]

Needs ``redis-server`` on the PATH (Debian's package; scripts/test.sh installs it)
and redis-py (``pip install "scoped-clients[redis]"``).

1. **Cancel -> upstream disconnect across replicas.**  A redis-server, the provider
   in its own process, two uvicorn replicas (separate processes), each
   ``ScopeMiddleware(app, bus=RedisCancelBus.from_url(...))``.  A stream runs on
   replica 1; it is cancelled (a) by ``POST /cancel/{id}`` on replica 1 itself (the
   same-process floor), (b) by ``POST /cancel/{id}`` on replica 2, (c) by
   ``bus.cancel_sync(id)`` in a third process (this one).  Latency: from just
   before the cancel request / call to the provider seeing its client go
   (``time.monotonic()``, one clock for every process on Linux).  Target p99 < 10 ms.
2. **Cost per scope at 10,000 scopes/s.**  In this process, on asyncio: scopes
   opened at a paced 10,000/s for ``--seconds``, each open 20 ms (a short request),
   with no bus, ``LocalCancelBus`` and ``RedisCancelBus``: process CPU per scope,
   the bus thread's CPU, Redis round trips per scope (``INFO commandstats``).  And
   a tight loop of ``with RequestScope(bus=bus): pass``: time per join + leave.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
from _common import free_port, machine, median, percentile, redis_server, table, verdict, wait_port
from _remote import RemoteProvider

from scoped_clients import LocalCancelBus, RequestScope

UPSTREAM = "/units?n=100000&interval=0.05"


# ------------------------------------------------------------------ a replica process


def replica(port: int, redis_url: str, provider_url: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    import scoped_clients.httpx2 as scoped
    from scoped_clients.asgi import ScopeMiddleware
    from scoped_clients.redis import RedisCancelBus

    bus = RedisCancelBus.from_url(redis_url)
    upstream = scoped.AsyncClient(base_url=provider_url)

    async def chat(request: Request) -> Response:
        response = await upstream.send(upstream.build_request("GET", UPSTREAM), stream=True)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return StreamingResponse(body(), media_type="text/plain")

    async def cancel(request: Request) -> Response:
        return JSONResponse({"here": await bus.cancel(request.path_params["scope_id"], "user_stopped")})

    app = Starlette(routes=[Route("/chat", chat), Route("/cancel/{scope_id}", cancel, methods=["POST"])])
    assert bus.wait_connected(10)
    uvicorn.run(ScopeMiddleware(app, bus=bus), host="127.0.0.1", port=port, log_level="error")
    bus.close()


@contextmanager
def replica_process(redis_url: str, provider_url: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--replica", str(port), redis_url, provider_url])
    try:
        wait_port(port, process, "a replica")
        yield port
    finally:
        process.terminate()
        process.wait(10)


# ------------------------------------------------------------ 1. cross-replica latency


def open_stream(port: int, scope_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /chat HTTP/1.1\r\nHost: bench\r\nx-request-id: {scope_id}\r\n\r\n".encode())
    data = b""
    while b"unit 0" not in data:  # the response started and the first unit came through
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"replica closed the stream early: {data!r}")
        data += chunk
    return sock


def cross_replica(provider: RemoteProvider, redis_url: str, iterations: int) -> list[list[object]]:
    from scoped_clients.redis import RedisCancelBus

    rows: list[list[object]] = []
    with (
        replica_process(redis_url, provider.url) as first,
        replica_process(redis_url, provider.url) as second,
        RedisCancelBus.from_url(redis_url) as bus,
        httpx.Client(timeout=30) as http,
    ):
        assert bus.wait_connected(10)

        def via_http(port: int) -> Any:
            return lambda scope_id: http.post(f"http://127.0.0.1:{port}/cancel/{scope_id}")

        ways = [
            ("POST /cancel on replica 1 (same process)", via_http(first)),
            ("POST /cancel on replica 2", via_http(second)),
            ("bus.cancel_sync in a third process", lambda scope_id: bus.cancel_sync(scope_id, "user_stopped")),
        ]
        latencies: dict[str, list[float]] = {name: [] for name, _ in ways}
        after: dict[str, int] = dict.fromkeys(latencies, 0)
        for i in range(iterations):
            for name, cancel in ways:  # interleaved: the machine's load hits every way alike
                provider.reset()
                scope_id = uuid.uuid4().hex
                sock = open_stream(first, scope_id)
                try:
                    t0 = time.monotonic()
                    cancel(scope_id)
                    (entry,) = provider.wait(lambda log: bool(log) and log[0]["disconnected_at"] is not None)
                finally:
                    sock.close()
                if i >= 3:  # warm-up: the first cancels connect pools
                    latencies[name].append((entry["disconnected_at"] - t0) * 1000)
                    after[name] = max(after[name], sum(1 for u in entry["units"] if u > t0))
        for name, _ in ways:
            values = latencies[name]
            p99 = percentile(values, 99)
            rows.append(
                [
                    name,
                    len(values),
                    f"{median(values):.2f}",
                    f"{p99:.2f}",
                    f"{max(values):.2f}",
                    after[name],
                    verdict(p99 < 10),
                ]
            )
    return rows


# ------------------------------------------------------------------ 2. cost per scope


def thread_cpu(name: str) -> float:
    """CPU seconds (user + system) of this process's thread called ``name`` (0 if none)."""
    for thread in threading.enumerate():
        if thread.name == name and thread.native_id is not None:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def redis_lookups(url: str) -> int:
    """How many MGET round trips Redis has served (the bus's only per-scope traffic)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


def join_leave_us(bus: Any, n: int = 20_000) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            with RequestScope(bus=bus):
                pass
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


async def paced(bus: Any, rate: int, seconds: float, lifetime: float = 0.02) -> tuple[int, float, float]:
    """Open ``rate`` scopes a second for ``seconds``, each open ``lifetime``; returns (scopes, wall s, CPU s)."""
    tick = 0.005
    per_tick = int(rate * tick)
    started = 0

    async def one() -> None:
        async with RequestScope(bus=bus):
            await anyio.sleep(lifetime)

    cpu, wall = time.process_time(), time.monotonic()
    async with anyio.create_task_group() as tg:
        next_tick = wall
        while next_tick - wall < seconds:
            for _ in range(per_tick):
                tg.start_soon(one)
            started += per_tick
            next_tick += tick
            await anyio.sleep(max(0.0, next_tick - time.monotonic()))
    return started, time.monotonic() - wall, time.process_time() - cpu


def cost_per_scope(redis_url: str, seconds: float, rounds: int = 3, rate: int = 10_000) -> list[list[object]]:
    """Each bus ``rounds`` times, interleaved (the machine's load hits all alike); medians."""
    from scoped_clients.redis import RedisCancelBus

    names = ("raw (no bus)", "LocalCancelBus", "RedisCancelBus")
    figures: dict[str, dict[str, list[float]]] = {
        name: {"us": [], "rate": [], "cpu": [], "bus_cpu": [], "trips": []} for name in names
    }
    for _ in range(rounds):
        for name in names:
            bus: Any = None
            if name == "LocalCancelBus":
                bus = LocalCancelBus()
            elif name == "RedisCancelBus":
                bus = RedisCancelBus.from_url(redis_url)
                assert bus.wait_connected(10)
            f = figures[name]
            f["us"].append(join_leave_us(bus))
            trips0, bus_cpu0 = redis_lookups(redis_url), thread_cpu("scoped-clients-redis-bus")
            scopes, wall, cpu = anyio.run(paced, bus, rate, seconds)
            f["trips"].append((redis_lookups(redis_url) - trips0) / scopes)
            f["bus_cpu"].append((thread_cpu("scoped-clients-redis-bus") - bus_cpu0) / scopes * 1e6)
            f["rate"].append(scopes / wall)
            f["cpu"].append(cpu / scopes * 1e6)
            if isinstance(bus, RedisCancelBus):
                bus.close()
    raw_us = median(figures["raw (no bus)"]["us"])
    rows: list[list[object]] = []
    for name in names:
        f = figures[name]
        us = median(f["us"])
        redis_row = name == "RedisCancelBus"
        rows.append(
            [
                name,
                f"{us:.2f}",
                f"{us - raw_us:+.2f}",
                f"{median(f['rate']):,.0f}",
                f"{median(f['cpu']):.1f}",
                f"{median(f['bus_cpu']):.1f}" if redis_row else "-",
                f"{median(f['trips']):.4f}" if redis_row else "0",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--replica", nargs=3, metavar=("PORT", "REDIS_URL", "PROVIDER_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        replica(int(args.replica[0]), args.replica[1], args.replica[2])
        return
    print(machine())
    with redis_server() as redis_url, RemoteProvider(token_interval=0.05) as provider:
        rows = cross_replica(provider, redis_url, args.iterations)
        print(
            f"\n#### Cancel -> upstream disconnect, a stream on replica 1 ({args.iterations} runs each, interleaved)\n"
        )
        print(table(["cancelled by", "runs", "p50 ms", "p99 ms", "max ms", "max units after", "p99 < 10 ms"], rows))
        rows = cost_per_scope(redis_url, args.seconds)
        print(
            f"\n#### Cost per scope: 10,000 scopes/s for {args.seconds:g} s, each open 20 ms "
            "(asyncio, 3 interleaved rounds, medians)\n"
        )
        headers = [
            "bus",
            "join + leave us",
            "vs raw us",
            "scopes/s reached",
            "process CPU us/scope",
            "bus thread CPU us/scope",
            "Redis round trips/scope",
        ]
        print(table(headers, rows))


if __name__ == "__main__":
    main()
