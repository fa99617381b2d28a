"""The aiohttp middleware under a real aiohttp server: a handler's LLM call stops when the client leaves."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from scoped_clients_aiohttp import request_scope, scope_middleware

from scoped_clients import ScopeReport, add_report_sink
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider


@pytest.fixture
def server() -> Iterator[tuple[LocalProvider, int]]:
    with LocalProvider() as provider:
        ready = threading.Event()
        box: dict[str, object] = {}

        async def main() -> None:
            llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")

            async def answer(request: web.Request) -> web.Response:
                assert request_scope(request) is not None
                completion = await llm.chat.completions.create(
                    model="local-1000", messages=[{"role": "user", "content": "hi"}], max_tokens=300
                )
                return web.json_response({"answer": completion.choices[0].message.content})

            app = web.Application(middlewares=[scope_middleware(name="answer")])
            app.router.add_get("/answer", answer)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            stop = asyncio.Event()
            box["port"] = runner.addresses[0][1]
            box["stop"], box["loop"] = stop, asyncio.get_running_loop()
            ready.set()
            await stop.wait()
            await llm.close()
            await runner.cleanup()

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(10)
        yield provider, int(box["port"])  # type: ignore[call-overload]
        box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(10)


def test_handler_call_stops_when_the_client_leaves(server: tuple[LocalProvider, int]) -> None:
    provider, port = server
    reports: list[ScopeReport] = []
    arrived = threading.Event()
    remove = add_report_sink(lambda r: (reports.append(r), arrived.set()))
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /answer HTTP/1.1\r\nHost: x\r\n\r\n")
        (log,) = provider.wait_for_requests(1)
        log.wait_units(5)
        t_drop = time.monotonic()
        sock.close()
        log.wait_disconnect()
        assert arrived.wait(10)
    finally:
        remove()
    assert log.units_after(t_drop) <= 1
    assert reports[-1].cancel_reason == "client_disconnected"
