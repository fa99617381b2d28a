"""Vendor-profiled HTTP clients, for frameworks that accept only an HTTP client.

A plain vendor SDK given ``scoped_clients.<vendor>.async_http_client()`` is what LangChain's
``http_async_client`` and pydantic-ai's ``http_client`` build: the report must still carry the
vendor, the model and the tokens, measured against the loopback provider.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest

import scoped_clients.anthropic as scoped_anthropic
import scoped_clients.openai as scoped_openai
from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled, UnsupportedError
from scoped_clients.provider import LocalProvider

MESSAGES: Any = [{"role": "user", "content": "tell me a long story"}]


def _openai(provider: LocalProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=provider.url + "/v1", api_key="test", http_client=scoped_openai.async_http_client()
    )


def _anthropic(provider: LocalProvider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=provider.url, api_key="test", http_client=scoped_anthropic.async_http_client()
    )


@pytest.mark.anyio
async def test_completed_calls_are_reported_as_the_vendors(provider: LocalProvider) -> None:
    async with _openai(provider) as oai, _anthropic(provider) as ant, RequestScope() as scope:
        await oai.chat.completions.create(model="local-12", messages=MESSAGES)
        await ant.messages.create(model="local-7", messages=MESSAGES, max_tokens=100)
    records = scope.report.calls  # type: ignore[union-attr]
    assert [(r.provider, r.model, r.outcome) for r in records] == [
        ("openai", "local-12", "completed"),
        ("anthropic", "local-7", "completed"),
    ]
    assert [(r.tokens_in, r.tokens_out) for r in records] == [(5, 12), (5, 7)]
    assert all(r.tokens_out_source == "provider" for r in records)
    for log in provider.requests:
        await wait(log.wait_done)
    assert [log.disconnected_at for log in provider.requests] == [None, None]


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_aborted_stream_keeps_model_and_savings(vendor: str, provider: LocalProvider) -> None:
    errors: list[BaseException] = []
    scope = RequestScope("agent")
    client: Any = _openai(provider) if vendor == "openai" else _anthropic(provider)

    async def call() -> None:
        try:
            if vendor == "openai":
                stream = await client.chat.completions.create(
                    model="local-1000", messages=MESSAGES, max_tokens=150, stream=True
                )
            else:
                stream = await client.messages.create(
                    model="local-1000", messages=MESSAGES, max_tokens=150, stream=True
                )
            async for _ in stream:
                pass
        except ScopeCancelled as exc:
            errors.append(exc)

    async with client:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg, scope:
                tg.start_soon(call)
                (log,) = await wait(provider.wait_for_requests, 1)
                await wait(log.wait_units, 10)
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
            seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1 and len(errors) == 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.model, record.outcome) == (vendor, "local-1000", "aborted")
    assert record.tokens_out > 0  # counted from the stream by the vendor's meter (a generic one counts 0)
    assert record.tokens_saved_max == 150 - record.tokens_out


def test_sync_client_cancelled_from_another_thread(provider: LocalProvider) -> None:
    with openai.OpenAI(base_url=provider.url + "/v1", api_key="t", http_client=scoped_openai.http_client()) as client:

        def call() -> None:
            stream = client.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=150, stream=True)
            for _ in stream:
                pass

        result = cancel_sync_call(provider, call, units=10)
    assert result.seen >= result.t_cancel and result.log.units_after(result.t_cancel) <= 1
    assert not result.thread_alive and len(result.errors) == 1
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.model, record.outcome) == ("openai", "local-1000", "aborted")


def test_vendor_defaults_and_options() -> None:
    client = scoped_anthropic.http_client(timeout=7.0, always_stream=True)
    try:
        assert isinstance(client, httpx2.Client)
        assert client.timeout == httpx2.Timeout(7.0)
        assert client.follow_redirects  # the SDK's default, not httpx2's
        assert client._transport.always_stream  # type: ignore[attr-defined]
    finally:
        client.close()
    with pytest.raises(UnsupportedError, match=r"HTTP/1\.1"):
        scoped_openai.async_http_client(http2=True)
