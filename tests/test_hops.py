"""Scopes across service hops: service A calls service B, which calls the LLM.

Both services run under real uvicorn on 127.0.0.1 with ``ScopeMiddleware``; A calls
B with a scoped ``httpx`` / ``httpx2`` client; B calls the embedded provider with the
scoped OpenAI client.  What is asserted is what the provider saw.
"""

from __future__ import annotations

import importlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from _helpers import Reports
from scoped_clients import DEADLINE_HEADER, LocalCancelBus, RequestScope, current_scope
from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider
from scoped_clients.testing import serve

MESSAGES: Any = [{"role": "user", "content": "hello"}]
HTTP_LIBRARIES = ["httpx", "httpx2"]


def service_b(provider: LocalProvider, **options: Any) -> ScopeMiddleware:
    """Service B: calls the LLM (non-streamed, 500 tokens) and echoes what its scope was given."""
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)

    async def complete(request: Request) -> Response:
        completion = await llm.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=500)
        return JSONResponse({"answer": completion.choices[0].message.content})

    async def echo(request: Request) -> Response:
        scope = current_scope()
        assert scope is not None
        return JSONResponse(
            {"id": scope.id, "remaining": scope.remaining(), "header": request.headers.get(DEADLINE_HEADER)}
        )

    async def stream(request: Request) -> Response:
        chunks = await llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)

        async def body() -> AsyncIterator[str]:
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(body(), media_type="text/plain")

    app = Starlette(routes=[Route("/complete", complete), Route("/echo", echo), Route("/stream", stream)])
    return ScopeMiddleware(app, name="B", **options)


def service_a(b_port: int, library: str) -> ScopeMiddleware:
    """Service A: forwards to B with a scoped generic HTTP client."""
    module = importlib.import_module(f"scoped_clients.{library}")

    async def forward(request: Request) -> Response:
        async with module.AsyncClient(base_url=f"http://127.0.0.1:{b_port}", timeout=30) as client:
            answer = await client.get(request.url.path.removeprefix("/a"))
        return Response(answer.content, media_type="application/json")

    return ScopeMiddleware(Starlette(routes=[Route("/a/{rest:path}", forward)]), name="A")


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET (the tests also need to drop such a socket mid-request)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes(path, headers))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


def request_bytes(path: str, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("library", HTTP_LIBRARIES)
def test_a_client_leaving_service_a_stops_the_llm_call_of_service_b(
    library: str, provider: LocalProvider, reports: Reports
) -> None:
    with serve(service_b(provider)) as b_port, serve(service_a(b_port, library)) as a_port:
        sock = socket.create_connection(("127.0.0.1", a_port))
        sock.sendall(request_bytes("/a/complete"))
        (log,) = provider.wait_for_requests(1)
        log.wait_units(5)
        t_drop = time.monotonic()
        sock.close()
        seen = log.wait_disconnect()
        report_a, report_b = reports.wait_for("A"), reports.wait_for("B")
    assert seen >= t_drop
    assert log.units_after(t_drop) <= 1  # the provider stopped at its next token
    assert len(provider.requests) == 1  # and nobody retried
    assert (report_a.cancel_reason, report_b.cancel_reason) == ("client_disconnected", "client_disconnected")
    assert [c.outcome for c in report_a.calls] == ["aborted"]  # A's call to B
    assert [(c.provider, c.outcome) for c in report_b.calls] == [("openai", "aborted")]  # B's call to the LLM


@pytest.mark.anyio
@pytest.mark.parametrize("library", HTTP_LIBRARIES)
async def test_the_callers_deadline_travels_to_the_next_service(library: str, provider: LocalProvider) -> None:
    module = importlib.import_module(f"scoped_clients.{library}")
    with serve(service_b(provider)) as b_port:
        async with RequestScope(timeout=5) as scope, module.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{b_port}/echo")
            echoed, left_after = answer.json(), scope.remaining()
    sent = int(echoed["header"])
    assert 0 < sent <= 5000
    # B's scope got that timeout: it had at most what A had left when it sent the request
    assert echoed["remaining"] is not None and left_after <= echoed["remaining"] <= sent / 1000


def test_a_shorter_timeout_of_the_service_wins_and_none_is_taken_from_a_bad_header(provider: LocalProvider) -> None:
    with serve(service_b(provider, timeout=1.0)) as port:
        _, _, longer = get(port, "/echo", {DEADLINE_HEADER: "60000"})
        _, _, shorter = get(port, "/echo", {DEADLINE_HEADER: "250"})
    with serve(service_b(provider)) as port:
        bad = [get(port, "/echo", {DEADLINE_HEADER: value})[2] for value in ("soon", "-5", "1e9", "12.5")]
        _, _, none = get(port, "/echo")
    assert 0 < json.loads(longer)["remaining"] <= 1.0
    assert 0 < json.loads(shorter)["remaining"] <= 0.25
    assert [json.loads(b)["remaining"] for b in bad] == [None] * 4
    assert json.loads(none)["remaining"] is None


def test_an_adopted_deadline_stops_the_llm_call_when_it_passes(provider: LocalProvider, reports: Reports) -> None:
    with serve(service_b(provider)) as port:
        status, _, _ = get(port, "/complete", {DEADLINE_HEADER: "300"})
        (log,) = provider.requests
        report = reports.wait_for("B")
    assert log.disconnected_at is not None and log.completed_at is None  # the provider saw the abort
    assert report.cancel_reason == "timeout"
    assert status == 504  # B's handler was cancelled before it answered: the middleware says why
    assert [c.outcome for c in report.calls] == ["aborted"]


@pytest.mark.anyio
async def test_vendor_clients_do_not_send_the_deadline_header(provider: LocalProvider) -> None:
    async with AsyncOpenAI(base_url=provider.url + "/v1", api_key="x") as llm, RequestScope(timeout=30):
        await llm.chat.completions.create(model="local-3", messages=MESSAGES)
    (log,) = provider.requests
    assert DEADLINE_HEADER not in log.headers


def test_the_scope_id_comes_from_the_request_header_and_goes_back_in_the_response(provider: LocalProvider) -> None:
    with serve(service_b(provider)) as port:
        _, given_headers, given = get(port, "/echo", {"x-request-id": "page-42.chat:1"})
        _, made_headers, made = get(port, "/echo")
        _, bad_headers, bad = get(port, "/echo", {"x-request-id": "x" * 200})
    assert json.loads(given)["id"] == given_headers["x-request-id"] == "page-42.chat:1"
    made_id = json.loads(made)["id"]
    assert made_headers["x-request-id"] == made_id and len(made_id) == 32 and int(made_id, 16) >= 0
    assert json.loads(bad)["id"] == bad_headers["x-request-id"] != "x" * 200  # too long: a fresh id instead


def test_a_cancel_endpoint_in_the_same_process_stops_a_request_by_its_id(
    provider: LocalProvider, reports: Reports
) -> None:
    bus = LocalCancelBus()
    app_b = service_b(provider, bus=bus)
    with serve(app_b) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes("/complete", {"x-request-id": "chat-7"}))
        (log,) = provider.wait_for_requests(1)
        log.wait_units(5)
        t_cancel = time.monotonic()
        assert bus.cancel_sync("chat-7", "user_stopped") == 1
        seen = log.wait_disconnect()
        report = reports.wait_for("B")
        sock.close()
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1
    assert report.scope_id == "chat-7" and report.cancel_reason == "user_stopped"
    assert bus.scopes("chat-7") == []  # the scope left the bus when it ended
    assert bus.cancel_sync("chat-7") == 0  # a cancel after the end is a no-op
    assert bus._pending == {}


@pytest.mark.parametrize(("path", "status"), [("/complete", 499), ("/stream", 200)])
def test_a_request_cancelled_by_id_while_its_client_waits_gets_a_proper_answer(
    path: str, status: int, provider: LocalProvider, reports: Reports
) -> None:
    """Not the server's 500 or a broken chunked body: a status that says why, or the stream's end."""
    bus = LocalCancelBus()
    with serve(service_b(provider, bus=bus)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes(path, {"x-request-id": "stop-me"}))
        (log,) = provider.wait_for_requests(1)
        log.wait_units(5)
        t_cancel = time.monotonic()
        assert bus.cancel_sync("stop-me", "user_stopped") == 1
        seen = log.wait_disconnect()
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection (Connection: close)
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1
    assert head.split()[1] == str(status).encode()
    assert b"x-request-id: stop-me" in head.lower()
    if status == 499:
        assert body == b"Request cancelled: user_stopped.\n"
    else:
        assert b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n")  # a whole body
    assert reports.wait_for("B").cancel_reason == "user_stopped"
