"""Drop-in Groq clients (``scoped_clients.groq``) against the embedded provider's Groq wire format
(``/openai/v1``), measured at the provider: the disconnect it saw, the units it produced after the
cancel, the number of requests it received (groq retries any ``Exception`` from ``send``, twice by
default: a cancel must reach the provider once)."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import groq
import httpx
import httpx2
import pytest

import scoped_clients.groq as scoped_groq
from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients._vendors import by_provider, generates_tokens
from scoped_clients._vendors import plan_stream as registry_plan
from scoped_clients._vendors.groq import GroqChatAssembler, GroqChatStreamMeter, GroqProfile
from scoped_clients.provider import LocalProvider, Reply, ToolCall

MESSAGES: Any = [{"role": "user", "content": "tell me a long story"}]
MAX_TOKENS = 150
#: keys of a non-streamed body the provider's Groq stream chunks do not carry (Groq's own do)
_NOT_IN_CHUNKS = ("created", "service_tier", "system_fingerprint")

_open: list[Any] = []
_open_async: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


@pytest.fixture
async def aclients(anyio_backend: object) -> AsyncIterator[None]:
    """Closes the async clients a test made, on its own backend."""
    yield
    while _open_async:
        await _open_async.pop().close()


def async_client(p: LocalProvider, **kw: Any) -> groq.AsyncGroq:
    client = scoped_groq.AsyncGroq(base_url=p.url, api_key="test", **kw)
    _open_async.append(client)
    return client


def sync_client(p: LocalProvider, **kw: Any) -> groq.Groq:
    client = scoped_groq.Groq(base_url=p.url, api_key="test", **kw)
    _open.append(client)
    return client


async def _stream(p: LocalProvider, **kw: Any) -> AsyncIterator[object]:
    stream = await async_client(p, **kw).chat.completions.create(
        model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk


async def _plain(p: LocalProvider, **kw: Any) -> object:
    return await async_client(p, **kw).chat.completions.create(
        model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS
    )


def _aborted_with_labelled_savings(record: Any, produced: int | None = None) -> None:
    assert record.provider == "groq" and record.operation == "chat.completions" and record.model == "local-1000"
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    assert record.tokens_saved is not None and record.tokens_saved > 0
    assert record.tokens_saved_source == "estimate" and record.tokens_saved_max_source == "upper_bound"
    if produced is not None:  # a stream: what was received is exact, the bound subtracts it
        assert record.tokens_out == produced and record.tokens_out_source == "estimated"
        assert record.tokens_saved_max == MAX_TOKENS - produced
    else:  # nothing received: the bound subtracts what the provider probably produced
        assert record.tokens_out == 0
        assert record.tokens_saved_max is not None and record.tokens_saved_max <= MAX_TOKENS


# ------------------------------------------------------------------ async: cancelled at the provider


@pytest.mark.anyio
@pytest.mark.usefixtures("aclients")
async def test_async_stream_cancelled_by_another_task(provider: LocalProvider) -> None:
    """The caller runs outside the scope's body (a fire-and-forget task), as under ScopeMiddleware."""
    errors: list[BaseException] = []
    scope = RequestScope("chat")
    received = 0
    ten = anyio.Event()
    provider.token_interval = 0.05  # the cancel lands long before the 11th token

    async def consume() -> None:
        nonlocal received
        try:
            async for _ in _stream(provider):
                received += 1
                if received == 10:
                    ten.set()
        except BaseException as exc:
            errors.append(exc)
            if not isinstance(exc, ScopeCancelled):
                raise

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(consume)
            await ten.wait()
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        (log,) = provider.requests
        seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1  # groq retries any Exception from send: never this one
    assert [type(e) for e in errors] == [ScopeCancelled]
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert received == 10
    _aborted_with_labelled_savings(record, produced=len(log.units) - log.units_after(t_cancel))


@pytest.mark.anyio
@pytest.mark.usefixtures("aclients")
@pytest.mark.parametrize("always_stream", [False, True], ids=["plain", "always_stream"])
async def test_async_plain_completion_cancelled_while_generating(always_stream: bool, provider: LocalProvider) -> None:
    errors: list[BaseException] = []
    scope = RequestScope("plain")

    async def call() -> None:
        try:
            await _plain(provider, always_stream=always_stream)
        except ScopeCancelled as exc:
            errors.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(call)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 10)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1
    assert bool(log.json.get("stream")) is always_stream  # always_stream: sent as a stream
    assert [type(e) for e in errors] == [ScopeCancelled]
    (record,) = scope.report.calls  # type: ignore[union-attr]
    # always_stream: the tokens received before the cancel are counted, as for a stream
    _aborted_with_labelled_savings(record, produced=record.tokens_out if always_stream else None)
    assert (record.tokens_out >= 9) is always_stream


@pytest.mark.anyio
@pytest.mark.usefixtures("aclients")
@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
async def test_async_call_after_the_cancel_is_refused(streamed: bool, provider: LocalProvider) -> None:
    refused = anyio.Event()

    async def call() -> None:
        try:
            if streamed:
                async for _ in _stream(provider):
                    pass
            else:
                await _plain(provider)
        except ScopeCancelled:
            refused.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, RequestScope() as scope:
            scope.cancel("client_disconnected")
            tg.start_soon(call)  # a task outside the body: it reaches the transport and is refused there
            with scope.shield():
                await refused.wait()
    assert provider.requests == []
    assert [c.outcome for c in scope.report.calls] == ["refused"]  # type: ignore[union-attr]
    assert scope.report.calls[0].provider == "groq"  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.usefixtures("aclients")
async def test_async_completed_calls_report_the_providers_usage(provider: LocalProvider) -> None:
    client = async_client(provider)
    async with RequestScope() as scope:
        completion = await client.chat.completions.create(model="local-12", messages=MESSAGES)
        async for _ in await client.chat.completions.create(model="local-12", messages=MESSAGES, stream=True):
            pass
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    records = scope.report.calls  # type: ignore[union-attr]
    assert [(r.provider, r.outcome, r.tokens_out, r.tokens_in) for r in records] == [("groq", "completed", 12, 5)] * 2
    assert all(r.tokens_out_source == "provider" and r.tokens_in_source == "provider" for r in records)
    assert [r.finish_reason for r in records] == ["stop", "stop"]


# ------------------------------------------------------------------ sync: cancelled from another thread


def _sync_plain(p: LocalProvider, **kw: Any) -> Callable[[], object]:
    client = sync_client(p, **kw)
    return lambda: client.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS)


def _sync_stream(p: LocalProvider, **kw: Any) -> Callable[[], object]:
    client = sync_client(p, **kw)

    def run() -> object:
        for _ in client.chat.completions.create(
            model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
        ):
            pass
        return None

    return run


@pytest.mark.parametrize(
    ("make", "kw"),
    [(_sync_plain, {}), (_sync_plain, {"always_stream": True}), (_sync_stream, {})],
    ids=["plain", "always_stream", "stream"],
)
def test_sync_call_cancelled_from_another_thread(make: Any, kw: dict[str, Any], provider: LocalProvider) -> None:
    result = cancel_sync_call(provider, make(provider, **kw), units=10)
    assert not result.thread_alive
    assert result.seen >= result.t_cancel and result.log.units_after(result.t_cancel) <= 1
    assert len(provider.requests) == 1  # not retried
    assert [type(e) for e in result.errors] == [ScopeCancelled]
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    streamed = make is _sync_stream or kw.get("always_stream")
    _aborted_with_labelled_savings(record, produced=record.tokens_out if streamed else None)
    assert (record.tokens_out >= 9) == bool(streamed)


@pytest.mark.parametrize("make", [_sync_plain, _sync_stream], ids=["plain", "stream"])
def test_sync_call_after_the_cancel_is_refused(make: Any, provider: LocalProvider) -> None:
    call = make(provider)
    with RequestScope() as scope:
        scope.cancel("client_disconnected")
        with pytest.raises(ScopeCancelled):
            call()
    assert provider.requests == []
    assert [(c.provider, c.outcome) for c in scope.report.calls] == [("groq", "refused")]  # type: ignore[union-attr]


def test_sync_completed_calls_report_the_providers_usage(provider: LocalProvider) -> None:
    client = sync_client(provider)
    with RequestScope() as scope:
        client.chat.completions.create(model="local-7", messages=MESSAGES)
        for _ in client.chat.completions.create(model="local-7", messages=MESSAGES, stream=True):
            pass
    records = scope.report.calls  # type: ignore[union-attr]
    assert [(r.outcome, r.tokens_out, r.tokens_out_source) for r in records] == [("completed", 7, "provider")] * 2


# ------------------------------------------------------------------ retries, errors, always_stream


def test_sdk_retries_still_work_when_not_cancelled(provider: LocalProvider) -> None:
    """What makes "exactly one request" above mean something: groq does retry (twice by default)."""
    client = sync_client(provider)
    with RequestScope() as scope, pytest.raises(groq.InternalServerError):
        client.with_options(timeout=5).chat.completions.create(model="error-500", messages=MESSAGES)
    assert len(provider.requests) == 3
    assert [r.outcome for r in scope.report.calls] == ["failed"] * 3  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.usefixtures("aclients")
async def test_errors_reach_the_caller_unchanged(provider: LocalProvider) -> None:
    async with RequestScope() as scope:
        with pytest.raises(groq.RateLimitError):
            await async_client(provider, max_retries=0).chat.completions.create(model="error-429", messages=MESSAGES)
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "failed" and record.detail["status_code"] == 429


@pytest.mark.parametrize("script", [None, "tools"], ids=["text", "tool_call"])
def test_always_stream_gives_the_non_streamed_answer(script: str | None, provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    model = "local-6"
    if script:
        model = "agent"
        provider.script(Reply(text="let me look", tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
    with groq.Groq(api_key="test", base_url=provider.url) as raw:
        expected = raw.chat.completions.create(model=model, messages=MESSAGES).model_dump()
    if script:
        provider.script(Reply(text="let me look", tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
    with RequestScope() as scope:
        got = sync_client(provider, always_stream=True).chat.completions.create(model=model, messages=MESSAGES)
    assert provider.requests[-1].json["stream"] is True  # sent as a stream
    assert type(got) is groq.types.chat.ChatCompletion
    actual = got.model_dump()
    for key in _NOT_IN_CHUNKS:
        actual.pop(key, None), expected.pop(key, None)
    for call in expected["choices"][0]["message"]["tool_calls"] or ():
        # the provider's non-streamed calls keep the stream's merge key, which groq's
        # ChatCompletionMessageToolCall does not declare (and OpenAI's bodies do not have)
        call.pop("index")
    assert actual == expected  # usage (from x_groq) and x_groq.id where the non-streamed body has them
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "completed" and record.tokens_out_source == "provider"
    assert record.tokens_out == expected["usage"]["completion_tokens"]


def test_always_stream_plans_only_groqs_path() -> None:
    """The registry asks groq's plan first: it must leave OpenAI's path to OpenAI's plan (stream_options)."""

    def request(url: str) -> httpx.Request:
        return httpx.Request("POST", url, json={"model": "m", "messages": MESSAGES})

    groq_plan = registry_plan(request("https://api.groq.com/openai/v1/chat/completions"))
    openai_plan = registry_plan(request("https://api.openai.com/v1/chat/completions"))
    assert isinstance(groq_plan.assembler, GroqChatAssembler)  # type: ignore[union-attr]
    assert json.loads(groq_plan.request.content) == {"model": "m", "messages": MESSAGES, "stream": True}  # type: ignore[union-attr]
    assert not isinstance(openai_plan.assembler, GroqChatAssembler)  # type: ignore[union-attr]
    assert "stream_options" in json.loads(openai_plan.request.content)  # type: ignore[union-attr]


# ------------------------------------------------------------------ meters on Groq's wire


def _chunk(choice: dict[str, Any] | None, **extra: Any) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", **extra}
    body["choices"] = [choice] if choice else []
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_stream_meter_counts_deltas_and_reads_x_groq_usage() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12, "queue_time": 0.01}
    wire = [
        _chunk({"index": 0, "delta": {"role": "assistant", "content": ""}}, x_groq={"id": "req_1"}),
        _chunk({"index": 0, "delta": {"reasoning": "hmm"}}),
        _chunk({"index": 0, "delta": {"content": "Hi"}}),
        _chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f"}}]}}),
    ]
    meter = GroqChatStreamMeter()
    for piece in wire:  # split mid-event too
        meter.feed(piece[:7])
        meter.feed(piece[7:])
    assert (meter.tokens_out, meter.output_source, meter.tool_calls) == (3, "estimated", True)
    meter.feed(_chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"}, x_groq={"id": "req_1", "usage": usage}))
    meter.feed(b"data: [DONE]\n\n")
    meter.close()
    assert (meter.tokens_out, meter.output_source) == (3, "provider")
    assert (meter.tokens_in, meter.input_source) == (9, "provider")
    assert meter.finish_reason == "tool_calls" and meter.error is None


def test_profile_names_groq_calls() -> None:
    profile = GroqProfile()
    body = json.dumps({"model": "llama-3.3-70b-versatile", "max_completion_tokens": 64, "stream": True}).encode()
    info = profile.describe("POST", "https://api.groq.com/openai/v1/chat/completions", body)
    assert (info.provider, info.operation, info.model, info.max_tokens, info.streaming) == (
        "groq",
        "chat.completions",
        "llama-3.3-70b-versatile",
        64,
        True,
    )
    assert profile.describe("POST", "https://api.groq.com/openai/v1/audio/transcriptions", b"").operation == (
        "audio.transcriptions"
    )
    assert type(profile.meter(info, 200, "text/event-stream")) is GroqChatStreamMeter
    assert by_provider("groq") is not None and generates_tokens("groq", "chat.completions")
    assert not generates_tokens("groq", "embeddings")


# ------------------------------------------------------------------ drop-in identity


@pytest.mark.parametrize(("ours", "vendor"), [(scoped_groq.Groq, groq.Groq), (scoped_groq.AsyncGroq, groq.AsyncGroq)])
def test_instances_are_the_vendors_class_and_copies_stay_scoped(ours: Any, vendor: type) -> None:
    client = ours(api_key="x")
    assert type(client) is vendor and isinstance(client, ours)
    assert issubclass(ours, vendor) and not isinstance(vendor(api_key="x"), ours)
    ours_params, vendor_params = inspect.signature(ours).parameters, inspect.signature(vendor).parameters
    assert [name for name in ours_params if name not in vendor_params] == ["always_stream", "finish_policy"]
    assert all(ours_params[name] == vendor_params[name] for name in vendor_params)
    for copied in (client.copy(max_retries=0), client.with_options(timeout=3)):
        assert type(copied) is vendor and isinstance(copied, ours)
    copied = client.copy(always_stream=True)
    assert copied._client._transport.always_stream is True and client._client._transport.always_stream is False
    mine = (httpx.Client if vendor is groq.Groq else httpx.AsyncClient)()
    transport = mine._transport
    again = copied.with_options(http_client=mine)
    assert isinstance(again, ours) and mine._transport is transport  # the caller's client, untouched
    assert again._client._transport.always_stream is True


def test_callers_http_client_is_left_as_given(provider: LocalProvider) -> None:
    mine = httpx.Client(headers={"x-team": "search"})
    transport = mine._transport
    client = sync_client(provider, http_client=mine)
    assert mine._transport is transport and type(client._client) is httpx.Client
    with RequestScope() as scope:
        client.chat.completions.create(model="local-3", messages=MESSAGES)
    assert provider.requests[0].headers["x-team"] == "search"
    assert [(c.provider, c.outcome) for c in scope.report.calls] == [("groq", "completed")]  # type: ignore[union-attr]


def test_an_httpx2_client_gets_the_sdks_own_error() -> None:
    with httpx2.Client() as mine, pytest.raises(TypeError, match="Invalid `http_client` argument"):
        scoped_groq.Groq(api_key="x", http_client=mine)  # type: ignore[arg-type]
