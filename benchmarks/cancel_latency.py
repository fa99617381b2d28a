"""Server-observed cancellation latency: N concurrent streams, every scope cancelled at once.

    python benchmarks/cancel_latency.py [--streams 200]

The provider runs in its own process (``python -m scoped_clients.provider``)
and records when it saw each client go; latency is that time minus the moment
the batch of cancels began (``time.monotonic()`` is one clock for every
process on Linux).  Baseline in the same run: the raw client whose *task* is
cancelled by hand (an anyio ``CancelScope`` around the stream), the best a
careful user can do without scoped_clients.  Target: p99 < 5 ms.
"""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any, NamedTuple

import anyio
import httpx2
import sniffio
from _common import machine, median, percentile, table, verdict
from _remote import RemoteProvider, units_after

import scoped_clients.httpx2 as scoped
from scoped_clients import RequestScope

PATH = "/units?n=1000000&interval=0.05"


class Run(NamedTuple):
    latencies: list[float]  #: ms from the first cancel to the provider seeing each client go
    units_after: int  #: the most units one stream produced after the cancel
    lag_before: float  #: the loop's worst lag (ms) in 250 ms of steady streaming before the cancel
    lag_during: float  #: the same from the first cancel until every stream's task has unwound
    longest_turn: float  #: the CPU time (ms) of the loop's longest turn in that window
    unwound: float  #: ms from the first cancel until every stream's task has unwound
    cancels: float  #: ms the client's own loop of cancels took (wall): every socket is shut down at its end
    cancels_cpu: float  #: the same in this thread's CPU time (steadier: a preemption by another process is not in it)


async def run(
    provider: RemoteProvider, streams: int, scoped_mode: bool, *, one_scope: bool = False, path: str = PATH
) -> Run:
    """Open ``streams`` streams, cancel them all at once.

    ``one_scope``: a single RequestScope owns every stream (one cancel) instead of one scope each.

    The longest turn is the loop's own measure of a stall, steadier than the ticker's lag on a shared
    machine: the CPU time this thread spent between two waits of the loop for I/O (the selector's
    ``select`` on asyncio, trio's ``before_io_wait`` / ``after_io_wait``).
    """
    provider.reset()
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
    client: Any = scoped.AsyncClient(limits=limits) if scoped_mode else httpx2.AsyncClient(limits=limits)
    handles: list[Any] = []
    lag = 0.0
    stop_ticker = anyio.Event()

    async def ticker() -> None:
        nonlocal lag
        while not stop_ticker.is_set():
            t = time.perf_counter()
            await anyio.sleep(0.001)
            lag = max(lag, time.perf_counter() - t - 0.001)

    left = streams
    unwound = anyio.Event()

    async def read(url: str) -> None:
        nonlocal left
        try:
            async with client.stream("GET", url) as response:
                async for _ in response.aiter_raw():
                    pass
        finally:
            left -= 1
            if left == 0:
                unwound.set()

    async def one(i: int) -> None:
        handle: Any = RequestScope(f"s{i}") if scoped_mode else anyio.CancelScope()
        handles.append(handle)
        if scoped_mode:
            async with handle:
                await read(provider.url + path)
        else:
            with handle:
                await read(provider.url + path)

    async with client, anyio.create_task_group() as tg:
        if one_scope:
            owner = RequestScope("all")
            handles.append(owner)
            await tg.start(_own_all, owner, streams, read, provider.url + path)
        else:
            for i in range(streams):
                tg.start_soon(one, i)
        await anyio.to_thread.run_sync(
            provider.wait, lambda log: len(log) == streams and all(len(e["units"]) >= 2 for e in log)
        )
        tg.start_soon(ticker)
        await anyio.sleep(0.05)  # let the ticker settle
        lag = 0.0
        await anyio.sleep(0.25)  # the streams' steady state, for comparison
        lag_before, lag = lag, 0.0
        turns = _Turns()
        t0 = time.monotonic()
        cpu0 = time.thread_time()
        for handle in handles:
            handle.cancel() if isinstance(handle, anyio.CancelScope) else handle.cancel("client_disconnected")
        cancels, cancels_cpu = time.monotonic() - t0, time.thread_time() - cpu0
        log = await anyio.to_thread.run_sync(
            provider.wait, lambda log: all(e["disconnected_at"] is not None for e in log)
        )
        await unwound.wait()
        t_unwound = time.monotonic()
        turns.stop()
        stop_ticker.set()
    latencies = [(e["disconnected_at"] - t0) * 1000 for e in log]
    after = max(units_after(e, t0) for e in log)
    return Run(
        latencies,
        after,
        lag_before * 1000,
        lag * 1000,
        turns.longest * 1000,
        (t_unwound - t0) * 1000,
        cancels * 1000,
        cancels_cpu * 1000,
    )


class _Turns:
    """The CPU time of the running loop's longest turn (between two waits for I/O) until ``stop()``."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._start: float | None = None
        if sniffio.current_async_library() == "trio":
            import trio

            class Instrument(trio.abc.Instrument):
                def before_io_wait(self, timeout: float) -> None:
                    turns.waiting()

                def after_io_wait(self, timeout: float) -> None:
                    turns.running()

            turns, instrument = self, Instrument()
            trio.lowlevel.add_instrument(instrument)
            self.stop = lambda: trio.lowlevel.remove_instrument(instrument)
        else:
            import asyncio

            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
            select = selector.select

            def timed(timeout: float | None = None) -> Any:
                self.waiting()
                try:
                    return select(timeout)
                finally:
                    self.running()

            selector.select = timed
            self.stop = lambda: delattr(selector, "select")
        self.running()

    def running(self) -> None:
        self._start = time.thread_time()

    def waiting(self) -> None:
        if self._start is not None:
            self.longest = max(self.longest, time.thread_time() - self._start)
            self._start = None


async def _own_all(owner: RequestScope, streams: int, read: Any, url: str, *, task_status: Any) -> None:
    async with owner, anyio.create_task_group() as tg:
        for _ in range(streams):
            tg.start_soon(read, url)
        task_status.started()


def floor(provider: RemoteProvider, streams: int, path: str = PATH) -> tuple[list[float], int, float, float]:
    """The measuring server's own floor: plain sockets shut down in a tight loop, no client library at all.

    Same provider process, same request, same polling of its log: what any client would be measured at if
    shutting its sockets down cost nothing and nothing else ran after it.
    """
    provider.reset()
    host, port = provider.url.removeprefix("http://").split(":")
    socks = []
    for _ in range(streams):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(sock)
    provider.wait(lambda log: len(log) == streams and all(len(e["units"]) >= 2 for e in log))
    t0 = time.monotonic()
    cpu0 = time.thread_time()
    for sock in socks:
        sock.shutdown(socket.SHUT_RDWR)
    shut, shut_cpu = time.monotonic() - t0, time.thread_time() - cpu0
    log = provider.wait(lambda log: all(e["disconnected_at"] is not None for e in log))
    for sock in socks:
        sock.close()
    latencies = [(e["disconnected_at"] - t0) * 1000 for e in log]
    return latencies, max(units_after(e, t0) for e in log), shut * 1000, shut_cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    rows = []
    with RemoteProvider() as provider:
        latencies, after, shut, shut_cpu = floor(provider, args.streams)
        rows.append(
            [
                "-",
                "floor: bare sockets shut down in a loop",
                args.streams,
                f"{median(latencies):.2f}",
                f"{percentile(latencies, 99):.2f}",
                f"{max(latencies):.2f}",
                after,
                f"{shut:.2f} / {shut_cpu:.2f}",
                "-",
            ]
        )
        for backend in ("asyncio", "trio"):
            for scoped_mode in (False, True):
                result = anyio.run(run, provider, args.streams, scoped_mode, backend=backend)
                latencies, after = result.latencies, result.units_after
                p99 = percentile(latencies, 99)
                rows.append(
                    [
                        backend,
                        "scoped_clients" if scoped_mode else "raw, task cancelled by hand",
                        args.streams,
                        f"{median(latencies):.2f}",
                        f"{p99:.2f}",
                        f"{max(latencies):.2f}",
                        after,
                        f"{result.cancels:.2f} / {result.cancels_cpu:.2f}",
                        verdict(p99 < 5.0) if scoped_mode else "-",
                    ]
                )
    print(f"Machine: {machine()}\n")
    headers = [
        "backend",
        "client",
        "streams",
        "p50 ms",
        "p99 ms",
        "max ms",
        "max units after cancel",
        "cancel loop ms, wall / CPU",
        "p99 < 5 ms",
    ]
    print(table(headers, rows))
    print(
        "\nLatency: from the start of the batch of cancels to the provider seeing each client go. Cancel loop: the "
        "client's own loop of cancels (the floor's: of socket shutdowns), at whose end every socket is shut down."
    )


if __name__ == "__main__":
    main()
