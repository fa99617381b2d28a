"""The drop-in ``scoped_clients.google_genai.Client`` against the embedded provider's Gemini API,
measured at the provider: the disconnect seen, at most one unit produced after the cancel, exactly
one request (no retry of a cancel, with ``retry_options`` too), a call after the cancel refused,
the service's usage reported; streamed and not, chats, sync and ``client.aio`` on asyncio, uvloop
and Trio (aiohttp is installed here: google-genai would pick it, the drop-in must not).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from google import genai
from google.genai import types

from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled, UnsupportedError
from scoped_clients.google_genai import Client
from scoped_clients.provider import LocalProvider

MAX_TOKENS = 150
CONFIG = types.GenerateContentConfig(max_output_tokens=MAX_TOKENS)
RETRY = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02, http_status_codes=[503])


def options(provider: LocalProvider, **extra: Any) -> types.HttpOptions:
    return types.HttpOptions(base_url=provider.url, **extra)


_open: list[Any] = []


def client(provider: LocalProvider, *, retry: bool = False, **kwargs: Any) -> Any:
    made = Client(api_key="test", http_options=options(provider, retry_options=RETRY if retry else None), **kwargs)
    _open.append(made)
    return made


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


@pytest.fixture
async def _aclose_clients(anyio_backend: object) -> AsyncIterator[None]:
    """The async tests' clients: ``client.aio`` closed on the test's event loop."""
    yield
    while _open:
        made = _open.pop()
        await made.aio.aclose()
        made.close()


# Each shape: async fn(provider) -> async iterator of what the caller sees (one per chunk, or one answer)
async def _plain(p: LocalProvider, **kw: Any) -> AsyncIterator[object]:
    yield await client(p, **kw).aio.models.generate_content(model="local-1000", contents="hi", config=CONFIG)


async def _stream(p: LocalProvider, **kw: Any) -> AsyncIterator[object]:
    aio = client(p, **kw).aio
    async for chunk in await aio.models.generate_content_stream(model="local-1000", contents="hi", config=CONFIG):
        yield chunk


async def _chat(p: LocalProvider, **kw: Any) -> AsyncIterator[object]:
    yield await client(p, **kw).aio.chats.create(model="local-1000", config=CONFIG).send_message("hi")


async def _chat_stream(p: LocalProvider, **kw: Any) -> AsyncIterator[object]:
    chat = client(p, **kw).aio.chats.create(model="local-1000", config=CONFIG)
    async for chunk in await chat.send_message_stream("hi"):
        yield chunk


SHAPES = [
    pytest.param(_plain, {}, id="generate_content"),
    pytest.param(_plain, {"retry": True}, id="generate_content-retry_options"),
    pytest.param(_plain, {"always_stream": True}, id="generate_content-always_stream"),
    pytest.param(_stream, {}, id="generate_content_stream"),
    pytest.param(_stream, {"retry": True}, id="generate_content_stream-retry_options"),
    pytest.param(_chat, {}, id="chat-send_message"),
    pytest.param(_chat_stream, {}, id="chat-send_message_stream"),
]


@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
@pytest.mark.parametrize(("shape", "kw"), SHAPES)
async def test_async_call_cancelled_by_another_task(shape: Any, kw: dict[str, Any], provider: LocalProvider) -> None:
    """The FastAPI-style case: the caller runs outside the scope's body; the scope is cancelled once
    the provider has produced 10 tokens."""
    errors: list[BaseException] = []
    received = 0
    scope = RequestScope("gemini")

    async def call() -> None:
        nonlocal received
        try:
            async for _ in shape(provider, **kw):
                received += 1
        except ScopeCancelled as exc:
            errors.append(exc)

    refused = anyio.Event()
    later = client(provider, **kw).aio  # built now: building a client loads TLS certificates, blocking the loop

    async def call_after_cancel() -> None:  # a task that holds the scope, as a handler's task would
        try:
            await later.models.generate_content(model="local-5", contents="hi")
        except ScopeCancelled:
            refused.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(call)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 10)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
            tg.start_soon(call_after_cancel)
            with scope.shield():
                await refused.wait()
                await wait(log.wait_disconnect)
    assert log.disconnected_at is not None and log.disconnected_at >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1  # never retried, never re-sent
    assert [type(e) for e in errors] == [ScopeCancelled]
    records = {r.model: r for r in scope.report.calls}  # type: ignore[union-attr]
    assert records["local-5"].outcome == "refused"
    record = records["local-1000"]
    assert (record.provider, record.operation) == ("gcp.gemini", "generateContent")
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    streamed = shape in (_stream, _chat_stream) or kw.get("always_stream")
    produced = len(log.units) - log.units_after(t_cancel)
    if shape in (_stream, _chat_stream):
        assert record.tokens_out == received <= produced  # one per chunk, counted as received
        assert record.tokens_out_source == "estimated"
    if streamed:
        assert record.tokens_saved_max == MAX_TOKENS - record.tokens_out
    else:  # nothing received: the bound subtracts what the provider probably produced
        assert record.tokens_out == 0
        assert record.tokens_saved_max is not None and record.tokens_saved_max <= MAX_TOKENS
    assert record.tokens_saved is not None and record.tokens_saved > 0


@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
async def test_stream_cancelled_between_chunks_closes_the_socket(provider: LocalProvider) -> None:
    """googleapis/python-genai#2425: the scope is cancelled while the caller's code holds the stream
    (between two chunks, nobody waiting inside the SDK): the raw SDK leaves the response open and the
    service generating; the drop-in closes the socket at once."""
    with anyio.fail_after(20):
        async with RequestScope() as scope:
            stream = await client(provider, retry=True).aio.models.generate_content_stream(
                model="local-1000", contents="hi", config=CONFIG
            )
            n = 0
            async for _ in stream:
                n += 1
                if n == 3:
                    t_cancel = time.monotonic()
                    scope.cancel("client_disconnected")
                    with scope.shield():
                        (log,) = provider.requests
                        await wait(log.wait_disconnect)
    assert scope.cancelled and n == 3
    assert log.disconnected_at is not None and log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.tokens_out == 3


# on Trio, google-genai's generators that aclose() leaves suspended are reported when collected
# (tests/test_provider_wire.py shows the raw SDK does the same)
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object (AsyncModels|BaseApiClient)[.]"
    ":pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
async def test_stream_left_after_break_is_closed_when_the_scope_ends(provider: LocalProvider) -> None:
    """``break`` then ``aclose()``: the raw SDK keeps the connection open (#2425); the scope's end
    aborts the response it still owns, and the provider sees the client go."""
    with anyio.fail_after(20):
        async with RequestScope() as scope:
            stream = await client(provider).aio.models.generate_content_stream(model="local-1000", contents="hi")
            n = 0
            async for _ in stream:
                n += 1
                if n == 3:
                    break
            await stream.aclose()
            t_end = time.monotonic()
        (log,) = provider.requests
        await wait(log.wait_disconnect)
    assert log.disconnected_at is not None and log.units_after(t_end) <= 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.orphan and record.cancel_reason == "scope_closed"


@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
async def test_completed_calls_report_the_services_usage(provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    aio = client(provider).aio
    async with RequestScope() as scope:
        await aio.models.generate_content(model="local-12", contents="tell me a story")
        async for _ in await aio.models.generate_content_stream(model="local-7", contents="hi"):
            pass
        chat = aio.chats.create(model="local-4")
        await chat.send_message("hello there")
        assert (await aio.models.count_tokens(model="local", contents="one two three")).total_tokens == 3
        embedded = await aio.models.embed_content(model="embedder", contents=["a", "b"])
        assert len(embedded.embeddings or []) == 2
    records = scope.report.calls  # type: ignore[union-attr]
    assert [r.outcome for r in records] == ["completed"] * 5
    assert [r.operation for r in records] == [
        "generateContent",
        "generateContent",
        "generateContent",
        "countTokens",
        "batchEmbedContents",
    ]
    assert [(r.tokens_in, r.tokens_out, r.tokens_out_source) for r in records[:3]] == [
        (4, 12, "provider"),
        (1, 7, "provider"),
        (2, 4, "provider"),
    ]
    assert records[1].finish_reason == "STOP"


@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
@pytest.mark.parametrize("model", ["local-8", "agent"])
async def test_always_stream_returns_the_non_streamed_answer(model: str, provider: LocalProvider) -> None:
    """``always_stream``: sent to ``streamGenerateContent``, the answer rebuilt is the one
    ``generateContent`` gives (text or a function call, finish reason, usage)."""
    provider.token_interval = 0.0
    plain = await client(provider).aio.models.generate_content(model=model, contents="weather?")
    rebuilt = await client(provider, always_stream=True).aio.models.generate_content(model=model, contents="weather?")
    # the API version is google-genai's choice (v1 in 3.x, v1beta in 2.x)
    assert [log.path.rsplit("/", 1)[1] for log in provider.requests] == [
        f"{model}:generateContent",
        f"{model}:streamGenerateContent",
    ]
    assert rebuilt.model_dump(exclude={"sdk_http_response"}) == plain.model_dump(exclude={"sdk_http_response"})


# --------------------------------------------------------------------------- sync


@pytest.fixture
def sync_calls(provider: LocalProvider) -> Iterator[dict[str, Callable[[], object]]]:
    plain, retrying = client(provider), client(provider, retry=True)

    def stream() -> None:
        for _ in retrying.models.generate_content_stream(model="local-1000", contents="hi", config=CONFIG):
            pass

    def chat_stream() -> None:
        for _ in plain.chats.create(model="local-1000", config=CONFIG).send_message_stream("hi"):
            pass

    yield {
        "generate_content": lambda: retrying.models.generate_content(model="local-1000", contents="hi", config=CONFIG),
        "generate_content_stream": stream,
        "chat-send_message": lambda: plain.chats.create(model="local-1000", config=CONFIG).send_message("hi"),
        "chat-send_message_stream": chat_stream,
    }


@pytest.mark.parametrize(
    "name", ["generate_content", "generate_content_stream", "chat-send_message", "chat-send_message_stream"]
)
def test_sync_call_cancelled_from_another_thread(
    name: str, sync_calls: dict[str, Callable[[], object]], provider: LocalProvider
) -> None:
    later = client(provider)
    refused: list[BaseException] = []

    def call() -> None:
        try:
            sync_calls[name]()
        finally:  # still in the cancelled scope's body: a new call is refused
            try:
                later.models.generate_content(model="local-5", contents="hi")
            except ScopeCancelled as exc:
                refused.append(exc)

    result = cancel_sync_call(provider, call, units=10)
    assert not result.thread_alive
    assert result.log.disconnected_at is not None and result.seen >= result.t_cancel
    assert result.log.units_after(result.t_cancel) <= 1
    assert len(provider.requests) == 1
    assert [type(e) for e in result.errors] == [ScopeCancelled]
    assert len(refused) == 1
    records = {r.model: r for r in result.scope.report.calls}  # type: ignore[union-attr]
    assert records["local-5"].outcome == "refused"
    assert records["local-1000"].outcome == "aborted" and records["local-1000"].provider == "gcp.gemini"


def test_sync_stream_cancelled_between_chunks(provider: LocalProvider) -> None:
    with RequestScope() as scope:
        stream = client(provider).models.generate_content_stream(model="local-1000", contents="hi")
        for n, _ in enumerate(stream, 1):
            if n == 3:
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
                (log,) = provider.requests
                log.wait_disconnect()
                break
        with pytest.raises(ScopeCancelled):
            client(provider).models.count_tokens(model="local", contents="hi")
    assert log.disconnected_at is not None and log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1
    assert sorted(r.outcome for r in scope.report.calls) == ["aborted", "refused"]  # type: ignore[union-attr]


def test_sync_completed_calls_report_usage_and_retries_still_work(provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    with RequestScope() as scope:
        client(provider).models.generate_content(model="local-6", contents="hi")
        with pytest.raises(genai.errors.ServerError):
            client(provider, retry=True).models.generate_content(model="error-503", contents="hi")
    assert len(provider.requests) == 1 + RETRY.attempts  # type: ignore[operator]
    first, *failed = scope.report.calls  # type: ignore[union-attr]
    assert (first.outcome, first.tokens_in, first.tokens_out, first.tokens_out_source) == (
        "completed",
        1,
        6,
        "provider",
    )
    assert [r.outcome for r in failed] == ["failed"] * 3


# ----------------------------------------------------------------- the client itself


def test_drop_in_is_the_vendors_client(provider: LocalProvider) -> None:
    made = client(provider)
    assert type(made) is genai.Client
    assert isinstance(made, Client) and issubclass(Client, genai.Client)
    assert not isinstance(genai.Client(api_key="test", http_options=options(provider)), Client)
    api = made._api_client
    # aiohttp is installed: google-genai would send client.aio's requests through it
    assert not api._use_aiohttp()
    # the SDK's own client (httpx2's in 3.x, httpx's in 2.x), scoped
    assert type(api._async_httpx_client).__name__ in ("AsyncHttpx2Client", "AsyncHttpxClient")


@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
@pytest.mark.parametrize("library", [httpx2, httpx], ids=["httpx2", "httpx"])
async def test_callers_http_clients_are_left_as_given(library: Any, provider: LocalProvider) -> None:
    """The caller's ``httpx_client`` / ``httpx_async_client`` (httpx2, or httpx: google-genai then
    runs on httpx) are not changed; the SDK gets scoped views of them, so a cancel still aborts."""
    sync_http, async_http = library.Client(), library.AsyncClient()
    transports = (sync_http._transport, async_http._transport)
    made = Client(
        api_key="test",
        http_options=options(provider, httpx_client=sync_http, httpx_async_client=async_http),
    )
    assert (sync_http._transport, async_http._transport) == transports
    provider.token_interval = 0.0
    async with RequestScope() as scope:
        await made.aio.models.generate_content(model="local-3", contents="hi")
        await anyio.to_thread.run_sync(lambda: made.models.generate_content(model="local-3", contents="hi"))
    assert [r.provider for r in scope.report.calls] == ["gcp.gemini"] * 2  # type: ignore[union-attr]
    await made.aio.aclose()
    made.close()
    assert not sync_http.is_closed and not async_http.is_closed  # google-genai leaves a caller's clients open
    sync_http.close()
    await async_http.aclose()


def test_what_a_scope_cannot_abort_is_refused(provider: LocalProvider) -> None:
    with pytest.raises(UnsupportedError, match="aiohttp_client"):
        Client(api_key="test", http_options={"base_url": provider.url, "aiohttp_client": _Session()})
    with pytest.raises(UnsupportedError, match="HTTP/2"):
        Client(api_key="test", http_options={"base_url": provider.url, "async_client_args": {"http2": True}})


class _Session:
    """Stands for an ``aiohttp.ClientSession`` (pydantic checks the type only when validating)."""


def test_cancel_from_another_thread_unblocks_a_sync_read(provider: LocalProvider) -> None:
    made = client(provider)
    scope = RequestScope()
    done = threading.Event()

    def read() -> None:
        with scope, pytest.raises(ScopeCancelled):
            made.models.generate_content(model="local-1000", contents="hi")
        done.set()

    threading.Thread(target=read).start()
    (log,) = provider.wait_for_requests(1)
    log.wait_units(3)
    scope.cancel()
    assert done.wait(5) and log.wait_disconnect() and log.disconnected_at is not None


def test_scope_client_scopes_a_client_built_elsewhere(provider: LocalProvider) -> None:
    from scoped_clients import scope_client

    made = scope_client(genai.Client(api_key="test", http_options=options(provider)))
    _open.append(made)
    assert isinstance(made, Client) and not made._api_client._use_aiohttp()
    provider.token_interval = 0.0
    with RequestScope() as scope:
        made.models.generate_content(model="local-2", contents="hi")
    assert [(r.provider, r.outcome) for r in scope.report.calls] == [("gcp.gemini", "completed")]  # type: ignore[union-attr]


# ------------------------------------------------------- the meter and the assembler on wire samples

#: as the service frames it: spaced JSON, CRLF line ends, a thought, a function call, usage at the end
_USAGE_SO_FAR = {"promptTokenCount": 9, "totalTokenCount": 9}
WIRE = [
    {"candidates": [{"content": {"parts": [{"text": "plan", "thought": True}], "role": "model"}, "index": 0}]},
    {"candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "index": 0}]},
    {"candidates": [{"content": {"parts": [{"text": ", world"}], "role": "model"}, "index": 0}]},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}], "role": "model"}}]},
    {
        "candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": 9,
            "candidatesTokenCount": 5,
            "thoughtsTokenCount": 2,
            "totalTokenCount": 16,
        },
    },
]


def _wire(events: list[dict[str, Any]]) -> bytes:
    import json

    out = b""
    for event in events:
        data = {**event, "modelVersion": "gemini-x"}
        data.setdefault("usageMetadata", _USAGE_SO_FAR)
        out += b"data: " + json.dumps(data).encode() + b"\r\n\r\n"
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_stream_meter_whatever_the_chunking(size: int) -> None:
    from scoped_clients._vendors.google_genai import GenerateStreamMeter

    data = _wire(WIRE)
    meter = GenerateStreamMeter()
    for start in range(0, len(data), size):
        meter.feed(data[start : start + size])
    meter.close()
    assert (meter.tokens_in, meter.input_source) == (9, "provider")
    assert (meter.tokens_out, meter.output_source) == (7, "provider")  # answer and thoughts
    assert meter.tool_calls and meter.finish_reason == "STOP" and meter.error is None
    cut = GenerateStreamMeter()  # a stream cut before its last chunk: one token per chunk received
    cut.feed(_wire(WIRE[:4]))
    assert (cut.tokens_out, cut.output_source, cut.finish_reason) == (4, "estimated", None)


def test_assembler_rebuilds_the_answer_and_maps_errors() -> None:
    import json

    from scoped_clients._vendors.google_genai import GenerateAssembler

    assembler = GenerateAssembler()
    assembler.feed(_wire(WIRE))
    assembler.close()
    status, body = assembler.result()
    (candidate,) = json.loads(body)["candidates"]
    assert status == 200 and assembler.complete
    assert candidate["content"]["parts"] == [
        {"text": "plan", "thought": True},
        {"text": "Hello, world"},
        {"functionCall": {"name": "f", "args": {"a": 1}}},
    ]
    assert candidate["finishReason"] == "STOP"
    assert json.loads(body)["usageMetadata"]["candidatesTokenCount"] == 5
    blocked = GenerateAssembler()  # a blocked prompt: no candidate, complete all the same
    blocked.feed(_wire([{"promptFeedback": {"blockReason": "SAFETY"}}]))
    assert blocked.complete and "candidates" not in json.loads(blocked.result()[1])
    failed = GenerateAssembler()
    failed.feed(b'data: {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}\r\n\r\n')
    assert failed.result()[0] == 429


def test_client_aio_keeps_one_pool_per_event_loop(provider: LocalProvider) -> None:
    """google-genai's own async client keeps a connection pool per asyncio loop (a client used by two
    ``asyncio.run`` calls): the drop-in keeps that, each pool scoped."""
    import asyncio

    from scoped_clients._transport._base import is_scoped

    made = client(provider)
    if not hasattr(made._api_client._async_httpx_client, "_client_for_running_loop"):
        pytest.skip("this google-genai release keeps one async pool, bound to its first loop (2.x)")
    provider.token_interval = 0.0
    pools: list[Any] = []

    async def call(last: bool) -> str:
        async with RequestScope() as scope:
            await made.aio.models.generate_content(model="local-2", contents="hi")
        pool = made._api_client._async_httpx_client._client_for_running_loop()  # this loop's
        assert is_scoped(pool)
        pools.append(pool)
        # google-genai leaves the pool of a loop that ended to the garbage collector: closed here
        await (made.aio.aclose() if last else pool.aclose())
        return scope.report.calls[0].outcome  # type: ignore[union-attr]

    assert [asyncio.run(call(False)), asyncio.run(call(True))] == ["completed", "completed"]
    assert len(provider.requests) == 2 and pools[0] is not pools[1]


@pytest.mark.anyio
@pytest.mark.usefixtures("_aclose_clients")
@pytest.mark.parametrize("stack", ["callers-httpx2", "callers-httpx", "sdk-httpx"])
async def test_stream_cancelled_on_either_http_library(
    stack: str, provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's ``httpx_async_client`` (httpx2 or httpx 0.28), or google-genai's own clients on httpx
    (``GOOGLE_GENAI_HTTP_CLIENT=httpx``): a stream cancelled while the SDK waits for its next chunk."""
    extra: dict[str, Any] = {}
    if stack == "sdk-httpx":
        monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", "httpx")
    else:
        extra["httpx_async_client"] = (httpx2 if stack == "callers-httpx2" else httpx).AsyncClient()
    made = Client(api_key="test", http_options=options(provider, retry_options=RETRY, **extra))
    _open.append(made)
    if stack == "sdk-httpx":
        assert type(made._api_client._async_httpx_client).__module__.startswith("google.genai")
        assert isinstance(made._api_client._async_httpx_client, httpx.AsyncClient)
    scope = RequestScope()

    async def read() -> None:
        with pytest.raises(ScopeCancelled):
            async for _ in await made.aio.models.generate_content_stream(model="local-1000", contents="hi"):
                pass

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(read)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 5)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
            with scope.shield():
                await wait(log.wait_disconnect)
    assert log.disconnected_at is not None and log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1
    assert [r.outcome for r in scope.report.calls] == ["aborted"]  # type: ignore[union-attr]
    if "httpx_async_client" in extra:
        await extra["httpx_async_client"].aclose()
