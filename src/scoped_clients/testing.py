"""Run an ASGI app on a real server in a background thread, for tests, the demo and benchmarks.

``serve(app, server="uvicorn")`` (or ``"hypercorn"``) is a context manager that
yields the port it listens on (127.0.0.1, ephemeral).  The server runs its own
event loop in a daemon thread, so the caller may use any async library.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

__all__ = ["serve"]


@contextmanager
def serve(app: Any, server: Literal["uvicorn", "hypercorn"] = "uvicorn", *, log_level: str = "error") -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 until the block exits; yields the port."""
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
