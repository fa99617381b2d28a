"""The FastAPI adapter under real uvicorn: a plain handler's LLM call stops when the client leaves."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from scoped_clients_fastapi import RequestScopeDep, install

from scoped_clients import RequestScope, ScopeReport, ScopeUsageError, add_report_sink
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider
from scoped_clients.testing import serve


def make_app(provider: LocalProvider, with_middleware: bool = True) -> FastAPI:
    app = FastAPI()
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")

    @app.get("/answer")
    async def answer(scope: RequestScopeDep) -> dict[str, Any]:
        assert isinstance(scope, RequestScope)
        completion = await llm.chat.completions.create(
            model="local-1000", messages=[{"role": "user", "content": "hi"}], max_tokens=300
        )
        return {"answer": completion.choices[0].message.content}

    if with_middleware:
        install(app, name="answer")
    return app


def test_plain_handler_stops_when_the_client_leaves() -> None:
    reports: list[ScopeReport] = []
    arrived = threading.Event()
    remove = add_report_sink(lambda r: (reports.append(r), arrived.set()))
    try:
        with LocalProvider() as provider, serve(make_app(provider)) as port:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /answer HTTP/1.1\r\nHost: x\r\n\r\n")
            (log,) = provider.wait_for_requests(1)
            log.wait_units(5)
            t_drop = time.monotonic()
            sock.close()
            log.wait_disconnect()
            assert arrived.wait(10)
            assert log.units_after(t_drop) <= 1
    finally:
        remove()
    assert reports[-1].scope == "answer" and reports[-1].cancel_reason == "client_disconnected"


def test_missing_middleware_is_a_clear_error() -> None:
    with LocalProvider() as provider:
        client = TestClient(make_app(provider, with_middleware=False), raise_server_exceptions=True)
        with pytest.raises(ScopeUsageError, match="install"):
            client.get("/answer")
