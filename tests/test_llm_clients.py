"""Drop-in OpenAI and Anthropic clients against the loopback provider, measured at the server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest

import scoped_clients.anthropic as scoped_anthropic
import scoped_clients.openai as scoped_openai
from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.provider import LocalProvider

MESSAGES = [{"role": "user", "content": "tell me a long story"}]
MAX_TOKENS = 150


_open: list[Any] = []


@pytest.fixture(autouse=True)
async def _close_clients(anyio_backend: object) -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().close()


def openai_async(p: LocalProvider, **kw: Any) -> scoped_openai.AsyncOpenAI:
    client = scoped_openai.AsyncOpenAI(base_url=p.url + "/v1", api_key="test", **kw)
    _open.append(client)
    return client


def anthropic_async(p: LocalProvider, **kw: Any) -> scoped_anthropic.AsyncAnthropic:
    client = scoped_anthropic.AsyncAnthropic(base_url=p.url, api_key="test", **kw)
    _open.append(client)
    return client


# Each shape: (name, async fn(provider) -> async iterator of "tokens as the caller sees them")
async def _openai_chat_stream(p: LocalProvider) -> AsyncIterator[object]:
    stream = await openai_async(p).chat.completions.create(
        model="local-1000",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,  # type: ignore[arg-type]
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk


async def _openai_chat_helper(p: LocalProvider) -> AsyncIterator[object]:
    async with openai_async(p).chat.completions.stream(
        model="local-1000",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
    ) as stream:
        async for event in stream:
            if event.type == "content.delta" and event.delta:
                yield event


async def _openai_responses_stream(p: LocalProvider) -> AsyncIterator[object]:
    stream = await openai_async(p).responses.create(
        model="local-1000", input="tell me a story", max_output_tokens=MAX_TOKENS, stream=True
    )
    async for event in stream:
        if event.type == "response.output_text.delta":
            yield event


async def _anthropic_stream(p: LocalProvider) -> AsyncIterator[object]:
    stream = await anthropic_async(p).messages.create(
        model="local-1000",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,  # type: ignore[arg-type]
    )
    async for event in stream:
        if event.type == "content_block_delta":
            yield event


async def _anthropic_helper(p: LocalProvider) -> AsyncIterator[object]:
    async with anthropic_async(p).messages.stream(
        model="local-1000",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
    ) as stream:
        async for text in stream.text_stream:
            yield text


STREAMS = [
    pytest.param(_openai_chat_stream, id="openai-chat-stream"),
    pytest.param(_openai_chat_helper, id="openai-chat-helper"),
    pytest.param(_openai_responses_stream, id="openai-responses-stream"),
    pytest.param(_anthropic_stream, id="anthropic-stream"),
    pytest.param(_anthropic_helper, id="anthropic-helper"),
]


async def _openai_plain(p: LocalProvider) -> object:
    return await openai_async(p).chat.completions.create(
        model="local-1000",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
    )


async def _openai_responses_plain(p: LocalProvider) -> object:
    return await openai_async(p).responses.create(model="local-1000", input="hi", max_output_tokens=MAX_TOKENS)


async def _anthropic_plain(p: LocalProvider) -> object:
    return await anthropic_async(p).messages.create(
        model="local-1000",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
    )


PLAIN = [
    pytest.param(_openai_plain, id="openai-chat"),
    pytest.param(_openai_responses_plain, id="openai-responses"),
    pytest.param(_anthropic_plain, id="anthropic-messages"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("shape", STREAMS)
async def test_stream_cancelled_by_another_task(shape: Any, provider: LocalProvider) -> None:
    """The FastAPI-style case: the caller runs outside the scope's body (a fire-and-forget task)."""
    errors: list[BaseException] = []
    scope = RequestScope("chat")
    received = 0
    ten = anyio.Event()
    # Tokens 50 ms apart: the cancel, right after the caller saw its 10th token, lands
    # long before the server produces the 11th, so "sent before the abort" is exact.
    provider.token_interval = 0.05

    async def consume() -> None:
        nonlocal received
        try:
            async for _ in shape(provider):
                received += 1
                if received == 10:
                    ten.set()
        except ScopeCancelled as exc:
            errors.append(exc)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

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
    assert len(provider.requests) == 1  # never retried
    assert [type(e) for e in errors] == [ScopeCancelled]
    assert scope.report is not None
    (record,) = scope.report.calls
    produced = len(log.units) - log.units_after(t_cancel)  # what the server sent before the abort
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    assert received == 10
    assert record.tokens_out == produced == 10  # one token per event, counted as received
    assert record.tokens_out_source == "estimated"
    assert record.tokens_saved_max == MAX_TOKENS - produced
    assert record.tokens_saved is not None and 0 <= record.tokens_saved <= MAX_TOKENS - produced


@pytest.mark.anyio
@pytest.mark.parametrize("shape", PLAIN)
async def test_plain_completion_cancelled_while_generating(shape: Any, provider: LocalProvider) -> None:
    errors: list[BaseException] = []
    scope = RequestScope("plain")

    async def call() -> None:
        try:
            await shape(provider)
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
    assert len(errors) == 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.tokens_out == 0
    # Nothing was received: the bound subtracts what the provider probably produced (test_savings.py).
    assert record.tokens_saved_max is not None and record.tokens_saved_max <= MAX_TOKENS
    assert record.tokens_saved_max_source == "upper_bound"
    assert record.tokens_saved is not None and record.tokens_saved > 0


@pytest.mark.anyio
@pytest.mark.parametrize("shape", PLAIN)
async def test_refused_before_send(shape: Any, provider: LocalProvider) -> None:
    refused = anyio.Event()

    async def call() -> None:
        try:
            await shape(provider)
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


@pytest.mark.anyio
async def test_completed_calls_report_provider_usage(provider: LocalProvider) -> None:
    async with RequestScope() as scope:
        await openai_async(provider).chat.completions.create(
            model="local-12",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
        stream = await openai_async(provider).chat.completions.create(
            model="local-12",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        async for _ in stream:
            pass
        async with anthropic_async(provider).messages.stream(
            model="local-12",
            messages=MESSAGES,
            max_tokens=100,  # type: ignore[arg-type]
        ) as s:
            await s.get_final_message()
    records = scope.report.calls  # type: ignore[union-attr]
    assert [r.outcome for r in records] == ["completed"] * 3
    assert [r.tokens_out for r in records] == [12, 12, 12]
    assert all(r.tokens_out_source == "provider" and r.tokens_in_source == "provider" for r in records)
    assert [r.provider for r in records] == ["openai", "openai", "anthropic"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "raw_exc"),
    [
        ("error-400", openai.BadRequestError),
        ("error-401", openai.AuthenticationError),
        ("error-429", openai.RateLimitError),
        ("error-500", openai.InternalServerError),
    ],
)
async def test_openai_errors_reach_the_caller_unchanged(model: str, raw_exc: type, provider: LocalProvider) -> None:
    async with RequestScope() as scope:
        with pytest.raises(raw_exc):
            await openai_async(provider, max_retries=0).chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
            )
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "failed" and record.error == f"HTTP {model[-3:]}"
    assert record.detail["status_code"] == int(model[-3:])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "raw_exc"),
    [("error-400", anthropic.BadRequestError), ("error-429", anthropic.RateLimitError)],
)
async def test_anthropic_errors_reach_the_caller_unchanged(model: str, raw_exc: type, provider: LocalProvider) -> None:
    async with RequestScope() as scope:
        with pytest.raises(raw_exc):
            await anthropic_async(provider, max_retries=0).messages.create(
                model=model,
                messages=MESSAGES,
                max_tokens=10,  # type: ignore[arg-type]
            )
    assert [r.outcome for r in scope.report.calls] == ["failed"]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_sdk_retries_still_work_when_not_cancelled(provider: LocalProvider) -> None:
    client = openai_async(provider, max_retries=2)
    async with RequestScope():
        with pytest.raises(openai.InternalServerError):
            await client.with_options(timeout=5).chat.completions.create(
                model="error-500",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
    assert len(provider.requests) == 3


@pytest.mark.anyio
async def test_malformed_stream_is_the_sdks_error(provider: LocalProvider) -> None:
    raw = openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
    _open.append(raw)
    with pytest.raises(Exception) as raw_error:
        async for _ in await raw.chat.completions.create(model="malformed", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            pass
    provider.reset()
    async with RequestScope() as scope:
        with pytest.raises(type(raw_error.value)):
            stream = await openai_async(provider).chat.completions.create(
                model="malformed",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
            )
            async for _ in stream:
                pass
    assert [r.outcome for r in scope.report.calls] == ["failed"]  # type: ignore[union-attr]


def test_drop_in_identity(provider: LocalProvider) -> None:
    client = scoped_openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
    assert isinstance(client, openai.AsyncOpenAI)
    assert isinstance(client.with_options(timeout=3), scoped_openai.AsyncOpenAI)
    assert isinstance(client.copy(max_retries=0), scoped_openai.AsyncOpenAI)
    assert isinstance(scoped_anthropic.Anthropic(api_key="x"), anthropic.Anthropic)
    assert isinstance(scoped_openai.OpenAI(api_key="x"), openai.OpenAI)


@pytest.mark.anyio
async def test_user_supplied_http_client_is_left_as_given(provider: LocalProvider) -> None:
    http: Any = httpx2 if not openai.__version__.startswith("2.") else __import__("httpx")  # openai 2.x: httpx
    mine = http.AsyncClient(headers={"x-team": "search"}, timeout=7.0)
    transport, mounts = mine._transport, dict(mine._mounts)
    client = scoped_openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", http_client=mine)
    _open.append(client)
    assert mine._transport is transport and mine._mounts == mounts  # the caller's client is untouched
    assert type(client._client) is type(mine) and client._client.headers is mine.headers
    async with RequestScope() as scope:
        await client.chat.completions.create(model="local-3", messages=MESSAGES)  # type: ignore[arg-type]
    assert provider.requests[0].headers["x-team"] == "search"
    assert scope.report.calls[0].provider == "openai"  # type: ignore[union-attr]


# -------------------------------------------------------------------- sync


@pytest.fixture
def sync_clients(provider: LocalProvider) -> Iterator[dict[str, Callable[[], object]]]:
    o = scoped_openai.OpenAI(base_url=provider.url + "/v1", api_key="x")
    a = scoped_anthropic.Anthropic(base_url=provider.url, api_key="x")

    def openai_stream() -> object:
        for _ in o.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True):  # type: ignore[arg-type]
            pass
        return None

    def anthropic_stream() -> object:
        with a.messages.stream(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS) as s:  # type: ignore[arg-type]
            for _ in s.text_stream:
                pass
        return None

    yield {
        "openai-plain": lambda: o.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS),  # type: ignore[arg-type]
        "openai-stream": openai_stream,
        "anthropic-plain": lambda: a.messages.create(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS),  # type: ignore[arg-type]
        "anthropic-stream": anthropic_stream,
    }
    o.close()
    a.close()


@pytest.mark.parametrize("name", ["openai-plain", "openai-stream", "anthropic-plain", "anthropic-stream"])
def test_sync_clients_cancelled_from_another_thread(
    name: str, sync_clients: dict[str, Callable[[], object]], provider: LocalProvider
) -> None:
    result = cancel_sync_call(provider, sync_clients[name], units=10)
    assert result.seen >= result.t_cancel and result.log.units_after(result.t_cancel) <= 1
    assert len(provider.requests) == 1
    assert len(result.errors) == 1
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted"
    if name.endswith("stream"):
        assert record.tokens_saved_max == MAX_TOKENS - record.tokens_out
    else:  # nothing received: the bound subtracts what the provider probably produced (test_savings.py)
        assert record.tokens_saved_max is not None and record.tokens_saved_max <= MAX_TOKENS


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["abort", "finish_if_done"])
async def test_finish_policy(policy: str, provider: LocalProvider) -> None:
    """With finish_if_done, a stream whose finish reason arrived completes on cancel, so usage is received."""
    finished = anyio.Event()
    outcome: list[object] = []
    client = openai_async(provider, finish_policy=policy)

    async def consume() -> None:
        stream = await client.chat.completions.create(
            model="local-5",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished.set()
            outcome.append("done")
        except ScopeCancelled as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, RequestScope() as scope:
            tg.start_soon(consume)
            await finished.wait()  # the usage chunk is a token interval behind the finish reason
            scope.cancel("client_disconnected")
            with scope.shield():
                await anyio.to_thread.run_sync(provider.requests[0].wait_done)
    (record,) = scope.report.calls  # type: ignore[union-attr]
    (log,) = provider.requests
    if policy == "abort":
        assert log.disconnected_at is not None and record.outcome == "aborted"
        assert isinstance(outcome[0], ScopeCancelled)
    else:
        assert log.disconnected_at is None and record.outcome == "completed"
        assert record.tokens_out_source == "provider" and record.tokens_out == 5
        assert record.detail["finished_after_cancel"] is True


@pytest.mark.anyio
async def test_cost_saved_with_a_price_table(provider: LocalProvider) -> None:
    from scoped_clients import set_prices

    set_prices({"local-1000": (1.0, 10.0)})  # $ per million tokens: input, output
    try:
        scope = RequestScope()

        async def call() -> None:
            with pytest.raises(ScopeCancelled):
                await _openai_plain(provider)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, scope:
                tg.start_soon(call)
                (log,) = await wait(provider.wait_for_requests, 1)
                await wait(log.wait_units, 3)
                scope.cancel("client_disconnected")
    finally:
        set_prices({})
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.tokens_saved is not None and record.tokens_saved > 0
    assert record.cost_saved == pytest.approx(record.tokens_saved * 10.0 / 1_000_000)
