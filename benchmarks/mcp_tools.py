"""An MCP tool call cancelled with its scope: how long until the server's tool handler is cancelled.

    python benchmarks/mcp_tools.py [--reps 5]

The server is the MCP SDK's own ``MCPServer`` in its own process (tests/_mcp_server.py), on
streamable HTTP (protocol 2026-07-28, where the cancel is the request's stream closing, and
2025-11-25, where it is ``notifications/cancelled``) and on stdio.  Its async tool notes on
``time.monotonic()`` (one clock for every process on Linux) when its handler is cancelled.
The call is made where a web request's own cancel never reaches it, or does:

* ``task``: a fire-and-forget task started in the scope (an agent framework's tool task);
* ``thread``: a worker thread, through ``anyio.from_thread.run``;
* ``body, by id``: the scope's body, cancelled by id through a ``LocalCancelBus``.

The vendor's ``mcp.Client`` against ``scoped_clients.mcp.Client``, same server, same run.  A
vendor call the cancel does not reach runs its tool to the end (``--tool`` seconds).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp
from _common import HERE, free_port, machine, median, table, wait_for
from mcp.client.stdio import StdioServerParameters

import scoped_clients.mcp as scoped_mcp
from scoped_clients import LocalCancelBus, RequestScope

SERVER = str(HERE.parent / "tests" / "_mcp_server.py")
PLACEMENTS = ("task", "thread", "body, by id")


def entries(log: Path) -> dict[tuple[str, str], float]:
    if not log.exists():
        return {}
    return {(w, t): float(at) for w, t, at in (line.split() for line in log.read_text().splitlines())}


async def noted(log: Path, what: str, tag: str, within: float) -> float | None:
    with anyio.move_on_after(within):
        while (at := entries(log).get((what, tag))) is None:  # noqa: ASYNC110 (another process writes it)
            await anyio.sleep(0.001)
        return at
    return None


async def one(client: Any, log: Path, placement: str, tag: str, tool: float) -> tuple[float | None, float]:
    """One call cancelled once its handler runs: (ms until the server's handler was cancelled, or None
    if it ran to its end; ms until the caller was released)."""
    arguments = {"seconds": tool, "tag": tag, "log": str(log)}
    released: list[float] = []

    async def call() -> None:
        try:
            await client.call_tool("slow", arguments)
        except BaseException:
            pass
        released.append(time.monotonic())

    def in_thread() -> None:
        try:
            anyio.from_thread.run(client.call_tool, "slow", arguments)
        except BaseException:
            pass
        released.append(time.monotonic())

    bus = LocalCancelBus()
    async with anyio.create_task_group() as outside:
        async with RequestScope(bus=bus) as scope:
            if placement == "body, by id":

                async def cancel_when_started() -> None:
                    await noted(log, "start", tag, 10)
                    await bus.cancel(scope.id, "stop_pressed")

                outside.start_soon(cancel_when_started)
                await call()  # in the body: the cancel ends the body here
            else:
                outside.start_soon(
                    call if placement == "task" else anyio.to_thread.run_sync,
                    *(() if placement == "task" else (in_thread,)),
                )
                await noted(log, "start", tag, 10)
                scope.cancel("client_disconnected")
        t_cancel = scope.cancel_reason.time if scope.cancel_reason else time.monotonic()
        stopped = await noted(log, "cancelled", tag, tool + 1)
        if stopped is None:
            await noted(log, "done", tag, tool + 1)
    release = (released[-1] - t_cancel) * 1000 if released else float("nan")
    return ((stopped - t_cancel) * 1000 if stopped is not None else None), release


async def measure(
    make: Callable[[], Any], log: Path, placement: str, reps: int, tool: float, label: str
) -> tuple[list[float], int, list[float]]:
    stops: list[float] = []
    ran_on = 0
    releases: list[float] = []
    async with make() as client:
        for i in range(reps):
            stop, release = await one(client, log, placement, f"{label}-{placement}-{i}".replace(" ", ""), tool)
            if stop is None:
                ran_on += 1
            else:
                stops.append(stop)
            releases.append(release)
    return stops, ran_on, releases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tool", type=float, default=1.0, help="seconds the tool runs if nobody stops it")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, SERVER, "http", str(port)], stderr=subprocess.DEVNULL)
    try:
        import socket

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, "the MCP server", server)
        url = f"http://127.0.0.1:{port}/mcp"
        stdio = StdioServerParameters(command=sys.executable, args=[SERVER, "stdio"])
        transports: dict[str, tuple[Any, dict[str, Any]]] = {
            "streamable HTTP 2026-07-28": (url, {"mode": "auto"}),
            "streamable HTTP 2025-11-25": (url, {"mode": "legacy"}),
            "stdio (2025-11-25)": (stdio, {"mode": "legacy"}),
        }
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for n, (transport, (target, options)) in enumerate(transports.items()):
                log = Path(tmp) / f"server-{n}.log"
                for placement in PLACEMENTS:
                    cells: list[str] = [transport, placement]
                    for label, cls in (("vendor", mcp.Client), ("scoped", scoped_mcp.Client)):
                        reps = args.reps if label == "scoped" or placement == "body, by id" else 1

                        make = functools.partial(cls, target, **options)
                        stops, ran_on, _ = anyio.run(measure, make, log, placement, reps, args.tool, label)
                        if stops:
                            cell = f"{median(stops):.1f} ms [{min(stops):.1f}-{max(stops):.1f}]"
                        else:
                            cell = f"never: ran to its end ({args.tool:g} s)"
                        if ran_on and stops:
                            cell += f", {ran_on} ran to the end"
                        cells.append(cell)
                    rows.append(cells)
                    print(" | ".join(cells), file=sys.stderr)
        print(f"\n### MCP tool cancelled with its scope (mcp_tools.py, {datetime.date.today()})\n")
        print(f"Machine: {machine()}, mcp {mcp_version()}, asyncio; medians of {args.reps} [min-max].\n")
        print("Time from the scope's cancel to the server's tool handler cancelled (its own log):\n")
        print(table(["transport (protocol)", "call made in", "vendor mcp.Client", "scoped_clients.mcp.Client"], rows))
        print("\nCost per call (a trivial tool, the SDK's in-process server, medians of 5 x 300 calls):\n")
        print(overhead_table())
    finally:
        server.terminate()
        server.wait(10)


async def per_call(cls: Any, calls: int = 300, reps: int = 5) -> float:
    """Microseconds per call of a trivial tool on the SDK's in-process server (its stream transport),
    every call inside a scope: what owning a request costs (a task of the session's, a record)."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("overhead")

    @server.tool()
    async def echo(x: int) -> int:
        return x

    async with cls(server, mode="legacy") as client:
        await client.call_tool("echo", {"x": 0})
        runs = []
        for _ in range(reps):
            async with RequestScope():
                start = time.perf_counter()
                for i in range(calls):
                    await client.call_tool("echo", {"x": i})
                runs.append((time.perf_counter() - start) / calls * 1e6)
    return median(runs)


def overhead_table() -> str:
    rows = []
    for backend in ("asyncio", "trio"):
        vendor = anyio.run(per_call, mcp.Client, backend=backend)
        scoped = anyio.run(per_call, scoped_mcp.Client, backend=backend)
        rows.append([backend, f"{vendor:.0f}", f"{scoped:.0f}", f"+{scoped - vendor:.0f}"])
    return table(["backend", "vendor (us/call)", "scoped (us/call)", "cost"], rows)


def mcp_version() -> str:
    from importlib import metadata

    return metadata.version("mcp")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
