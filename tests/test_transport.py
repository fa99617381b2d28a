"""Scoped httpx/httpx2 transports, measured at the server.

Every test asserts what the loopback provider observed: that it saw the client
go, how many units it produced after the cancel, and how many requests it got.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import httpx2
import psutil
import pytest
import trustme

import scoped_clients.httpx
import scoped_clients.httpx2
from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled, UnsupportedError
from scoped_clients._scope import registry
from scoped_clients.provider import LocalProvider

LIBS = [pytest.param(scoped_clients.httpx, id="httpx"), pytest.param(scoped_clients.httpx2, id="httpx2")]
STREAM = "/units?n=100000&interval=0.005"
SLOW = "/slow?delay=60"


def only_request(provider: LocalProvider) -> Any:
    (log,) = provider.requests
    return log


# ------------------------------------------------------------------ async


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_refused_before_send(lib: ModuleType, provider: LocalProvider) -> None:
    async with lib.AsyncClient() as client:
        scope = RequestScope()
        outcome: list[BaseException] = []
        refused = anyio.Event()

        async def call() -> None:
            try:
                await client.get(provider.url + STREAM)
            except ScopeCancelled as exc:
                outcome.append(exc)
                refused.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, scope:
                scope.cancel("client_disconnected")
                tg.start_soon(call)
                with scope.shield():  # keep the scope open until the call was refused
                    await refused.wait()
    assert len(outcome) == 1
    assert provider.requests == []
    assert scope.report is not None
    assert [c.outcome for c in scope.report.calls] == ["refused"]


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_cancel_while_waiting_for_headers(lib: ModuleType, provider: LocalProvider) -> None:
    """A task outside the body (fire-and-forget) gets ScopeCancelled; the server sees the disconnect."""
    errors: list[BaseException] = []
    async with lib.AsyncClient() as client:
        scope = RequestScope("pending")

        async def call() -> None:
            try:
                await client.get(provider.url + SLOW)
            except ScopeCancelled as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, scope:
                tg.start_soon(call)  # inherits the scope, runs outside its body
                await wait(provider.wait_for_requests, 1)
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
            log = only_request(provider)
            seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) == 0
    assert len(provider.requests) == 1  # no retry
    assert len(errors) == 1 and errors[0].reason.code == "client_disconnected"  # type: ignore[attr-defined]
    assert scope.report is not None
    (record,) = scope.report.calls
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("around", ["nothing", "a cancel scope", "a shielded cancel scope"])
async def test_cancel_while_waiting_for_headers_inside_the_body(
    lib: ModuleType, provider: LocalProvider, around: str
) -> None:
    """In the body's own task the call waits under the scope's own cancel scope (its own one only
    when a shield stands between): either way the caller gets ScopeCancelled and the server the
    disconnect at once, before the block ends."""
    errors: list[BaseException] = []
    cancelled_at: list[float] = []
    async with lib.AsyncClient() as client:
        scope = RequestScope("pending")

        async def cancel() -> None:
            await wait(provider.wait_for_requests, 1)
            cancelled_at.append(time.monotonic())
            scope.cancel("client_disconnected")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel)
                async with scope:
                    inner = anyio.CancelScope(shield=around == "a shielded cancel scope")
                    with inner if around != "nothing" else contextlib.nullcontext():
                        try:
                            await client.get(provider.url + SLOW)
                        except ScopeCancelled as exc:
                            errors.append(exc)
            log = only_request(provider)
            seen = await wait(log.wait_disconnect)
    (t_cancel,) = cancelled_at
    assert seen >= t_cancel
    assert len(provider.requests) == 1  # no retry
    assert len(errors) == 1 and errors[0].reason.code == "client_disconnected"  # type: ignore[attr-defined]
    assert scope.report is not None and scope.report.outcome == "cancelled"
    (record,) = scope.report.calls
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    assert "cancelled_by" not in record.detail


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_cancel_while_reading_the_body_inside_the_body(lib: ModuleType, provider: LocalProvider) -> None:
    """Inside the scope's body the cancel is absorbed at the block's exit."""
    after_cancel = False
    async with lib.AsyncClient() as client:
        with anyio.fail_after(10):
            async with RequestScope() as scope, client.stream("GET", provider.url + STREAM) as response:
                async for _ in response.aiter_raw():
                    log = only_request(provider)
                    if len(log.units) >= 5:
                        t_cancel = time.monotonic()
                        scope.cancel("client_disconnected")
                        # the stream must not deliver more: the next read raises
                        after_cancel = True
            seen = await wait(log.wait_disconnect)
    assert after_cancel
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1
    assert scope.report is not None
    (record,) = scope.report.calls
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    # the scope's own cancel reached the read: not recorded as someone else's cancellation
    assert "cancelled_by" not in record.detail


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_the_deadline_passing_mid_read_stops_the_stream_at_the_provider(
    lib: ModuleType, provider: LocalProvider
) -> None:
    """The scope's deadline is a timer (the loop's own on asyncio and uvloop, the process' timer thread
    on trio): when it passes, the call is aborted at its socket like any cancel, reason ``timeout``."""
    async with lib.AsyncClient() as client:
        with anyio.fail_after(10):
            async with RequestScope(timeout=0.3) as scope, client.stream("GET", provider.url + STREAM) as response:
                async for _ in response.aiter_raw():
                    pass
            log = only_request(provider)
            seen = await wait(log.wait_disconnect)
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "timeout"
    assert scope.deadline is not None and scope.cancel_reason.time >= scope.deadline
    assert seen >= scope.cancel_reason.time
    assert log.units_after(scope.cancel_reason.time) <= 1
    assert len(log.units) >= 2  # it was streaming when the deadline passed
    assert len(provider.requests) == 1
    assert scope.report is not None
    (record,) = scope.report.calls
    assert record.outcome == "aborted" and record.cancel_reason == "timeout"


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_cancel_while_another_task_reads_the_body(lib: ModuleType, provider: LocalProvider) -> None:
    errors: list[BaseException] = []
    received = 0
    async with lib.AsyncClient() as client:
        scope = RequestScope()

        async def reader() -> None:
            nonlocal received
            try:
                async with client.stream("GET", provider.url + STREAM) as response:
                    async for chunk in response.aiter_raw():
                        received += chunk.count(b"\n")
            except ScopeCancelled as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, scope:
                tg.start_soon(reader)
                await wait(provider.wait_for_requests, 1)
                log = only_request(provider)
                await wait(log.wait_units, 5)
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
            seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert len(errors) == 1
    assert len(provider.requests) == 1
    assert received <= len(log.units)


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_idle_stream_is_closed_on_cancel(lib: ModuleType, provider: LocalProvider) -> None:
    """A response nobody is reading: the socket is closed and the server sees it."""
    async with lib.AsyncClient() as client:
        with anyio.fail_after(10):
            async with RequestScope() as scope:
                request = client.build_request("GET", provider.url + STREAM)
                response = await client.send(request, stream=True)
                log = only_request(provider)
                await wait(log.wait_units, 3)
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
                with scope.shield():  # observe the server while the block is still open
                    seen = await wait(log.wait_disconnect)
            with pytest.raises(ScopeCancelled):
                await response.aread()
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
# The test drops httpx's own `aiter_raw` generator on purpose: trio reports that at GC time.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_dropped_stream_is_closed_at_scope_exit(lib: ModuleType, provider: LocalProvider) -> None:
    """A stream dropped without close (the SDKs' leak) is aborted as an orphan when the block ends."""
    async with lib.AsyncClient() as client:
        with anyio.fail_after(10):
            async with RequestScope() as scope:
                response = await client.send(client.build_request("GET", provider.url + STREAM), stream=True)
                async for _ in response.aiter_raw():
                    break  # a `break` that never closes the response
                t_exit = time.monotonic()
            log = only_request(provider)
            seen = await wait(log.wait_disconnect)
    assert seen >= t_exit
    assert log.units_after(t_exit) <= 1
    assert scope.report is not None
    (record,) = scope.report.calls
    assert record.outcome == "aborted" and record.orphan and record.cancel_reason == "scope_closed"
    assert scope.report.outcome == "completed"


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_completed_call_is_recorded(lib: ModuleType, provider: LocalProvider) -> None:
    async with lib.AsyncClient() as client, RequestScope() as scope:
        response = await client.get(provider.url + "/units?n=3&interval=0")
        assert response.text == "unit 0\nunit 1\nunit 2\n"
    assert scope.report is not None
    (record,) = scope.report.calls
    assert record.outcome == "completed" and not record.orphan
    assert record.detail["status_code"] == 200


@pytest.fixture
def cut_body() -> Iterator[str]:
    """A server that answers every request with the head and one chunk of a chunked body, then hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                received = b""
                while b"\r\n\r\n" not in received:
                    data = conn.recv(65536)
                    if not data:
                        break
                    received += data
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    listener.close()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_a_body_cut_short_raises_what_the_library_raises(lib: ModuleType, cut_body: str) -> None:
    """The body reads the httpcore stream beneath the library's own response stream (one generator less
    per chunk) under the library's own mapping of httpcore's exceptions: a cut body raises the same."""
    library = importlib.import_module(lib.__name__.rsplit(".", 1)[-1])
    errors: list[BaseException] = []
    seen: list[bytes] = []
    async with library.AsyncClient() as raw, lib.AsyncClient() as scoped, RequestScope() as scope:
        for client in (raw, scoped):
            async with client.stream("GET", cut_body) as response:
                with pytest.raises(library.HTTPError) as caught:
                    async for chunk in response.aiter_raw():
                        seen.append(chunk)
                        if client is scoped:  # read without the library's generator in between
                            body = response.stream._stream  # ours, under httpx's BoundAsyncStream
                            iterator = body._reader.ag_frame.f_locals["iterator"]
                            assert iterator is body._below
                            assert "AsyncResponseStream" not in iterator.ag_code.co_qualname
                errors.append(caught.value)
    (raw_error, scoped_error) = errors
    assert seen == [b"hello", b"hello"]
    assert type(scoped_error) is type(raw_error) is library.RemoteProtocolError
    assert str(scoped_error) == str(raw_error)
    assert type(scoped_error.__cause__) is type(raw_error.__cause__)
    assert type(raw_error.__cause__).__module__.startswith("httpcore")
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "failed" and record.error == f"RemoteProtocolError: {raw_error}"


@pytest.mark.anyio
@pytest.mark.parametrize("lib", LIBS)
async def test_unscoped_calls_pass_through(lib: ModuleType, provider: LocalProvider) -> None:
    async with lib.AsyncClient() as client:
        response = await client.get(provider.url + "/units?n=2&interval=0")
    assert response.status_code == 200


@pytest.mark.parametrize("lib", LIBS)
def test_http2_is_refused_with_a_clear_error(lib: ModuleType) -> None:
    with pytest.raises(UnsupportedError, match=r"HTTP/1\.1"):
        lib.AsyncClient(http2=True)
    with pytest.raises(UnsupportedError, match="RST_STREAM"):
        lib.AsyncScopedTransport(http2=True)


# ------------------------------------------------------------------- sync


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[LocalProvider, ssl.SSLContext]]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with LocalProvider(ssl_context=server_context) as p:
        yield p, client_context


def _sync_cancel_from_thread(client: Any, provider: LocalProvider, path: str, phase: str) -> None:
    def call() -> None:
        if phase == "body":
            with client.stream("GET", provider.url + path) as response:
                for _ in response.iter_raw():
                    pass
        else:
            client.get(provider.url + path)

    result = cancel_sync_call(provider, call, units=5 if phase == "body" else 0)
    assert not result.thread_alive
    assert result.seen >= result.t_cancel
    assert result.log.units_after(result.t_cancel) <= (1 if phase == "body" else 0)
    assert len(provider.requests) == 1
    assert len(result.errors) == 1
    report = result.scope.report
    assert report is not None and [c.outcome for c in report.calls] == ["aborted"]


@pytest.mark.parametrize("phase", ["headers", "body"])
@pytest.mark.parametrize("lib", LIBS)
def test_sync_cancel_from_another_thread(lib: ModuleType, phase: str, provider: LocalProvider) -> None:
    with lib.Client() as client:
        _sync_cancel_from_thread(client, provider, SLOW if phase == "headers" else STREAM, phase)


@pytest.mark.parametrize("phase", ["headers", "body"])
@pytest.mark.parametrize("lib", LIBS)
def test_sync_cancel_over_tls(lib: ModuleType, phase: str, tls: tuple[LocalProvider, ssl.SSLContext]) -> None:
    server, context = tls
    server.reset()
    with lib.Client(verify=context) as client:
        _sync_cancel_from_thread(client, server, SLOW if phase == "headers" else STREAM, phase)


@pytest.mark.parametrize("lib", LIBS)
def test_sync_cancel_on_a_reused_pooled_connection(lib: ModuleType, provider: LocalProvider) -> None:
    events: list[str] = []
    with lib.Client() as client:
        assert client.get(provider.url + "/units?n=1&interval=0").status_code == 200
        provider.reset()
        original_get = client.get

        def traced_get(url: str) -> Any:
            return original_get(url, extensions={"trace": lambda name, info: events.append(name)})

        client.get = traced_get  # type: ignore[method-assign]
        _sync_cancel_from_thread(client, provider, SLOW, "headers")
    assert not any("connect_tcp" in e for e in events), "the request should have reused the pooled connection"
    assert any("send_request_headers" in e for e in events)


@pytest.mark.parametrize("lib", LIBS)
def test_sync_refused_before_send(lib: ModuleType, provider: LocalProvider) -> None:
    refused: list[BaseException] = []
    with lib.Client() as client, RequestScope() as scope:
        scope.cancel("client_disconnected")
        try:
            client.get(provider.url + STREAM)
        except ScopeCancelled as exc:
            refused.append(exc)
    assert len(refused) == 1
    assert provider.requests == []
    assert scope.report is not None and [c.outcome for c in scope.report.calls] == ["refused"]


# ------------------------------------------------------------------- leaks


def _client_sockets(port: int) -> int:
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)


@pytest.mark.anyio
async def test_a_thousand_random_cancellations_leave_nothing_behind(provider: LocalProvider) -> None:
    rng = random.Random(1234)
    threads_before = threading.active_count()
    tasks_before = len(anyio.get_running_tasks())
    scopes: list[RequestScope] = []
    async with scoped_clients.httpx2.AsyncClient() as client:

        async def one(point: int) -> None:
            async with RequestScope() as scope:
                scopes.append(scope)
                if point == 0:
                    scope.cancel("before")
                async with client.stream("GET", provider.url + "/units?n=4&interval=0.001") as response:
                    n = 0
                    async for _ in response.aiter_raw():
                        n += 1
                        if n == point:
                            scope.cancel("during")
                if point == 9:
                    scope.cancel("after")

        with anyio.fail_after(60):
            for _ in range(20):
                async with anyio.create_task_group() as tg:
                    for _ in range(50):
                        tg.start_soon(one, rng.choice([0, 1, 2, 3, 9]))
        assert len(scopes) == 1000
        assert all(s.report is not None for s in scopes)
        assert all(not registry(s).in_flight() and not s._children for s in scopes)
    assert _client_sockets(provider.port) == 0
    assert len(anyio.get_running_tasks()) == tasks_before
    # anyio's worker threads used by the provider waits may linger idle; nothing of ours does
    assert threading.active_count() <= threads_before + 1


@pytest.mark.anyio
async def test_report_to_dict_is_json_with_every_call(provider: LocalProvider) -> None:
    """``ScopeReport.to_dict()``: the summary plus every call record, ready for a sink that ships JSON."""
    async with scoped_clients.httpx2.AsyncClient() as client, RequestScope("json") as scope:
        await client.get(provider.url + "/units?n=3&interval=0")
        await client.get(provider.url + "/units?n=2&interval=0")
    assert scope.report is not None
    data = json.loads(json.dumps(scope.report.to_dict()))
    assert data["scope"] == "json" and data["outcome"] == "completed" and data["completed"] == 2
    assert [c["outcome"] for c in data["calls"]] == ["completed", "completed"]
    assert all(c["detail"]["status_code"] == 200 for c in data["calls"])


# ------------------------------------------------------------- mass cancel

#: streams cancelled in one turn of the loop (benchmarks/load.py takes 1,000; this many keeps the test quick)
MASS = 107


@pytest.mark.anyio
@pytest.mark.parametrize("one_scope", [False, True], ids=["scope_per_stream", "one_scope_owning_all"])
async def test_a_mass_cancel_reaches_every_call_and_every_body(one_scope: bool, provider: LocalProvider) -> None:
    """Many streams cancelled in one turn of the loop (a server shutting down, a scope owning them all).

    Every call is aborted (the provider sees every client go, at most one unit after the cancel), every
    body is cancelled (a child parked in ``sleep_forever`` ends), every report says so, no socket is left."""
    streaming = anyio.Event()
    reading = 0
    scopes: list[RequestScope] = []
    parked_cancelled = 0

    async def parked() -> None:
        nonlocal parked_cancelled
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            parked_cancelled += 1
            raise

    async def read(client: Any) -> None:
        nonlocal reading
        first = True
        async with client.stream("GET", provider.url + "/units?n=100000&interval=0.05") as response:
            async for _ in response.aiter_raw():
                if first:
                    first = False
                    reading += 1
                    if reading == MASS:
                        streaming.set()

    async def own(client: Any) -> None:
        async with RequestScope() as scope:
            scopes.append(scope)
            scope.spawn(parked)
            await read(client)

    async def own_all(client: Any) -> None:
        async with RequestScope() as scope, anyio.create_task_group() as tg:
            scopes.append(scope)
            scope.spawn(parked)
            for _ in range(MASS):
                tg.start_soon(read, client)

    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
    async with scoped_clients.httpx2.AsyncClient(limits=limits) as client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                if one_scope:
                    tg.start_soon(own_all, client)
                else:
                    for _ in range(MASS):
                        tg.start_soon(own, client)
                await streaming.wait()
                t_cancel = time.monotonic()
                for scope in scopes:  # one turn of the loop: no await between the cancels
                    scope.cancel("shutdown")
            logs = provider.requests
            assert len(logs) == MASS
            for log in logs:
                assert await wait(log.wait_disconnect) >= t_cancel
    assert parked_cancelled == len(scopes)
    assert max(log.units_after(t_cancel) for log in logs) <= 1  # a unit every 50 ms per stream
    calls = [call for scope in scopes if scope.report is not None for call in scope.report.calls]
    assert len(calls) == MASS
    assert {call.outcome for call in calls} == {"aborted"}
    assert all(scope.report is not None and scope.report.cancel_reason == "shutdown" for scope in scopes)
    assert _client_sockets(provider.port) == 0


def test_shutdown_socket_reaches_the_kernel_socket_under_each_wrapper() -> None:
    """A plain socket, asyncio's ``TransportSocket`` and trio's socket are shut down through their own
    ``shutdown`` (no duplicate descriptor; trio notes it, as its ``send_eof`` would); the peer sees EOF."""
    import socket
    from asyncio.trsock import TransportSocket

    import trio

    from scoped_clients._transport._sockets import shutdown_socket

    for wrap in (lambda s: s, TransportSocket, trio.socket.from_stdlib_socket):
        ours, peer = socket.socketpair()
        with ours, peer:
            wrapped = wrap(ours)
            shutdown_socket(wrapped)
            assert peer.recv(1) == b""  # EOF: the kernel socket is shut down
            if isinstance(wrapped, trio.socket.SocketType):
                assert wrapped.did_shutdown_SHUT_WR  # through trio's own shutdown, not a duplicate
            shutdown_socket(wrapped)  # twice, or on a socket shut down already: no error
        shutdown_socket(wrapped)  # closed: no error


def test_a_library_of_another_shape_has_its_streams_read_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """The body reads beneath the library's response stream only where that stream and an exception mapping
    that can be entered are found (httpx's and httpx2's ``_transports.default``); otherwise as it is."""
    import sys
    import types

    from scoped_clients._transport._base import LibraryClasses

    fake = types.ModuleType("fakehttpx")
    fake.__dict__.update({k: v for k, v in vars(httpx2).items() if not k.startswith("__")})
    assert LibraryClasses(fake).AsyncScopedTransport._body_cls._library_stream is None  # no such module
    default = types.SimpleNamespace(
        AsyncResponseStream=httpx2._transports.default.AsyncResponseStream,
        map_httpcore_exceptions=lambda required: None,  # another signature
    )
    monkeypatch.setitem(sys.modules, "fakehttpx._transports.default", default)
    assert LibraryClasses(fake).AsyncScopedTransport._body_cls._library_stream is None
    default.map_httpcore_exceptions = httpx2._transports.default.map_httpcore_exceptions
    body_cls = LibraryClasses(fake).AsyncScopedTransport._body_cls
    assert body_cls._library_stream == (default.AsyncResponseStream, default.map_httpcore_exceptions)
