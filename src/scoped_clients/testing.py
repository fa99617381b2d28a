"""Helpers for tests, the demo, examples and benchmarks.

``serve(app, server="uvicorn")`` (or ``"hypercorn"``) is a context manager that
yields the port it listens on (127.0.0.1, ephemeral).  The server runs its own
event loop in a daemon thread, so the caller may use any async library.

``await leave_mid_answer(provider, answer)`` runs ``answer()`` the way a request
handler under ``ScopeMiddleware`` would, and leaves the way a user closing the tab
does, once the embedded provider is writing the answer; it prints what the scope's
report and the provider saw.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._scope import RequestScope

if TYPE_CHECKING:
    from .provider import LocalProvider

__all__ = ["LeftRun", "leave_mid_answer", "serve"]


@contextmanager
def serve(app: Any, server: Literal["uvicorn", "hypercorn"] = "uvicorn", *, log_level: str = "error") -> Iterator[int]:
    """Serve ``app`` (an ASGI application) on 127.0.0.1 until the block exits; yields the port.

    Args:
        app: the ASGI application.
        server: ``"uvicorn"`` or ``"hypercorn"``, run in a daemon thread with its own event loop.
        log_level: uvicorn's log level (``"error"``: quiet).
    """
    if server == "uvicorn":
        with _uvicorn(app, log_level) as port:
            yield port
    elif server == "hypercorn":
        with _hypercorn(app) as port:
            yield port
    else:
        raise ValueError(f"server must be 'uvicorn' or 'hypercorn', not {server!r}")


@contextmanager
def _uvicorn(app: Any, log_level: str) -> Iterator[int]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level=log_level, lifespan="auto", loop="asyncio", timeout_graceful_shutdown=1)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:  # uvicorn offers a flag, not an event
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.002)
    try:
        yield sock.getsockname()[1]
    finally:
        instance.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def _hypercorn(app: Any) -> Iterator[int]:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = Config()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]  # hypercorn closes the descriptor it is given
    config.loglevel = "ERROR"
    config.graceful_timeout = 1
    ready = threading.Event()
    loop_box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        loop_box["loop"], loop_box["stop"] = asyncio.get_running_loop(), stop
        ready.set()
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait, mode="asgi")

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True, name="hypercorn")
    thread.start()
    ready.wait(10)
    # hypercorn listens on the socket we bound: connections queue in its backlog until it accepts
    try:
        yield sock.getsockname()[1]
    finally:
        loop_box["loop"].call_soon_threadsafe(loop_box["stop"].set)
        thread.join(10)
        sock.close()


@dataclass(frozen=True)
class LeftRun:
    """What ``leave_mid_answer`` did: the scope (its report is final) and when it was cancelled."""

    scope: RequestScope
    #: ``time.monotonic()`` of the cancel
    t_cancel: float


async def leave_mid_answer(
    provider: LocalProvider,
    answer: Callable[[], Coroutine[Any, Any, object]],
    *,
    requests: int = 2,
    units: int = 10,
    name: str = "agent",
) -> LeftRun:
    """Run ``answer()`` in ``RequestScope(name)`` as a task of the scope (what a request handler does)
    and cancel the scope with reason ``client_disconnected`` once ``provider`` has received
    ``requests`` requests and produced ``units`` units of the last one: the user leaves while the
    answer is being written.  Prints each call of the report, when the provider saw the disconnect,
    and the tokens saved."""
    async with RequestScope(name) as scope:
        scope.spawn(answer)
        logs = await anyio.to_thread.run_sync(provider.wait_for_requests, requests)
        await anyio.to_thread.run_sync(logs[requests - 1].wait_units, units)
        t_cancel = time.monotonic()
        scope.cancel("client_disconnected")
    report = scope.report
    assert report is not None
    for call in report.calls:
        how = f" ({call.saved_method})" if call.saved_method else ""
        print(f"  {call.provider:6} {call.operation:24} {call.outcome:9} tokens_saved={call.tokens_saved}{how}")
    seen = await anyio.to_thread.run_sync(logs[requests - 1].wait_disconnect)
    print(f"provider saw the disconnect {(seen - t_cancel) * 1000:.1f} ms after the cancel")
    print(f"tokens saved: {report.tokens_saved} (estimate), at most {report.tokens_saved_max}")
    return LeftRun(scope, t_cancel)
