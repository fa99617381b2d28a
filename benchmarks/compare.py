"""This checkout against an earlier commit, in the same run: what a change cost or saved.

    python benchmarks/compare.py bb44c0a [--rounds 5] [--only idle,call,sse] [--backends asyncio,trio]

The old commit's ``src/`` is extracted with ``git archive`` into a temporary
directory; each measurement runs in a fresh subprocess that imports one version
(``PYTHONPATH`` puts the chosen ``src/`` first), and the two versions alternate
round by round (old first in even rounds, new first in odd ones), so that a
machine whose load drifts charges both alike.  Inside each subprocess the raw
baseline and the scoped variant are interleaved too.  The figures (those of
``overhead.py``, measured the way issue 23 states its targets):

* ``idle``: open + close an idle ``async with RequestScope()`` (no call), and a bare
  ``anyio.CancelScope`` for scale (no network); the same with a deadline (``timeout=30``,
  as the middleware's ``timeout`` or a caller's deadline header gives every request) against
  ``anyio.move_on_after(30)``; and a scope cancelled in its block (a request whose client went
  away, no call) against a bare ``anyio.CancelScope`` cancelled the same way; and a scope with
  an async ``on_cancel`` hook that is not cancelled;
* ``call``: a small GET through ``httpx2.AsyncClient`` against a scoped one, the scope
  already open, and with a scope opened per call (wall median per call, and client
  CPU per call); and the same GET against an in-process transport (no network: the
  steadiest per-call figure, client CPU);
* ``sse``: an OpenAI chat stream through the raw SDK and the scoped client: client CPU per
  chunk (one SSE event each) and throughput; and the token meter alone fed the same
  recorded chunks (no network), as each version's body reader feeds it (one chunk at a time,
  or joined batches of ``BATCH`` chunks where it has them); and the same stream through the
  in-process wire (``_wire.py``: every layer of the client for real, the network stream
  handing out one event per read, so the client never waits for the provider), through
  the SDK and at the HTTP layer: the steadiest per-event figures.

The provider (this checkout's, in its own process, streaming as fast as it can) is
shared by both versions.  The harness is this file for both, so only the library
differs; a figure the old code cannot produce (a module that did not exist yet) is
``n/a``.  Every table says the load average before and after: on a shared machine,
read the ratios of the same run, not the absolute microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = ("idle", "call", "sse", "memory")
IDLE_BLOCK = 2_000
CALL_BLOCK = 25
CALL_BLOCKS = 8
IN_PROCESS_BLOCK = 500
MEMORY_SCOPES = 5_000
MEMORY_CALLS = 2_000
STREAM_TOKENS = 2_000
STREAM_REPS = 3
METER_REPS = 5
WIRE_TOKENS = 3_000
WIRE_REPS = 9


# ------------------------------------------------------------------ the worker (one version, one figure)


async def _idle() -> dict[str, float]:
    import anyio

    from scoped_clients import RequestScope

    async def scopes() -> float:
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            async with RequestScope():
                pass
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def scopes_with_timeout() -> float:  # a deadline of its own, or from the caller's header
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            async with RequestScope(timeout=30):
                pass
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def scopes_cancelled() -> float:  # a request whose client went away: the exit with the cancel
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            async with RequestScope() as scope:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def bare_cancelled() -> float:
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def hook() -> None:
        pass

    async def scopes_with_hook() -> float:  # an async on_cancel hook, never cancelled (the usual request)
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            async with RequestScope() as scope:
                scope.on_cancel(hook)
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def bare_with_timeout() -> float:
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            with anyio.move_on_after(30):
                await anyio.lowlevel.checkpoint()
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def bare() -> float:
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            with anyio.CancelScope():
                await anyio.lowlevel.checkpoint()
        return (time.perf_counter() - t) / IDLE_BLOCK

    async def bare_no_checkpoint() -> float:
        t = time.perf_counter()
        for _ in range(IDLE_BLOCK):
            with anyio.CancelScope():  # noqa: ASYNC100 (its cost is the figure)
                pass
        return (time.perf_counter() - t) / IDLE_BLOCK

    samples: dict[str, list[float]] = {
        "scope": [],
        "bare": [],
        "bare_nocp": [],
        "scope_timeout": [],
        "bare_timeout": [],
        "scope_cancelled": [],
        "bare_cancelled": [],
        "scope_hook": [],
    }
    await scopes()  # warm
    for _ in range(5):
        samples["bare"].append(await bare())
        samples["bare_nocp"].append(await bare_no_checkpoint())
        samples["scope"].append(await scopes())
        samples["bare_timeout"].append(await bare_with_timeout())
        samples["scope_timeout"].append(await scopes_with_timeout())
        samples["bare_cancelled"].append(await bare_cancelled())
        samples["scope_cancelled"].append(await scopes_cancelled())
        samples["scope_hook"].append(await scopes_with_hook())
    return {name: _median(values) * 1e6 for name, values in samples.items()}


async def _call(url: str) -> dict[str, float]:
    import httpx2

    import scoped_clients.httpx2
    from scoped_clients import RequestScope

    target = f"{url}/units?n=1&interval=0"
    raw, scoped = httpx2.AsyncClient(), scoped_clients.httpx2.AsyncClient()
    wall: dict[str, list[float]] = {"raw": [], "scoped": [], "per_call": []}
    cpu: dict[str, list[float]] = {"raw": [], "scoped": [], "per_call": []}

    async def block(name: str) -> None:
        if name == "scoped":  # one scope open around the block, timed inside it
            async with RequestScope():
                await calls(name)
        else:
            await calls(name)

    async def calls(name: str) -> None:
        c = time.process_time()
        for _ in range(CALL_BLOCK):
            if name == "raw":
                t = time.perf_counter()
                await raw.get(target)
                wall[name].append(time.perf_counter() - t)
            elif name == "scoped":
                t = time.perf_counter()
                await scoped.get(target)
                wall[name].append(time.perf_counter() - t)
            else:
                t = time.perf_counter()
                async with RequestScope():
                    await scoped.get(target)
                wall[name].append(time.perf_counter() - t)
        cpu[name].append((time.process_time() - c) / CALL_BLOCK)

    async with raw, scoped:
        for client in (raw, scoped):  # warm the pools
            await client.get(target)
        names = list(wall)
        for i in range(CALL_BLOCKS * len(names)):
            await block(names[i % len(names)] if (i // len(names)) % 2 == 0 else names[-1 - i % len(names)])
    result = {f"{name}_wall": _median(values) * 1e6 for name, values in wall.items()}
    result.update({f"{name}_cpu": _median(values) * 1e6 for name, values in cpu.items()})
    result.update(await _call_in_process())
    return result


async def _call_in_process() -> dict[str, float]:
    """The same GET against an in-process transport (no network, no provider): the steadiest per-call figure.

    Its response carries a ``network_stream`` with a socket, as httpcore's do, so the scoped call takes the
    path of a real one (a socket to shut down, no cancel scope per chunk); nothing is sent on that socket.
    """
    import socket

    import httpx2

    import scoped_clients.httpx2
    from scoped_clients import RequestScope

    sock = socket.socket()

    class Stream:
        def get_extra_info(self, name: str) -> Any:
            return sock if name == "socket" else None

    class Body(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield b"unit\n"

    class Transport(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            headers = {"content-type": "text/plain"}
            return httpx2.Response(200, headers=headers, stream=Body(), extensions={"network_stream": Stream()})

    raw = httpx2.AsyncClient(transport=Transport())
    scoped = scoped_clients.httpx2.AsyncClient(transport=Transport())
    cpu: dict[str, list[float]] = {"raw": [], "scoped": []}
    async with raw, scoped, RequestScope():
        for client in (raw, scoped):
            await client.get("http://in-process.test/units")
        for rep in range(7):
            for name in ("raw", "scoped") if rep % 2 == 0 else ("scoped", "raw"):
                client = raw if name == "raw" else scoped
                c = time.process_time()
                for _ in range(IN_PROCESS_BLOCK):
                    await client.get("http://in-process.test/units")
                cpu[name].append((time.process_time() - c) / IN_PROCESS_BLOCK)
    sock.close()
    return {f"{name}_local": _median(values) * 1e6 for name, values in cpu.items()}


async def _sse(url: str) -> dict[str, float]:
    import httpx2
    import openai

    import scoped_clients.openai
    from scoped_clients import RequestScope

    raw = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x")
    scoped = scoped_clients.openai.AsyncOpenAI(base_url=url + "/v1", api_key="x")
    messages: Any = [{"role": "user", "content": "go"}]

    async def stream(client: Any) -> int:
        response = await client.chat.completions.create(model=f"local-{STREAM_TOKENS}", messages=messages, stream=True)
        n = 0
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
        return n

    rates: dict[str, list[float]] = {"raw": [], "scoped": []}
    cpus: dict[str, list[float]] = {"raw": [], "scoped": []}
    for rep in range(STREAM_REPS):
        for name in ("raw", "scoped") if rep % 2 == 0 else ("scoped", "raw"):
            t, c = time.perf_counter(), time.process_time()
            if name == "raw":
                n = await stream(raw)
            else:
                async with RequestScope():
                    n = await stream(scoped)
            t, c = time.perf_counter() - t, time.process_time() - c
            rates[name].append(n / t)
            cpus[name].append(c / n * 1e6)
    await raw.close()
    await scoped.close()
    result = {f"{name}_rate": _median(values) for name, values in rates.items()}
    result.update({f"{name}_cpu": _median(values) for name, values in cpus.items()})
    result.update(await _sse_wire(stream))
    # The meter alone, fed the chunks a stream arrives in (no network).
    try:
        from scoped_clients._vendors.openai import ChatStreamMeter
    except ImportError:
        return result
    body = {"model": f"local-{STREAM_TOKENS}", "messages": messages, "stream": True}
    chunks: list[bytes] = []
    async with httpx2.AsyncClient() as client, client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for chunk in r.aiter_raw():
            chunks.append(chunk)
    events = b"".join(chunks).count(b"\n\n")
    try:  # fed as the body reader feeds it: in batches of BATCH chunks, joined (from issue 23's round 3)
        from scoped_clients._transport._call import BATCH  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # one chunk at a time
        BATCH = 1
    per_event = []
    for _ in range(METER_REPS):
        t = time.perf_counter()
        meter = ChatStreamMeter()
        if BATCH == 1:
            for chunk in chunks:
                meter.feed(chunk)
        else:
            for i in range(0, len(chunks), BATCH):
                meter.feed(b"".join(chunks[i : i + BATCH]))
        meter.close()
        per_event.append((time.perf_counter() - t) / events)
    result["meter_event"] = _median(per_event) * 1e6
    return result


async def _sse_wire(stream: Any) -> dict[str, float]:
    """CPU per event through the in-process wire (``_wire.py``: the whole stack, no network, no
    waiting): through the SDK (``wire_sdk_*``) and at the HTTP layer the SDK reads
    (``aiter_bytes`` of the SDK's own httpx2 client: ``wire_http_*``), raw and scoped interleaved."""
    import openai
    from _wire import chat_stream, wire_client

    import scoped_clients.openai
    from scoped_clients import RequestScope

    chunks = chat_stream(WIRE_TOKENS)
    url = "http://wire.invalid/v1"
    clients = {
        "raw": openai.AsyncOpenAI(base_url=url, api_key="x", http_client=wire_client(chunks)),
        "scoped": scoped_clients.openai.AsyncOpenAI(base_url=url, api_key="x", http_client=wire_client(chunks)),
    }
    body = {"model": "local", "messages": [{"role": "user", "content": "go"}], "stream": True}

    async def http(client: Any) -> int:
        n = 0
        async with client._client.stream("POST", url + "/chat/completions", json=body) as response:
            async for _ in response.aiter_bytes():
                n += 1
        return n

    cpus: dict[str, list[float]] = {}
    for rep in range(WIRE_REPS):
        for layer, run in (("sdk", stream), ("http", http)):
            for name in ("raw", "scoped") if rep % 2 == 0 else ("scoped", "raw"):
                c = time.process_time()
                if name == "raw":
                    await run(clients[name])
                else:
                    async with RequestScope():
                        await run(clients[name])
                cpus.setdefault(f"wire_{layer}_{name}", []).append((time.process_time() - c) / WIRE_TOKENS * 1e6)
    for client in clients.values():
        await client.close()
    return {key: _median(values) for key, values in cpus.items()}


async def _memory() -> dict[str, float]:
    """Bytes per open scope (beyond a task in a bare cancel scope) and per in-flight call (beyond a raw stream)."""
    import gc
    import socket
    import tracemalloc

    import anyio
    import httpx2

    import scoped_clients.httpx2
    from scoped_clients import RequestScope

    async def traced(start: Any, count: int) -> float:
        """Python bytes per task while ``count`` tasks started by ``start(tg)`` are all blocked."""
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                start(tg)
            await anyio.wait_all_tasks_blocked()
            gc.collect()
            size = (tracemalloc.get_traced_memory()[0] - base) / count
            tg.cancel_scope.cancel()
        tracemalloc.stop()
        return size

    async def in_bare_scope() -> None:
        with anyio.CancelScope():
            await anyio.sleep_forever()

    async def in_request_scope() -> None:
        async with RequestScope():
            await anyio.sleep_forever()

    result: dict[str, float] = {}
    for name, fn in (("bare_task", in_bare_scope), ("scope_task", in_request_scope)) * 2:  # the second pass counts
        result[name] = await traced(lambda tg, fn=fn: tg.start_soon(fn), MEMORY_SCOPES)

    sock = socket.socket()

    class Stream:
        def get_extra_info(self, name: str) -> Any:
            return sock if name == "socket" else None

    class Body(httpx2.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield b"unit\n"
            await anyio.sleep_forever()

    class Transport(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            headers = {"content-type": "text/plain"}
            return httpx2.Response(200, headers=headers, stream=Body(), extensions={"network_stream": Stream()})

    async def stream(client: Any) -> None:
        async with client.stream("GET", "http://in-process.test/units") as response:
            async for _ in response.aiter_raw():
                pass

    raw = httpx2.AsyncClient(transport=Transport())
    scoped = scoped_clients.httpx2.AsyncClient(transport=Transport())
    async with raw, scoped, RequestScope():
        for name, client in (("raw_call", raw), ("scoped_call", scoped)) * 2:
            result[name] = await traced(lambda tg, client=client: tg.start_soon(stream, client), MEMORY_CALLS)
    sock.close()
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def worker(figure: str, backend: str, url: str) -> None:
    import anyio

    if figure == "idle":
        result = anyio.run(_idle, backend=backend)
    elif figure == "call":
        result = anyio.run(_call, url, backend=backend)
    elif figure == "memory":
        result = anyio.run(_memory, backend=backend)
    else:
        result = anyio.run(_sse, url, backend=backend)
    print(json.dumps(result))


# ------------------------------------------------------------------ the parent


def extract(rev: str, into: Path) -> Path:
    """The ``src/`` of ``rev``, extracted into ``into``; returns the directory to put on ``PYTHONPATH``."""
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_worker(src: Path, figure: str, backend: str, url: str) -> dict[str, float] | None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", figure, backend, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        print(f"  {figure}/{backend} on {src}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ratio(new: float | None, old: float | None) -> str:
    return "n/a" if new is None or old is None or old == 0 else f"{new / old:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", nargs="?", help="the earlier commit (anything `git archive` takes)")
    parser.add_argument("--rounds", type=int, default=5, help="old/new pairs per figure and backend (default 5)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated figures ({', '.join(FIGURES)})")
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--worker", nargs=3, metavar=("FIGURE", "BACKEND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if not args.old:
        parser.error("name the earlier commit to compare against")
    figures = [f for f in args.only.split(",") if f]
    unknown = set(figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    backends = [b for b in args.backends.split(",") if b]
    from _common import machine
    from _remote import RemoteProvider

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    new_name = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    old_name = subprocess.run(
        ["git", "rev-parse", "--short", args.old], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    load_before = os.getloadavg()
    started = time.monotonic()
    samples: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp, RemoteProvider(token_interval=0.0) as provider:
        versions = {"old": extract(args.old, Path(tmp)), "new": ROOT / "src"}
        for figure in figures:
            for backend in backends:
                for r in range(args.rounds):
                    for version in ("old", "new") if r % 2 == 0 else ("new", "old"):
                        result = run_worker(versions[version], figure, backend, provider.url)
                        if result is not None:
                            samples.setdefault((figure, backend, version), []).append(result)
                print(f"  {figure}/{backend} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    load_after = os.getloadavg()

    def med(figure: str, backend: str, version: str, key: str) -> float | None:
        values = [s[key] for s in samples.get((figure, backend, version), []) if key in s]
        return _median(values) if values else None

    def added(
        figure: str, backend: str, what: str, key: str, base: str, fmt: str, context: str, spec: str
    ) -> list[str]:
        """A row of what ``key`` adds to ``base``, old and new; ``context`` shows the base's own two values
        (``{old}`` / ``{new}``, formatted with ``spec``)."""
        diff = [_diff(med(figure, backend, v, key), med(figure, backend, v, base)) for v in ("old", "new")]
        shown = context.format(**{v: _cell(med(figure, backend, v, base), spec) for v in ("old", "new")})
        return [backend, what, _cell(diff[0], fmt), _cell(diff[1], fmt), _ratio(diff[1], diff[0]), shown]

    def scope_row(backend: str, what: str, key: str, base: str, base_what: str, more: str = "") -> list[str]:
        """An idle figure ``key``, old and new, beside ``base`` (what it is measured against: its own two values,
        and the new figure as a multiple of the new one)."""
        old, new = med("idle", backend, "old", key), med("idle", backend, "new", key)
        base_old, base_new = med("idle", backend, "old", base), med("idle", backend, "new", base)
        return [
            backend,
            what,
            _cell(old, ".1f"),
            _cell(new, ".1f"),
            _ratio(new, old),
            f"{base_what}: {_cell(base_old, '.1f')} / {_cell(base_new, '.1f')}; new = {_ratio(new, base_new)} of it"
            + more,
        ]

    print(f"Machine: {machine()}")
    print(
        f"old = {old_name}, new = {new_name}; {args.rounds} rounds, old and new alternating; medians over the rounds.\n"
        f"Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' / '.join(f'{x:.2f}' for x in load_after)}; {time.monotonic() - started:.0f} s.\n"
    )
    rows: list[list[str]] = []
    for backend in backends:
        if "idle" in figures:
            nocp = _cell(med("idle", backend, "new", "bare_nocp"), ".1f")
            rows += [
                scope_row(
                    backend,
                    "open + close an idle RequestScope, us",
                    "scope",
                    "bare",
                    "bare anyio.CancelScope (+ checkpoint)",
                    f"; without the checkpoint {nocp}",
                ),
                scope_row(
                    backend,
                    "open + close an idle RequestScope(timeout=30), us",
                    "scope_timeout",
                    "bare_timeout",
                    "bare anyio.move_on_after(30) (+ checkpoint)",
                ),
                scope_row(
                    backend,
                    "open + cancel + close a RequestScope (no call), us",
                    "scope_cancelled",
                    "bare_cancelled",
                    "bare anyio.CancelScope cancelled (+ checkpoint)",
                ),
                scope_row(
                    backend,
                    "open + close a RequestScope with an async on_cancel hook (not cancelled), us",
                    "scope_hook",
                    "scope",
                    "an idle RequestScope",
                ),
            ]
        if "call" in figures:
            for key, what in (("scoped", "scope already open"), ("per_call", "a scope per call")):
                for unit in ("wall", "cpu"):
                    rows.append(
                        added(
                            "call",
                            backend,
                            f"added per call, {what} ({'wall' if unit == 'wall' else 'client CPU'}), us",
                            f"{key}_{unit}",
                            f"raw_{unit}",
                            "+.1f",
                            "raw httpx2 call: {old} / {new} us",
                            ".0f",
                        )
                    )
            rows.append(
                added(
                    "call",
                    backend,
                    "added per call, scope already open, in-process transport (client CPU), us",
                    "scoped_local",
                    "raw_local",
                    "+.1f",
                    "raw httpx2 call, no network: {old} / {new} us",
                    ".1f",
                )
            )
        if "sse" in figures:
            rows.append(
                added(
                    "sse",
                    backend,
                    "added per SSE event (client CPU, openai chat stream), us",
                    "scoped_cpu",
                    "raw_cpu",
                    "+.2f",
                    "raw SDK: {old} / {new} us per chunk",
                    ".1f",
                )
            )
            for layer, what in (
                ("sdk", "added per SSE event, in-process wire, through the openai SDK (client CPU), us"),
                ("http", "added per SSE event, in-process wire, at the HTTP layer the SDK reads (client CPU), us"),
            ):
                key, base = f"wire_{layer}_scoped", f"wire_{layer}_raw"
                rows.append(added("sse", backend, what, key, base, "+.2f", "raw: {old} / {new} us per event", ".1f"))
            for numerator, denominator, what, context in (
                (
                    "wire_sdk_raw",
                    "wire_sdk_scoped",
                    "stream throughput through the SDK, in-process wire, scoped / raw",
                    "events/s: the client never waits, so raw CPU / scoped CPU per event",
                ),
                (
                    "scoped_rate",
                    "raw_rate",
                    "stream throughput on loopback, scoped / raw",
                    "wall units/s, interleaved in each subprocess",
                ),
            ):
                share = {
                    v: _share(med("sse", backend, v, numerator), med("sse", backend, v, denominator))
                    for v in ("old", "new")
                }
                rows.append([backend, what, _cell(share["old"], ".1%"), _cell(share["new"], ".1%"), "-", context])
            old, new = med("sse", backend, "old", "meter_event"), med("sse", backend, "new", "meter_event")
            rows.append(
                [
                    backend,
                    "token meter alone, us per SSE event",
                    _cell(old, ".2f"),
                    _cell(new, ".2f"),
                    _ratio(new, old),
                    "",
                ]
            )
        if "memory" in figures:
            for key, base, what in (
                ("scope_task", "bare_task", "memory per open scope (beyond a task in a bare cancel scope), B"),
                ("scoped_call", "raw_call", "memory per in-flight call (beyond a raw stream), B"),
            ):
                context = "the baseline itself: {old} / {new} B (tracemalloc)"
                rows.append(added("memory", backend, what, key, base, "+,.0f", context, ",.0f"))
    print("| backend | figure | old | new | new / old | context (old / new) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _share(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


if __name__ == "__main__":
    main()
