"""``scoped_clients.litellm``: LiteLLM's calls, for six of its providers, stopped at the provider on cancel.

Asserted at the embedded provider for ``openai/``, ``anthropic/``, ``gemini/``, ``cohere/``,
``groq/`` and ``mistral/``, streamed and not, async (asyncio, uvloop; LiteLLM cannot run on
Trio) and sync: the disconnect is seen, at most one unit is produced after the cancel, exactly
one request is made (no retry, re-send or fallback, even with ``num_retries``), and a call made
after the cancel is refused before it is sent.  Every test also checks that LiteLLM's global
state (its client cache, module-level clients, ``num_retries``, sessions) is what it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from _helpers import cancel_sync_call
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients._exceptions import UnsupportedError
from scoped_clients._vendors.litellm import LiteLLMProfile
from scoped_clients.provider import LocalProvider

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason="litellm is not installed (pip install 'scoped-clients[litellm]')")
from scoped_clients import litellm as scoped  # noqa: E402

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "tell me a long story"}]
#: LiteLLM provider prefix -> the api_base pointing it at the embedded provider (docs/vendors-next.md)
BASES = {
    "openai": "/v1",
    "anthropic": "",
    "gemini": "/v1beta",
    "cohere": "/v2/chat",
    "groq": "/openai/v1",
    "mistral": "/mistral/v1",
}
#: the provider each record names: the vendor module's of that provider (OpenTelemetry's names)
RECORDED = {prefix: LiteLLMProfile(prefix, None).provider for prefix in BASES}
#: prefixes whose records carry the provider's token counts (a vendor module meters them in this branch)
METERED = ("openai", "anthropic", "cohere", "gemini", "groq", "mistral")
TRIO = "LiteLLM runs on asyncio only (its async path calls asyncio.get_event_loop())"


def test_records_name_the_provider() -> None:
    assert {RECORDED[p] for p in ("openai", "anthropic", "cohere")} == {"openai", "anthropic", "cohere"}
    assert (RECORDED["groq"], RECORDED["mistral"], RECORDED["gemini"]) == ("groq", "mistral_ai", "gcp.gemini")


def kwargs_for(provider: LocalProvider, prefix: str, model: str) -> dict[str, Any]:
    return {"model": f"{prefix}/{model}", "api_base": provider.url + BASES[prefix], "api_key": "test"}


def global_state() -> tuple[object, ...]:
    """What of LiteLLM's module state a scoped call must leave as it found it."""
    cache = litellm.in_memory_llm_clients_cache
    return (
        cache,
        sorted(cache.cache_dict),
        "get_cache" in vars(cache),
        vars(litellm).get("module_level_aclient"),
        vars(litellm).get("module_level_client"),
        litellm.num_retries,
        litellm.aclient_session,
        litellm.client_session,
    )


@pytest.fixture
def unchanged() -> Iterator[None]:
    before = global_state()
    yield
    assert global_state() == before


@pytest.fixture
async def on_asyncio(anyio_backend: Any, unchanged: None) -> AsyncIterator[None]:
    if anyio_backend == "trio":
        pytest.skip(TRIO)
    yield
    await scoped.close_litellm_async_clients()


# ------------------------------------------------------------------ async


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("prefix", list(BASES))
async def test_cancel_stops_the_call_at_the_provider(
    provider: LocalProvider, on_asyncio: None, prefix: str, streamed: bool
) -> None:
    kwargs = kwargs_for(provider, prefix, "local-1000")

    async def read() -> None:
        # num_retries: LiteLLM's own retries must not re-send a cancelled call
        if streamed:
            async for _ in await scoped.acompletion(messages=MESSAGES, stream=True, num_retries=2, **kwargs):
                pass
        else:
            await scoped.acompletion(messages=MESSAGES, num_retries=2, **kwargs)

    with anyio.fail_after(20):
        async with RequestScope() as scope, anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.to_thread.run_sync(lambda: provider.wait_for_requests(1)[0].wait_units(3))
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
    (log,) = provider.requests
    log.wait_disconnect()
    assert log.units_after(t_cancel) <= 1
    await anyio.sleep(0.2)  # room for a re-send, were there one
    assert len(provider.requests) == 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.model, record.outcome) == (RECORDED[prefix], "local-1000", "aborted")


@pytest.mark.parametrize("prefix", list(BASES))
async def test_a_call_after_the_cancel_is_refused(provider: LocalProvider, on_asyncio: None, prefix: str) -> None:
    refused = anyio.Event()

    async def call() -> None:
        try:
            await scoped.acompletion(messages=MESSAGES, **kwargs_for(provider, prefix, "local-10"))
        except ScopeCancelled:
            refused.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, RequestScope() as scope:
            scope.cancel("client_disconnected")
            tg.start_soon(call)  # outside the body: it reaches the transport and is refused there
            with scope.shield():
                await refused.wait()
    assert provider.requests == []
    assert [(c.provider, c.outcome) for c in scope.report.calls] == [(RECORDED[prefix], "refused")]  # type: ignore[union-attr]


@pytest.mark.parametrize("prefix", list(BASES))
async def test_completed_calls_name_the_provider_and_model(
    provider: LocalProvider, on_asyncio: None, prefix: str
) -> None:
    provider.token_interval = 0.0
    async with RequestScope() as scope:
        response = await scoped.acompletion(messages=MESSAGES, max_tokens=4, **kwargs_for(provider, prefix, "local-10"))
        stream = await scoped.acompletion(
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **kwargs_for(provider, prefix, "local-3"),
        )
        chunks = [chunk async for chunk in stream]
    assert response.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    plain, streamed = scope.report.calls  # type: ignore[union-attr]
    assert [(c.provider, c.model, c.outcome) for c in (plain, streamed)] == [
        (RECORDED[prefix], "local-10", "completed"),
        (RECORDED[prefix], "local-3", "completed"),
    ]
    assert len(provider.requests) == 2
    if prefix in METERED:
        assert (plain.tokens_out, plain.tokens_out_source) == (4, "provider")


async def test_concurrent_calls_each_own_their_scope(provider: LocalProvider, on_asyncio: None) -> None:
    """Two scoped cohere/ calls at once (the cache seam is installed once, removed after the last): the
    cancelled one stops at the provider, the other completes; neither borrows the other's handler."""
    kwargs = kwargs_for(provider, "cohere", "local-1000")
    done = anyio.Event()
    raised: list[BaseException] = []

    async def long_call() -> None:  # a task outside the scope's body: it gets ScopeCancelled
        try:
            await scoped.acompletion(messages=MESSAGES, **kwargs)
        except ScopeCancelled as exc:
            raised.append(exc)

    async def kept() -> None:
        async with RequestScope() as scope:
            await scoped.acompletion(messages=MESSAGES, max_tokens=30, **kwargs_for(provider, "cohere", "local-30"))
        assert [(c.model, c.outcome) for c in scope.report.calls] == [("local-30", "completed")]  # type: ignore[union-attr]
        done.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kept)
            async with RequestScope() as cancelled:
                tg.start_soon(long_call)
                logs = await anyio.to_thread.run_sync(provider.wait_for_requests, 2)
                (long,) = [log for log in logs if log.body and b"local-1000" in log.body]
                await anyio.to_thread.run_sync(long.wait_units, 3)
                t_cancel = time.monotonic()
                cancelled.cancel("client_disconnected")
            await anyio.to_thread.run_sync(long.wait_disconnect)  # the abort runs on this loop: do not block it
            await done.wait()
    assert long.units_after(t_cancel) <= 1 and len(raised) == 1
    assert len(provider.requests) == 2
    assert [(c.model, c.outcome) for c in cancelled.report.calls] == [("local-1000", "aborted")]  # type: ignore[union-attr]


async def test_outside_a_scope_it_is_litellms_call(provider: LocalProvider, anyio_backend: Any) -> None:
    """LiteLLM's own call, its own clients (cached, on its aiohttp transport: nothing of ours)."""
    if anyio_backend == "trio":
        pytest.skip(TRIO)
    provider.token_interval = 0.0
    response = await scoped.acompletion(
        messages=MESSAGES, max_tokens=2, **kwargs_for(provider, "anthropic", "local-10")
    )
    assert response.choices[0].message.content == "tok0 tok1 "
    assert scoped.acompletion.__wrapped__ is litellm.acompletion
    assert len(provider.requests) == 1
    await scoped.close_litellm_async_clients()


async def test_embeddings_and_rerank_are_scoped(provider: LocalProvider, on_asyncio: None) -> None:
    async with RequestScope() as scope:
        for model, base in (("mistral/local-embed", "/mistral/v1"), ("cohere/local-embed", "/v2/embed")):
            embedded = await scoped.aembedding(model=model, input=["a", "b"], api_base=provider.url + base, api_key="t")
            assert len(embedded.data) == 2
        embedded = await scoped.aembedding(
            model="gemini/local-embed", input=["a"], api_base=provider.url + "/v1beta", api_key="t"
        )
        assert len(embedded.data) == 1
        ranked = await scoped.arerank(
            model="cohere/rerank-v3.5", query="q", documents=["a", "b"], api_base=provider.url, api_key="t"
        )
        assert len(ranked.results) == 2
    records = [(c.provider, c.model, c.outcome) for c in scope.report.calls]  # type: ignore[union-attr]
    assert records == [
        (RECORDED["mistral"], "local-embed", "completed"),
        ("cohere", "local-embed", "completed"),
        (RECORDED["gemini"], "local-embed", "completed"),
        ("cohere", "rerank-v3.5", "completed"),
    ]


async def test_paths_out_of_reach_are_refused_inside_a_scope(
    provider: LocalProvider, on_asyncio: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with RequestScope():
        with pytest.raises(UnsupportedError, match="aiohttp_openai/"):
            await scoped.acompletion(messages=MESSAGES, model="aiohttp_openai/local-10", api_base=provider.url)
        with pytest.raises(UnsupportedError, match="client="):
            from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

            await scoped.acompletion(messages=MESSAGES, client=AsyncHTTPHandler(), **kwargs_for(provider, "groq", "x"))
        monkeypatch.setenv("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")
        with pytest.raises(UnsupportedError, match="EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"):
            await scoped.acompletion(messages=MESSAGES, **kwargs_for(provider, "openai", "local-10"))
    assert provider.requests == []


async def test_trio_is_refused_with_a_clear_error(provider: LocalProvider, anyio_backend: Any) -> None:
    if anyio_backend != "trio":
        pytest.skip("the Trio case")
    with pytest.raises(UnsupportedError, match="asyncio only"):
        await scoped.acompletion(messages=MESSAGES, **kwargs_for(provider, "openai", "local-10"))
    assert provider.requests == []


# ------------------------------------------------------------------ sync


@pytest.fixture
def sync_unchanged(unchanged: None) -> Iterator[None]:
    yield
    from scoped_clients._vendors.litellm import close_sync_clients

    close_sync_clients()


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("prefix", list(BASES))
def test_sync_cancel_from_another_thread(
    provider: LocalProvider, sync_unchanged: None, prefix: str, streamed: bool
) -> None:
    kwargs = kwargs_for(provider, prefix, "local-1000")

    def call() -> None:
        if streamed:
            for _ in scoped.completion(messages=MESSAGES, stream=True, num_retries=2, **kwargs):
                pass
        else:
            scoped.completion(messages=MESSAGES, num_retries=2, **kwargs)

    result = cancel_sync_call(provider, call, units=3)
    assert not result.thread_alive
    assert result.log.units_after(result.t_cancel) <= 1
    assert len(result.errors) == 1
    time.sleep(0.2)  # room for a re-send, were there one
    assert len(provider.requests) == 1
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    assert (record.provider, record.model, record.outcome) == (RECORDED[prefix], "local-1000", "aborted")
    with RequestScope() as later:  # a call after the cancel is refused
        later.cancel("client_disconnected")
        with pytest.raises(ScopeCancelled):
            scoped.completion(messages=MESSAGES, **kwargs)
    assert len(provider.requests) == 1
    assert [c.outcome for c in later.report.calls] == ["refused"]  # type: ignore[union-attr]


@pytest.mark.parametrize("prefix", list(BASES))
def test_sync_completed_call(provider: LocalProvider, sync_unchanged: None, prefix: str) -> None:
    provider.token_interval = 0.0
    with RequestScope() as scope:
        response = scoped.completion(messages=MESSAGES, max_tokens=4, **kwargs_for(provider, prefix, "local-10"))
        chunks = list(scoped.completion(messages=MESSAGES, stream=True, **kwargs_for(provider, prefix, "local-3")))
    assert response.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    assert [(c.provider, c.outcome) for c in scope.report.calls] == [(RECORDED[prefix], "completed")] * 2  # type: ignore[union-attr]


def test_a_failed_call_leaves_num_retries_as_it_was(provider: LocalProvider) -> None:
    litellm.num_retries = 0  # LiteLLM's sync completion sets it to None after any failed call
    cache = litellm.in_memory_llm_clients_cache
    keys = set(cache.cache_dict)
    try:
        before = global_state()
        with RequestScope(), pytest.raises(litellm.BadRequestError):
            scoped.completion(messages=MESSAGES, **kwargs_for(provider, "groq", "error-400"))
        assert global_state() == before
        assert litellm.num_retries == 0
        with pytest.raises(litellm.BadRequestError):  # LiteLLM's own call, outside a scope
            scoped.completion(messages=MESSAGES, **kwargs_for(provider, "groq", "error-400"))
        assert litellm.num_retries is None
    finally:
        litellm.num_retries = None
        for key in set(cache.cache_dict) - keys:  # the handler LiteLLM's own call cached
            cache.cache_dict.pop(key).close()
        from scoped_clients._vendors.litellm import close_sync_clients

        close_sync_clients()


def test_sync_embeddings_and_rerank_are_scoped(provider: LocalProvider, sync_unchanged: None) -> None:
    with RequestScope() as scope:
        embedded = scoped.embedding(
            model="mistral/local-embed", input=["a", "b"], api_base=provider.url + "/mistral/v1", api_key="t"
        )
        ranked = scoped.rerank(
            model="cohere/rerank-v3.5", query="q", documents=["a", "b"], api_base=provider.url, api_key="t"
        )
    assert len(embedded.data) == 2 and len(ranked.results) == 2
    records = [(c.provider, c.model, c.outcome) for c in scope.report.calls]  # type: ignore[union-attr]
    assert records == [(RECORDED["mistral"], "local-embed", "completed"), ("cohere", "rerank-v3.5", "completed")]
