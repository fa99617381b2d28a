"""The drop-in Mistral client (mistralai 3.x) against the embedded provider, measured at the server.

Sync calls run on any backend (and in worker threads); the SDK's async methods need asyncio
(they run its hooks in ``asyncio.to_thread``): on Trio they skip, saying so, and a scoped async
call there raises ``UnsupportedError`` naming the limitation.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest

pytest.importorskip("mistralai.client", reason="mistralai is not installed (pip install 'scoped-clients[mistralai]')")

import mistralai.client as vendor
from mistralai.client import errors
from mistralai.client.utils import BackoffStrategy, RetryConfig

try:
    from mistralai.client.utils.retries import _is_transport_error
except ImportError:  # before 2.10 the SDK retried isinstance(httpx.NetworkError / TimeoutException) only
    _is_transport_error = None

from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled, UnsupportedError, scope_client
from scoped_clients._reasons import CancelReason
from scoped_clients._vendors.mistralai import ASYNCIO_ONLY, CompletionAssembler, CompletionStreamMeter
from scoped_clients.mistralai import Mistral
from scoped_clients.provider import LocalProvider, Reply, ToolCall

#: mistralai 3.x is built on httpx2, 2.x on httpx (both are supported)
HTTP: Any = httpx2 if int(importlib.metadata.version("mistralai").split(".")[0]) >= 3 else httpx
MESSAGES = [{"role": "user", "content": "tell me a long story"}]
MAX_TOKENS = 150
pytestmark = pytest.mark.anyio

#: the SDK retries connection errors and 5xx with this: a cancel must still be sent once
RETRYING = RetryConfig("backoff", BackoffStrategy(10, 50, 1.5, 1000), retry_connection_errors=True)


def mistral(provider: LocalProvider, **kwargs: Any) -> Any:
    return Mistral(api_key="test", server_url=provider.url + "/mistral", retry_config=RETRYING, **kwargs)


def asyncio_only(anyio_backend: Any) -> None:
    if anyio_backend == "trio":
        pytest.skip("mistralai's async methods run their hooks in asyncio.to_thread: asyncio only")


def one_request_seen_leaving(provider: LocalProvider, t_cancel: float) -> None:
    """At the provider: exactly one request, its client seen leaving, at most one unit after the cancel."""
    (log,) = provider.requests
    assert log.wait_disconnect() >= t_cancel
    assert log.units_after(t_cancel) <= 1


# ------------------------------------------------------------------ drop-in identity


def test_instances_are_the_vendors_type(provider: LocalProvider) -> None:
    client = mistral(provider)
    assert type(client) is vendor.Mistral and isinstance(client, Mistral)
    assert issubclass(Mistral, vendor.Mistral) and not isinstance(vendor.Mistral(api_key="x"), Mistral)
    config = client.sdk_configuration
    # the SDK's own clients, scoped in place (its finalizer still closes them)
    assert type(config.client) is HTTP.Client and type(config.async_client) is HTTP.AsyncClient
    assert "Scoped" in type(config.client._transport).__name__
    assert "Scoped" in type(config.async_client._transport).__name__
    ours, theirs = inspect.signature(Mistral).parameters, inspect.signature(vendor.Mistral).parameters
    assert [name for name in ours if name not in theirs] == ["always_stream", "finish_policy"]
    assert all(ours[name] == theirs[name] for name in theirs)


@pytest.mark.parametrize("http", [httpx2, httpx], ids=["httpx2", "httpx"])
def test_callers_clients_are_left_as_given(http: Any, provider: LocalProvider) -> None:
    mine, mine_async = http.Client(headers={"x-team": "search"}), http.AsyncClient()
    before = (mine._transport, dict(mine._mounts), mine_async._transport)
    # positionally, as the vendor's signature allows (3.x: api_key, server, url_params, server_url, client, ...)
    given = {"api_key": "test", "server_url": provider.url + "/mistral", "client": mine, "async_client": mine_async}
    names = list(inspect.signature(vendor.Mistral).parameters)
    client = Mistral(*(given.get(name) for name in names[: names.index("async_client") + 1]))
    assert (mine._transport, dict(mine._mounts), mine_async._transport) == before  # untouched
    config = client.sdk_configuration
    assert type(config.client) is type(mine) and config.client.headers is mine.headers  # a scoped copy
    assert isinstance(client, Mistral)
    with RequestScope() as scope, client:
        client.chat.complete(model="local-3", messages=MESSAGES)
    assert provider.requests[0].headers["x-team"] == "search"  # the caller's settings reached the server
    assert [(c.provider, c.outcome) for c in scope.report.calls] == [("mistral_ai", "completed")]  # type: ignore[union-attr]
    assert not mine.is_closed  # the vendor does not close a client it was given; neither do we
    mine.get(provider.url + "/health")  # the caller's own client is not scoped: no record
    assert len(scope.report.calls) == 1  # type: ignore[union-attr]
    mine.close()


def test_scope_client_scopes_a_mistral_built_elsewhere(provider: LocalProvider) -> None:
    client = vendor.Mistral(api_key="x", server_url=provider.url + "/mistral")
    assert scope_client(client) is client and isinstance(client, Mistral)
    with RequestScope() as scope, client:
        client.embeddings.create(model="mistral-embed", inputs=["one"])
    assert [(c.operation, c.outcome) for c in scope.report.calls] == [("embeddings", "completed")]  # type: ignore[union-attr]


class _DuckClient:
    """Satisfies the SDK's ``HttpClient`` Protocol without being an httpx client."""

    def send(self, request: Any, **kwargs: Any) -> Any: ...
    def build_request(self, method: str, url: Any, **kwargs: Any) -> Any: ...
    def close(self) -> None: ...


def test_a_client_that_cannot_be_scoped_is_refused_saying_why() -> None:
    assert vendor.Mistral(api_key="x", client=_DuckClient())  # the vendor takes it
    with pytest.raises(UnsupportedError, match=r"client= is a _DuckClient: its requests could not be aborted"):
        Mistral(api_key="x", client=_DuckClient())
    with pytest.raises(AssertionError, match="HttpClient protocol"):  # what the vendor says of anything else
        Mistral(api_key="x", client=object())


def test_a_cancel_never_looks_like_a_transport_error() -> None:
    """The SDK retries (with ``retry_connection_errors``) what its MRO names call NetworkError/TimeoutException."""
    cancelled = ScopeCancelled(CancelReason("client_disconnected", "", 0.0))
    assert not isinstance(cancelled, Exception)  # what every ``except Exception`` of the SDK lets through
    if _is_transport_error is not None:
        assert not _is_transport_error(cancelled)
        assert _is_transport_error(HTTP.ConnectError("x"))  # the check itself works


# ------------------------------------------------------------------ sync (any backend)


@pytest.fixture
def sync_client(provider: LocalProvider) -> Iterator[Any]:
    with mistral(provider) as client:
        yield client


def _stream(client: Any) -> None:
    with client.chat.stream(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS) as events:
        for _ in events:
            pass


def _complete(client: Any) -> None:
    client.chat.complete(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS)


@pytest.mark.parametrize("call", [_complete, _stream], ids=["complete", "stream"])
def test_sync_call_cancelled_from_another_thread(call: Any, sync_client: Any, provider: LocalProvider) -> None:
    result = cancel_sync_call(provider, lambda: call(sync_client), units=10)
    assert not result.thread_alive
    one_request_seen_leaving(provider, result.t_cancel)
    assert [type(e) for e in result.errors] == [ScopeCancelled]
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.operation, record.model) == ("mistral_ai", "chat.completions", "local-1000")
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    assert record.tokens_saved_max is not None and record.tokens_saved_max <= MAX_TOKENS
    assert record.tokens_saved is not None and record.tokens_saved > 0
    if call is _stream:  # a token per chunk, counted as received (the last one produced may be in flight)
        produced = len(result.log.units) - result.log.units_after(result.t_cancel)
        assert produced - 1 <= record.tokens_out <= produced and record.tokens_out_source == "estimated"
        assert record.tokens_saved_max == MAX_TOKENS - record.tokens_out


def _sync_calls(client: Any) -> list[Callable[[], object]]:
    return [
        lambda: client.chat.complete(model="local-3", messages=MESSAGES),
        lambda: list(client.chat.stream(model="local-3", messages=MESSAGES)),
        lambda: client.embeddings.create(model="mistral-embed", inputs=["one two", "three"]),
    ]


def test_sync_calls_after_the_cancel_are_refused(sync_client: Any, provider: LocalProvider) -> None:
    with RequestScope() as scope:
        scope.cancel("client_disconnected")
        for call in _sync_calls(sync_client):
            with pytest.raises(ScopeCancelled):
                call()
    assert provider.requests == []
    assert [c.outcome for c in scope.report.calls] == ["refused"] * 3  # type: ignore[union-attr]


def test_sync_calls_report_the_providers_usage(sync_client: Any, provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    with RequestScope() as scope:
        for call in _sync_calls(sync_client):
            call()
    _assert_usage(scope)


def _assert_usage(scope: RequestScope) -> None:
    records = scope.report.calls  # type: ignore[union-attr]
    assert [(r.operation, r.outcome) for r in records] == [
        ("chat.completions", "completed"),
        ("chat.completions", "completed"),
        ("embeddings", "completed"),
    ]
    assert [(r.tokens_in, r.tokens_out) for r in records[:2]] == [(5, 3), (5, 3)]
    assert all(r.tokens_in_source == r.tokens_out_source == "provider" for r in records[:2])
    assert (records[2].tokens_in, records[2].tokens_in_source) == (3, "provider")
    assert [r.finish_reason for r in records[:2]] == ["stop", "stop"]


async def test_sync_client_in_a_worker_thread_on_every_backend(provider: LocalProvider) -> None:
    """On any backend (Trio too) the sync methods run in a worker thread under the handler's scope."""
    client = mistral(provider)
    errors_seen: list[BaseException] = []

    def call() -> None:
        try:
            _stream(client)
        except ScopeCancelled as exc:
            errors_seen.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, RequestScope() as scope:
            tg.start_soon(anyio.to_thread.run_sync, call)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 10)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
    await wait(one_request_seen_leaving, provider, t_cancel)
    assert [type(e) for e in errors_seen] == [ScopeCancelled]
    assert [c.outcome for c in scope.report.calls] == ["aborted"]  # type: ignore[union-attr]
    client.sdk_configuration.client.close()


# ------------------------------------------------------------------ async (asyncio, uvloop)


async def _stream_async(client: Any) -> None:
    events = await client.chat.stream_async(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS)
    async with events:
        async for _ in events:
            pass


async def _complete_async(client: Any) -> None:
    await client.chat.complete_async(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS)


@pytest.mark.parametrize("call", [_complete_async, _stream_async], ids=["complete_async", "stream_async"])
async def test_async_call_cancelled_by_another_task(
    call: Callable[[Any], Awaitable[None]], provider: LocalProvider, anyio_backend: Any
) -> None:
    """The caller runs outside the scope's body (a task of its own): it gets ``ScopeCancelled``."""
    asyncio_only(anyio_backend)
    raised: list[BaseException] = []

    async def run(client: Any) -> None:
        for attempt in (call, _complete_async):  # then a call after the cancel: refused
            try:
                await attempt(client)
            except BaseException as exc:
                raised.append(exc)

    async with mistral(provider) as client:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg, RequestScope("chat") as scope:
                tg.start_soon(run, client)
                (log,) = await wait(provider.wait_for_requests, 1)
                await wait(log.wait_units, 10)
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
        await wait(one_request_seen_leaving, provider, t_cancel)  # the refused call reached nobody
    assert [type(e) for e in raised] == [ScopeCancelled, ScopeCancelled]
    record = scope.report.calls[0]  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.provider == "mistral_ai"
    assert record.tokens_saved is not None and record.tokens_saved > 0


async def test_async_calls_after_the_cancel_are_refused(provider: LocalProvider, anyio_backend: Any) -> None:
    asyncio_only(anyio_backend)
    refused: list[BaseException] = []

    async def calls(client: Any) -> None:
        for call in (
            client.chat.complete_async(model="local-3", messages=MESSAGES),
            client.chat.stream_async(model="local-3", messages=MESSAGES),
            client.embeddings.create_async(model="mistral-embed", inputs=["one"]),
        ):
            try:
                await call
            except ScopeCancelled as exc:
                refused.append(exc)

    async with mistral(provider) as client, anyio.create_task_group() as tg, RequestScope() as scope:
        scope.cancel("client_disconnected")
        done = anyio.Event()

        async def in_task() -> None:  # outside the body: it reaches the transport and is refused there
            await calls(client)
            done.set()

        tg.start_soon(in_task)
        with scope.shield():
            await done.wait()
    assert len(refused) == 3 and provider.requests == []
    assert [c.outcome for c in scope.report.calls] == ["refused"] * 3  # type: ignore[union-attr]


async def test_async_calls_report_the_providers_usage(provider: LocalProvider, anyio_backend: Any) -> None:
    asyncio_only(anyio_backend)
    provider.token_interval = 0.0
    async with mistral(provider) as client, RequestScope() as scope:
        await client.chat.complete_async(model="local-3", messages=MESSAGES)
        async for _ in await client.chat.stream_async(model="local-3", messages=MESSAGES):
            pass
        await client.embeddings.create_async(model="mistral-embed", inputs=["one two", "three"])
    _assert_usage(scope)


async def test_a_scoped_async_call_on_trio_says_why_it_cannot_run(provider: LocalProvider, anyio_backend: Any) -> None:
    if anyio_backend != "trio":
        pytest.skip("the Trio limitation")
    client = mistral(provider)
    with pytest.raises(RuntimeError, match="no running event loop"):  # unscoped: the SDK's own error
        await client.chat.complete_async(model="local-3", messages=MESSAGES)
    async with RequestScope():
        with pytest.raises(UnsupportedError, match="need an asyncio event loop") as caught:
            await client.chat.stream_async(model="local-3", messages=MESSAGES)
    assert str(caught.value) == ASYNCIO_ONLY and isinstance(caught.value, RuntimeError)
    assert provider.requests == []
    client.sdk_configuration.client.close()


# ------------------------------------------------------------------ always_stream


WEATHER = ToolCall("get_weather", {"city": "Paris"})


TOOLS = Reply(text="Let me check.", tool_calls=[WEATHER, WEATHER])


@pytest.mark.parametrize("reply", [None, TOOLS], ids=["text", "tools"])
def test_always_stream_returns_what_the_plain_call_returns(reply: Reply | None, provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    answers = []
    for always_stream in (False, True):
        provider.reset()
        if reply is not None:
            provider.script(reply)
        with Mistral(api_key="x", server_url=provider.url + "/mistral", always_stream=always_stream) as client:
            answer = client.chat.complete(model="local-7", messages=MESSAGES, max_tokens=5)
        (log,) = provider.requests
        assert log.json.get("stream", False) is always_stream and "stream_options" not in log.json
        answers.append(answer.model_dump(exclude={"created"}))
    assert answers[0] == answers[1]


async def test_always_stream_plain_completion_is_stopped_at_the_next_token(
    provider: LocalProvider, anyio_backend: Any
) -> None:
    asyncio_only(anyio_backend)
    raised: list[BaseException] = []

    async def call(client: Any) -> None:
        try:
            await _complete_async(client)
        except ScopeCancelled as exc:
            raised.append(exc)

    client = Mistral(api_key="x", server_url=provider.url + "/mistral", always_stream=True)
    async with client, anyio.create_task_group() as tg, RequestScope() as scope:
        tg.start_soon(call, client)
        (log,) = await wait(provider.wait_for_requests, 1)
        await wait(log.wait_units, 10)
        t_cancel = time.monotonic()
        scope.cancel("client_disconnected")
    await wait(one_request_seen_leaving, provider, t_cancel)
    assert len(raised) == 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.detail.get("always_stream") is True
    produced = len(log.units) - log.units_after(t_cancel)
    assert produced - 1 <= record.tokens_out <= produced  # counted live from the stream the caller never saw


def test_always_stream_leaves_other_sdks_requests_to_their_vendor() -> None:
    from scoped_clients._vendors import mistralai as module

    request = httpx2.Request("POST", "http://x/v1/chat/completions", json={"model": "m", "messages": []})
    assert module.plan_stream(request) is None  # an OpenAI SDK's request: OpenAI's plan
    request.headers["user-agent"] = "mistral-client-python/3.7.0"
    assert module.plan_stream(request) is not None


# ------------------------------------------------------------------ wire samples


def _sse(*events: object) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice], **extra}


CALL = {"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}, "index": 0}
USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
SAMPLE = _sse(
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hi"}),
    _chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]}]}),
    _chunk({"tool_calls": [CALL]}),
    _chunk({"tool_calls": [{**CALL, "id": "ghiJKL456"}]}),  # a second call, also numbered 0
    _chunk({"content": ""}, "tool_calls", usage=USAGE),
    b"[DONE]",
)


def test_stream_meter_counts_output_and_reads_the_usage_of_the_finish_chunk() -> None:
    meter = CompletionStreamMeter()
    for i in range(0, len(SAMPLE), 7):  # whatever the chunking
        meter.feed(SAMPLE[i : i + 7])
        if meter.output_source == "estimated":
            assert meter.tokens_out <= 4
    meter.close()
    assert (meter.tokens_in, meter.tokens_out, meter.output_source) == (7, 4, "provider")
    assert meter.finish_reason == "tool_calls" and meter.tool_calls


def test_assembler_keeps_each_whole_tool_call() -> None:
    assembler = CompletionAssembler()
    assembler.feed(SAMPLE)
    assembler.close()
    assert assembler.complete and assembler.error is None
    status, body = assembler.result()
    (choice,) = json.loads(body)["choices"]
    assert status == 200 and choice["finish_reason"] == "tool_calls"
    assert [c["id"] for c in choice["message"]["tool_calls"]] == ["abcDEF123", "ghiJKL456"]
    assert json.loads(body)["usage"] == USAGE


def test_assembler_maps_a_mid_stream_error_to_mistrals_error_body() -> None:
    assembler = CompletionAssembler()
    error = {"object": "error", "message": "slow down", "type": "rate_limit_error", "param": None, "code": "1300"}
    assembler.feed(_sse(_chunk({"content": "Hi"}), error))
    assembler.close()
    status, body = assembler.result()
    assert status == 429 and json.loads(body) == error


def test_sdk_errors_reach_the_caller_unchanged(sync_client: Any, provider: LocalProvider) -> None:
    with RequestScope() as scope, pytest.raises(errors.SDKError) as caught:
        sync_client.chat.complete(model="error-400", messages=MESSAGES)
    assert caught.value.status_code == 400
    assert [(c.outcome, c.error) for c in scope.report.calls] == [("failed", "HTTP 400")]  # type: ignore[union-attr]
