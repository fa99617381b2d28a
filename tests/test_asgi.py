"""ScopeMiddleware under real uvicorn and hypercorn, driven by raw sockets that drop mid-request.

Every drop is measured at the upstream provider: it saw the disconnect and
produced at most one more token; nothing was left running in the app.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from _helpers import Reports
from scoped_clients import ScopeReport, current_scope
from scoped_clients.asgi import BUFFER_LIMIT, SCOPE_KEY, ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, RequestLog
from scoped_clients.testing import serve

SERVERS = ["uvicorn", "hypercorn"]
MESSAGES: Any = [{"role": "user", "content": "hello"}]


def build_app(provider: LocalProvider, middleware: list[Middleware] | None = None, **options: Any) -> ScopeMiddleware:
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")

    async def stream(request: Request) -> Response:
        chunks = await llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)

        async def body() -> Any:
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(body(), media_type="text/plain")

    async def complete(request: Request) -> Response:
        model = request.query_params.get("model", "local-1000")
        completion = await llm.chat.completions.create(model=model, messages=MESSAGES, max_tokens=500)
        assert current_scope() is request.scope[SCOPE_KEY]
        return JSONResponse({"answer": completion.choices[0].message.content})

    async def upload(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await llm.close()

    app = Starlette(
        routes=[
            Route("/stream", stream),
            Route("/complete", complete, methods=["GET", "POST"]),  # never reads a request body
            Route("/upload", upload, methods=["POST"]),
        ],
        middleware=middleware or [],
        lifespan=lifespan,
    )
    return ScopeMiddleware(app, **options)


def drop_when_busy(
    sock: socket.socket, provider: LocalProvider, reports: Reports, units: int = 5
) -> tuple[RequestLog, float, float, ScopeReport]:
    """Close the client's socket (the tab) once the upstream has produced ``units`` units.

    Returns the upstream request's log, the drop time, when the upstream saw its client go,
    and the request scope's report.
    """
    (log,) = provider.wait_for_requests(1)
    if units:
        log.wait_units(units)
    t_drop = time.monotonic()
    sock.close()
    seen = log.wait_disconnect()
    return log, t_drop, seen, reports.wait()


def request_bytes(path: str, method: str = "GET", body: bytes = b"", chunked: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n\r\n"
        parts = [body[i : i + 65536] for i in range(0, len(body), 65536)]
        return head.encode() + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("path", ["/stream", "/complete"])
def test_dropped_request_stops_the_upstream(server: str, path: str, provider: LocalProvider, reports: Reports) -> None:
    app = build_app(provider)
    with serve(app, server) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes(path))
        log, t_drop, seen, report = drop_when_busy(sock, provider, reports)
    assert seen >= t_drop
    assert log.units_after(t_drop) <= 1
    assert len(provider.requests) == 1
    assert report.outcome == "cancelled" and report.cancel_reason == "client_disconnected"
    assert [c.outcome for c in report.calls] == ["aborted"]
    assert app.live == set()  # no request scope (and so no task of it) left behind


@pytest.mark.parametrize("server", SERVERS)
def test_drop_before_the_upstream_answers(server: str, provider: LocalProvider, reports: Reports) -> None:
    """The client leaves while the app still waits for the LLM's headers: nothing was sent to it yet."""
    app = build_app(provider)
    with serve(app, server) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes("/complete?model=local-1000"))
        log, t_drop, _, report = drop_when_busy(sock, provider, reports, units=0)
    assert log.units_after(t_drop) <= 1
    assert report.cancel_reason == "client_disconnected"


@pytest.mark.parametrize("server", SERVERS)
def test_completed_request_is_never_reported_as_disconnected(
    server: str, provider: LocalProvider, reports: Reports
) -> None:
    app = build_app(provider)
    with serve(app, server) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes("/complete?model=local-3"))
        status, body = read_response(sock)
        report = reports.wait()
    assert status == 200 and json.loads(body)["answer"] == "tok0 tok1 tok2 "
    assert report.outcome == "completed" and report.cancel_reason is None
    assert [c.outcome for c in report.calls] == ["completed"]
    assert provider.requests[0].disconnected_at is None


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_upload_arrives_whole(server: str, chunked: bool, provider: LocalProvider, reports: Reports) -> None:
    body = os.urandom(5 * 1024 * 1024)
    app = build_app(provider)
    with serve(app, server) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes("/upload", "POST", body, chunked=chunked))
        status, answer = read_response(sock)
        reports.wait()
    assert status == 200
    assert json.loads(answer) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


class _Passthrough(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        return response


def test_works_outside_base_http_middleware(provider: LocalProvider, reports: Reports) -> None:
    app = build_app(provider, middleware=[Middleware(_Passthrough)])
    with serve(app, "uvicorn") as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes("/complete"))
        log, t_drop, _, report = drop_when_busy(sock, provider, reports)
    assert log.units_after(t_drop) <= 1
    assert report.cancel_reason == "client_disconnected"


def test_lifespan_shutdown_cancels_live_scopes(provider: LocalProvider, reports: Reports) -> None:
    """A server shutting down cancels the requests still in flight, with reason ``shutdown``."""
    app = build_app(provider)
    with serve(app, "uvicorn") as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes("/complete"))
        (log,) = provider.wait_for_requests(1)
        log.wait_units(3)
        t_shutdown = time.monotonic()
    # the server has stopped: lifespan.shutdown cancelled the live request scope
    report = reports.wait()
    sock.close()
    assert report.cancel_reason == "shutdown"
    assert log.wait_disconnect() >= t_shutdown
    assert app.live == set()


def test_websocket_scope_is_cancelled_when_the_client_leaves(provider: LocalProvider, reports: Reports) -> None:
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")

    async def talk(websocket: WebSocket) -> None:
        await websocket.accept()
        stream = await llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                await websocket.send_text(chunk.choices[0].delta.content)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await llm.close()

    app = ScopeMiddleware(Starlette(routes=[WebSocketRoute("/ws", talk)], lifespan=lifespan))
    with serve(app, "uvicorn") as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        log, t_drop, _, report = drop_when_busy(sock, provider, reports)
    assert log.units_after(t_drop) <= 1
    assert report.scope == "WS /ws" and report.cancel_reason == "client_disconnected"


# ------------------------------------------- request bodies, bounded


class CountingServer:
    """Sits between the server and ScopeMiddleware: counts the body bytes the server handed out."""

    def __init__(self, app: ScopeMiddleware) -> None:
        self.app = app
        self.pulled = 0
        self._cond = threading.Condition()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting_receive() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                with self._cond:
                    self.pulled += len(message.get("body", b""))
                    self._cond.notify_all()
            return message

        await self.app(scope, counting_receive if scope["type"] == "http" else receive, send)

    def wait_pulled(self, n: int, timeout: float = 10) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.pulled >= n, timeout), f"the server handed out {self.pulled} bytes"


def push_body(sock: socket.socket, size: int, stall: float = 2.0) -> int:
    """Send ``size`` body bytes; returns how many went out before the socket stalled for ``stall`` s."""
    chunk = b"x" * 65536
    sent = 0
    sock.settimeout(stall)
    try:
        while sent < size:
            sent += sock.send(chunk[: size - sent])
    except TimeoutError:
        pass
    return sent


@pytest.mark.parametrize("server", SERVERS)
def test_an_upload_the_app_does_not_read_is_held_back_by_the_server(server: str, provider: LocalProvider) -> None:
    """The middleware used to read the whole body into memory (a 50 MB upload was accepted in
    0.1 s, +50 MiB RSS). Now it reads at most BUFFER_LIMIT ahead of the app: the server's flow
    control stalls the client, as it does without the middleware."""
    size = 50 * 1024 * 1024
    head = b"POST /complete HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % size
    counting = CountingServer(build_app(provider))
    with serve(counting, server) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        provider.wait_for_requests(1)  # the handler runs without reading its body
        sent = push_body(sock, size)
        counting.wait_pulled(BUFFER_LIMIT)  # the middleware reads ahead (to see a disconnect)...
        pulled = counting.pulled
    assert sent < size  # the client stalled: backpressure reached it
    assert pulled <= BUFFER_LIMIT + 1024 * 1024  # ...but no further than its limit plus one server message


@pytest.mark.parametrize("server", SERVERS)
def test_a_client_leaving_mid_upload_cancels_the_scope(server: str, provider: LocalProvider, reports: Reports) -> None:
    """The client declared 50 MB, sent 100 KB and left: the handler, which does not read its body,
    is cancelled and the upstream sees the disconnect."""
    head = b"POST /complete HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % (50 * 1024 * 1024)
    counting = CountingServer(build_app(provider))
    with serve(counting, server) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(head + b"x" * 100_000)
        counting.wait_pulled(100_000)
        log, t_drop, seen, report = drop_when_busy(sock, provider, reports)
    assert seen >= t_drop and log.units_after(t_drop) <= 1
    assert report.outcome == "cancelled" and report.cancel_reason == "client_disconnected"


@pytest.mark.parametrize("server", SERVERS)
def test_a_declared_body_over_max_body_size_is_refused_before_the_app_runs(
    server: str, provider: LocalProvider, reports: Reports
) -> None:
    app = build_app(provider, max_body_size=1024 * 1024)
    with serve(app, server) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes("/complete", "POST", b"x" * (1024 * 1024 + 1)))
        status, answer = read_response(sock)
    assert status == 413 and b"the limit is 1048576 bytes" in answer
    assert provider.requests == [] and reports.items == []  # the app never ran


@pytest.mark.parametrize("server", SERVERS)
def test_a_chunked_body_over_max_body_size_is_refused_as_it_is_read(
    server: str, provider: LocalProvider, reports: Reports
) -> None:
    app = build_app(provider, max_body_size=1024 * 1024)
    with serve(app, server) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes("/upload", "POST", os.urandom(2 * 1024 * 1024), chunked=True))
        status, answer = read_response(sock)
        report = reports.wait()
    assert status == 413 and b"the limit is 1048576 bytes" in answer
    assert report.outcome == "cancelled" and report.cancel_reason == "body_too_large"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_within_max_body_size_arrives_whole(chunked: bool, provider: LocalProvider, reports: Reports) -> None:
    body = os.urandom(3 * 1024 * 1024)
    app = build_app(provider, max_body_size=len(body))
    with serve(app, "uvicorn") as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes("/upload", "POST", body, chunked=chunked))
        status, answer = read_response(sock)
        assert reports.wait().outcome == "completed"
    assert status == 200
    assert json.loads(answer) == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_a_client_leaving_during_a_held_back_upload_is_seen_when_the_app_reads_on(reports: Reports) -> None:
    """While the read-ahead is full nobody reads the socket (not even the server), so the client's
    leaving is queued behind its body; the moment the app reads on, the scope is cancelled."""
    release = threading.Event()

    async def read_later(request: Request) -> Response:
        await anyio.to_thread.run_sync(release.wait, 10)
        try:
            await request.body()
        except Exception as exc:  # Starlette's ClientDisconnect
            raise HTTPException(499) from exc
        return Response("read")  # pragma: no cover

    counting = CountingServer(ScopeMiddleware(Starlette(routes=[Route("/", read_later, methods=["POST"])])))
    with serve(counting, "uvicorn") as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % (50 * 1024 * 1024))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # until the socket buffers on both sides are full
                sock.send(b"x" * 65536)
        counting.wait_pulled(BUFFER_LIMIT)  # the middleware's read-ahead is full: it has stopped reading
        sock.close()
        release.set()
        report = reports.wait()
    assert report.outcome == "cancelled" and report.cancel_reason == "client_disconnected"
