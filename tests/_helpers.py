"""Helpers shared by the test modules (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from scoped_clients import CancelBus, RequestScope, ScopeCancelled, ScopeReport
from scoped_clients.provider import LocalProvider, RequestLog

if TYPE_CHECKING:
    from scoped_clients.asgi import ScopeMiddleware

TESTS = Path(__file__).parent


class Reports:
    """A report sink that keeps every ``ScopeReport`` and lets a test wait for them (any thread)."""

    def __init__(self) -> None:
        self.items: list[ScopeReport] = []
        self._cond = threading.Condition()

    def __call__(self, report: ScopeReport) -> None:
        with self._cond:
            self.items.append(report)
            self._cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 10) -> ScopeReport:
        """The ``n``-th report, once it has come."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= n, timeout), "no scope report"
            return self.items[n - 1]

    def wait_for(self, name: str, timeout: float = 10) -> ScopeReport:
        """The first report of the scope named ``name``, once it has come."""

        def found() -> ScopeReport | None:
            return next((r for r in self.items if r.scope == name), None)

        with self._cond:
            assert self._cond.wait_for(lambda: found() is not None, timeout), f"no report for scope {name!r}"
            report = found()
        assert report is not None
        return report


async def read_chat_stream(llm: Any, reached: anyio.Event, *, after: int, **create: Any) -> None:
    """Stream ``llm.chat.completions.create(**create, stream=True)`` to its end (or its cancel),
    setting ``reached`` once ``after`` chunks with content have come."""
    stream = await llm.chat.completions.create(**create, stream=True)
    received = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == after:
                reached.set()


@contextlib.asynccontextmanager
async def held_open(scopes: list[RequestScope]) -> AsyncIterator[None]:
    """Open each scope in a task of its own, where it waits to be cancelled; the block runs once every
    one is open, and its end waits for every task (so each scope has to be cancelled in it)."""
    opened = 0
    all_open = anyio.Event()

    async def hold(scope: RequestScope) -> None:
        nonlocal opened
        async with scope:
            opened += 1
            if opened == len(scopes):
                all_open.set()
            await anyio.sleep(60)  # until the block cancels it

    async with anyio.create_task_group() as tg:
        for scope in scopes:
            tg.start_soon(hold, scope)
        await all_open.wait()
        yield


async def wait(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one of the provider's blocking waits without blocking the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)


async def cancel_agent_turn(
    provider: LocalProvider, scope: RequestScope, run: Callable[[], Awaitable[object]], where: str, turns: int = 1
) -> tuple[float, list[BaseException]]:
    """Run an agent framework's ``run()`` under ``scope`` and cancel the scope once the provider has
    received ``turns`` requests and produced 10 units of the last one.

    ``where="body"``: ``run()`` is awaited in the scope's body; ``"task"``: in a plain asyncio task
    started inside it (what the frameworks do), which the scope's exit waits for (shielded).
    Returns the time of the cancel and what ``run()`` raised (re-raised too, so the task group sees it).
    """
    import asyncio  # the "task" placement is asyncio's: the frameworks run on asyncio only

    raised: list[BaseException] = []

    async def guarded() -> None:
        try:
            await run()
        except BaseException as exc:
            raised.append(exc)
            raise

    async def cancel_when_generating() -> float:
        logs = await wait(provider.wait_for_requests, turns)
        await wait(logs[-1].wait_units, 10)
        t_cancel = time.monotonic()
        scope.cancel("client_disconnected")
        return t_cancel

    if where == "body":
        times: list[float] = []
        async with anyio.create_task_group() as tg, scope:

            async def canceller() -> None:
                times.append(await cancel_when_generating())

            tg.start_soon(canceller)
            await guarded()
        (t_cancel,) = times
    else:
        async with scope:
            task = asyncio.create_task(guarded())
            t_cancel = await cancel_when_generating()
            with scope.shield():
                await asyncio.wait([task], timeout=20)
    return t_cancel, raised


@dataclass
class SyncCancel:
    """What happened when a sync call's scope was cancelled from another thread."""

    scope: RequestScope
    log: RequestLog
    t_cancel: float
    seen: float  # when the provider saw the client go
    thread_alive: bool
    errors: list[BaseException] = field(default_factory=list)


def _cancel_scope(scope: RequestScope) -> float:
    t_cancel = time.monotonic()
    scope.cancel("client_disconnected")
    return t_cancel


def cancel_sync_call(
    provider: LocalProvider,
    call: Callable[[], object],
    *,
    units: int,
    scope: RequestScope | None = None,
    cancel: Callable[[RequestScope], float] = _cancel_scope,
) -> SyncCancel:
    """Run ``call`` in a worker thread under ``scope`` (default: a new one); once the provider has
    produced ``units`` units for it, ``cancel(scope)`` from this thread (default: ``scope.cancel()``;
    it returns when the cancel was sent) and wait for the provider to see the disconnect."""
    scope = scope if scope is not None else RequestScope("sync")
    errors: list[BaseException] = []

    def worker() -> None:
        with scope:
            try:
                call()
            except ScopeCancelled as exc:
                errors.append(exc)
                raise

    thread = threading.Thread(target=worker)
    thread.start()
    (log,) = provider.wait_for_requests(1)
    if units:
        log.wait_units(units)
    t_cancel = cancel(scope)
    seen = log.wait_disconnect()
    thread.join(10)
    return SyncCancel(scope, log, t_cancel, seen, thread.is_alive(), errors)


@contextlib.contextmanager
def job_worker(args: list[str], log_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A job worker's process: ``args`` run in ``tests/`` (importable) with ``env`` added, its output in
    ``log_path``.  On exit, SIGTERM (a warm shutdown); killed if it has not ended within 20 s."""
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            args,
            cwd=TESTS,
            env={**os.environ, **env, "PYTHONPATH": str(TESTS)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def logged_reports(log_path: Path) -> dict[str, dict[str, Any]]:
    """The scope reports a worker logged (``scoped_clients.report {json}`` lines), by scope id."""
    found = {}
    for line in log_path.read_text(errors="replace").splitlines():
        _, marker, payload = line.partition("scoped_clients.report ")
        if marker:
            report = json.loads(payload)
            found[report["scope_id"]] = report
    return found


def chat_app(provider_url: str, bus: CancelBus) -> ScopeMiddleware:
    """An app with a Stop button, each request a scope on ``bus``: ``GET /chat`` streams a long
    completion's text; ``POST /cancel/{scope_id}`` cancels that request, answering
    ``{"cancelled_here": <scopes it cancelled in this process>, "published": <the bus is connected>}``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from scoped_clients.asgi import ScopeMiddleware
    from scoped_clients.openai import AsyncOpenAI

    llm = AsyncOpenAI(base_url=provider_url + "/v1", api_key="test")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await llm.close()

    async def chat(request: Request) -> Response:
        chunks = await llm.chat.completions.create(
            model="local-1000", messages=[{"role": "user", "content": "tell me a long story"}], stream=True
        )

        async def body() -> AsyncIterator[str]:
            async for chunk in chunks:
                yield (chunk.choices[0].delta.content or "") if chunk.choices else ""

        return StreamingResponse(body(), media_type="text/plain")

    async def cancel(request: Request) -> Response:
        here = await bus.cancel(request.path_params["scope_id"], "user_stopped")
        return JSONResponse({"cancelled_here": here, "published": bool(getattr(bus, "connected", False))})

    routes = [Route("/chat", chat), Route("/cancel/{scope_id}", cancel, methods=["POST"])]
    return ScopeMiddleware(Starlette(routes=routes, lifespan=lifespan), bus=bus)
