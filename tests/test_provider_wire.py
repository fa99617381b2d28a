"""The embedded provider's Gemini, Groq and Mistral wire formats, driven by the RAW vendor SDKs
(google-genai, groq, mistralai) and by LiteLLM for six of its providers: answers parse in each
SDK, usage arrives, streams stream, tool calls and max tokens come through, and a raw client
that leaves mid-stream is seen leaving by the provider (asserted from its log).

Nothing here is scoped: these tests fix what the vendors do on their own, so that the drop-ins
built on them are measured against the same server.  Each SDK's tests skip, saying why, when it
is not installed; the async ones that an SDK can only run on asyncio skip on Trio, saying why.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest

from scoped_clients.provider import LocalProvider, Reply, RequestLog, ToolCall

pytestmark = pytest.mark.anyio

# LiteLLM fetches its model price map from GitHub at import unless told to use the bundled copy
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MESSAGES = [{"role": "user", "content": "tell me a long story"}]
WEATHER = ToolCall("get_weather", {"city": "Paris"})


def sdk(name: str) -> ModuleType:
    return pytest.importorskip(
        name, reason=f"{name} is not installed (it is in the dev extra: pip install -e '.[dev]')"
    )


def asyncio_only(anyio_backend: str, why: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip(why)


def seen_leaving(provider: LocalProvider, t_close: float) -> RequestLog:
    """The one request: the provider saw its client go, and produced at most one unit after ``t_close``."""
    (log,) = provider.requests
    log.wait_disconnect()
    assert log.units_after(t_close) <= 1
    return log


async def cancel_while_reading(provider: LocalProvider, read: Callable[[], Awaitable[object]]) -> float:
    """Run ``read`` and cancel it once the provider has produced 3 units (the reader is then waiting
    inside the SDK for the next one); returns when the cancel was made."""
    with anyio.CancelScope() as cancel:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.to_thread.run_sync(lambda: provider.wait_for_requests(1)[0].wait_units(3))
            t_close = time.monotonic()
            cancel.cancel()
    assert cancel.cancelled_caught
    return t_close


def units(provider: LocalProvider) -> int:
    (log,) = provider.requests
    log.wait_done()
    return len(log.units)


# ------------------------------------------------------------------------------------- gemini


@pytest.fixture
def genai_client(provider: LocalProvider) -> Iterator[Any]:
    genai = sdk("google.genai")
    client = genai.Client(api_key="test", http_options=genai.types.HttpOptions(base_url=provider.url))
    yield client
    client.close()


def test_gemini_generate_content(provider: LocalProvider, genai_client: Any) -> None:
    from google.genai import types

    provider.token_interval = 0.0
    config = types.GenerateContentConfig(max_output_tokens=4, system_instruction="be brief")
    response = genai_client.models.generate_content(model="local-10", contents="tell me a story", config=config)
    assert response.text == "tok0 tok1 tok2 tok3 "
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    usage = response.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (6, 4, 10)
    (log,) = provider.requests
    assert log.path == "/v1/models/local-10:generateContent"  # google-genai 3.x calls v1 by default
    assert len(log.units) == 4


def test_gemini_stream_has_the_usage_in_its_last_chunk(provider: LocalProvider, genai_client: Any) -> None:
    from google.genai import types

    provider.token_interval = 0.0
    chunks = list(genai_client.models.generate_content_stream(model="local-3", contents="hi"))
    assert [c.text for c in chunks] == ["tok0 ", "tok1 ", "tok2 ", ""]
    assert [c.usage_metadata.candidates_token_count for c in chunks] == [None, None, None, 3]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert provider.requests[0].query == {"alt": "sse"}
    assert units(provider) == 3


@pytest.mark.parametrize("streamed", [False, True])
def test_gemini_function_calls(provider: LocalProvider, genai_client: Any, streamed: bool) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(text="Let me check.", tool_calls=[WEATHER]))
    if streamed:
        chunks = list(genai_client.models.generate_content_stream(model="agent", contents="weather?"))
        calls = [call for chunk in chunks for call in chunk.function_calls or []]
        text = "".join(part.text or "" for c in chunks for part in c.candidates[0].content.parts or [])
        usage = chunks[-1].usage_metadata
    else:
        response = genai_client.models.generate_content(model="agent", contents="weather?")
        calls, usage = response.function_calls, response.usage_metadata
        text = "".join(part.text or "" for part in response.candidates[0].content.parts)
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert text == "Let me check."
    pieces = len(WEATHER.pieces())
    assert usage.candidates_token_count == 3 + pieces == units(provider)


def test_gemini_chats_send_the_history(provider: LocalProvider, genai_client: Any) -> None:
    provider.token_interval = 0.0
    chat = genai_client.chats.create(model="local-2")
    assert chat.send_message("hello").text == "tok0 tok1 "
    assert "".join(chunk.text for chunk in chat.send_message_stream("again")) == "tok0 tok1 "
    contents = provider.requests[1].json["contents"]
    assert [(c["role"], c["parts"][0]["text"]) for c in contents] == [
        ("user", "hello"),
        ("model", "tok0 tok1 "),
        ("user", "again"),
    ]


def test_gemini_count_tokens_and_embeddings(provider: LocalProvider, genai_client: Any) -> None:
    from google.genai import types

    assert genai_client.models.count_tokens(model="local", contents="one two three").total_tokens == 3
    config = types.EmbedContentConfig(output_dimensionality=40)
    embedded = genai_client.models.embed_content(model="embedder", contents=["a", "b"], config=config)
    assert [len(e.values) for e in embedded.embeddings] == [40, 40]
    assert embedded.embeddings[0].values != embedded.embeddings[1].values
    assert [log.path for log in provider.requests] == [
        "/v1/models/local:countTokens",
        "/v1/models/embedder:batchEmbedContents",
    ]


def test_gemini_errors_are_the_services(provider: LocalProvider, genai_client: Any) -> None:
    from google.genai import errors

    with pytest.raises(errors.ClientError) as caught:
        genai_client.models.generate_content(model="error-429", contents="hi")
    assert (caught.value.code, caught.value.status) == (429, "RESOURCE_EXHAUSTED")


def test_gemini_sync_stream_closed_midway_is_seen(provider: LocalProvider, genai_client: Any) -> None:
    stream = genai_client.models.generate_content_stream(model="local-1000", contents="hi")
    for _ in zip(range(3), stream, strict=False):
        pass
    t_close = time.monotonic()
    stream.close()
    seen_leaving(provider, t_close)


@pytest.fixture(params=["httpx2", "aiohttp"])
async def genai_aio(request: pytest.FixtureRequest, provider: LocalProvider, anyio_backend: str) -> AsyncIterator[Any]:
    """``client.aio`` on an injected httpx2 client, and on the aiohttp session google-genai picks by
    itself whenever aiohttp imports (asyncio only: it calls ``asyncio.get_running_loop()``)."""
    genai = sdk("google.genai")
    options: dict[str, Any] = {"base_url": provider.url}
    if request.param == "httpx2":
        import httpx2

        options["httpx_async_client"] = httpx2.AsyncClient()
    else:
        sdk("aiohttp")
        asyncio_only(anyio_backend, "google-genai's aiohttp path runs on asyncio only")
    client = genai.Client(api_key="test", http_options=genai.types.HttpOptions(**options))
    yield client.aio
    await client.aio.aclose()
    if "httpx_async_client" in options:
        await options["httpx_async_client"].aclose()


async def test_gemini_async(provider: LocalProvider, genai_aio: Any) -> None:
    provider.token_interval = 0.0
    response = await genai_aio.models.generate_content(model="local-5", contents="hi")
    assert response.usage_metadata.candidates_token_count == 5
    chunks = [chunk async for chunk in await genai_aio.models.generate_content_stream(model="local-3", contents="hi")]
    assert "".join(c.text for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].usage_metadata.candidates_token_count == 3


async def test_gemini_async_cancelled_stream_is_seen(provider: LocalProvider, genai_aio: Any) -> None:
    """Cancelled while it waits inside the SDK for the next chunk, the stream closes its response."""

    async def read() -> None:
        async for _ in await genai_aio.models.generate_content_stream(model="local-1000", contents="hi"):
            pass

    seen_leaving(provider, await cancel_while_reading(provider, read))


# on Trio the generators it leaves suspended are reported when collected: the same bug, seen by trio
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object (AsyncModels|BaseApiClient)[.]"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_gemini_async_stream_aclose_leaves_the_upstream_generating(
    provider: LocalProvider, anyio_backend: str
) -> None:
    """googleapis/python-genai#2425: ``aclose()`` on the async stream after a ``break`` does not
    close the response (its inner iterator stays suspended): the service keeps generating until the
    client's connections close.  A drop-in must close the response itself."""
    genai = sdk("google.genai")
    import httpx2

    http = httpx2.AsyncClient()
    client = genai.Client(
        api_key="test", http_options=genai.types.HttpOptions(base_url=provider.url, httpx_async_client=http)
    )
    stream = await client.aio.models.generate_content_stream(model="local-1000", contents="hi")
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    await stream.aclose()
    (log,) = provider.requests
    produced = len(log.units)
    log.wait_units(produced + 5)  # still generating for nobody
    assert log.disconnected_at is None
    t_close = time.monotonic()
    await http.aclose()  # closing the connection pool is what stops it
    seen_leaving(provider, t_close)


# --------------------------------------------------------------------------------------- groq


@pytest.fixture
def groq_client(provider: LocalProvider) -> Iterator[Any]:
    groq = sdk("groq")
    client = groq.Groq(api_key="test", base_url=provider.url)
    yield client
    client.close()


def test_groq_chat(provider: LocalProvider, groq_client: Any) -> None:
    provider.token_interval = 0.0
    completion = groq_client.chat.completions.create(model="local-10", messages=MESSAGES, max_tokens=4)
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert completion.x_groq.id
    assert provider.requests[0].path == "/openai/v1/chat/completions"


def test_groq_stream_has_the_usage_in_x_groq(provider: LocalProvider, groq_client: Any) -> None:
    provider.token_interval = 0.0
    chunks = list(groq_client.chat.completions.create(model="local-3", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 "
    with_usage = [c for c in chunks if c.x_groq is not None and c.x_groq.usage is not None]
    assert [c.choices[0].finish_reason for c in with_usage] == ["stop"]
    assert with_usage[0].x_groq.usage.completion_tokens == 3
    assert chunks[0].x_groq.id == chunks[-1].x_groq.id  # the request id in the first and the last chunk


@pytest.mark.parametrize("streamed", [False, True])
def test_groq_tool_calls(provider: LocalProvider, groq_client: Any, streamed: bool) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(tool_calls=[WEATHER]))
    if streamed:
        chunks = list(groq_client.chat.completions.create(model="agent", messages=MESSAGES, stream=True))
        deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
        assert len(deltas) == 1  # Groq sends a call whole
        (call,) = deltas
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        completion = groq_client.chat.completions.create(model="agent", messages=MESSAGES)
        (call,) = completion.choices[0].message.tool_calls
        finish = [completion.choices[0].finish_reason]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert finish == ["tool_calls"]
    assert units(provider) == len(WEATHER.pieces())


def test_groq_errors_are_openai_shaped(provider: LocalProvider) -> None:
    groq = sdk("groq")
    with (
        groq.Groq(api_key="test", base_url=provider.url, max_retries=0) as client,
        pytest.raises(groq.RateLimitError) as caught,
    ):
        client.chat.completions.create(model="error-429", messages=MESSAGES)
    assert caught.value.status_code == 429 and "local provider error 429" in str(caught.value)


def test_groq_sync_stream_closed_midway_is_seen(provider: LocalProvider, groq_client: Any) -> None:
    stream = groq_client.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)
    for _ in zip(range(3), stream, strict=False):
        pass
    t_close = time.monotonic()
    stream.close()
    seen_leaving(provider, t_close)


async def test_groq_async(provider: LocalProvider) -> None:
    groq = sdk("groq")
    async with groq.AsyncGroq(api_key="test", base_url=provider.url) as client:
        completion = await client.chat.completions.create(model="local-5", messages=MESSAGES)
        assert completion.usage.completion_tokens == 5
        provider.reset()
        stream = await client.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)
        n = 0
        # groq's AsyncStream.__aiter__ is an async generator: closed here, not left to trio's collector
        async with contextlib.aclosing(aiter(stream)) as chunks:
            async for _ in chunks:
                n += 1
                if n == 3:
                    break
        t_close = time.monotonic()
        await stream.close()
        seen_leaving(provider, t_close)


# ------------------------------------------------------------------------------------ mistral


@pytest.fixture
def mistral_client(provider: LocalProvider) -> Iterator[Any]:
    sdk("mistralai")
    from mistralai.client import Mistral

    with Mistral(api_key="test", server_url=provider.url + "/mistral") as client:
        yield client


def test_mistral_chat(provider: LocalProvider, mistral_client: Any) -> None:
    provider.token_interval = 0.0
    completion = mistral_client.chat.complete(model="local-10", messages=MESSAGES, max_tokens=4)
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert provider.requests[0].path == "/mistral/v1/chat/completions"


def test_mistral_stream_has_the_usage_in_its_last_chunk(provider: LocalProvider, mistral_client: Any) -> None:
    provider.token_interval = 0.0
    events = list(mistral_client.chat.stream(model="local-3", messages=MESSAGES))
    assert "".join(e.data.choices[0].delta.content or "" for e in events) == "tok0 tok1 tok2 "
    assert [e.data.usage.completion_tokens for e in events if e.data.usage] == [3]
    assert events[-1].data.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("streamed", [False, True])
def test_mistral_tool_calls(provider: LocalProvider, mistral_client: Any, streamed: bool) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(tool_calls=[WEATHER]))
    if streamed:
        events = list(mistral_client.chat.stream(model="agent", messages=MESSAGES))
        calls = [call for e in events for call in e.data.choices[0].delta.tool_calls or []]
        finish = events[-1].data.choices[0].finish_reason
        usage = events[-1].data.usage
    else:
        completion = mistral_client.chat.complete(model="agent", messages=MESSAGES)
        calls, finish, usage = completion.choices[0].message.tool_calls, completion.choices[0].finish_reason, None
    (call,) = calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert len(call.id) == 9 and call.id.isalnum()
    assert finish == "tool_calls"
    assert units(provider) == len(WEATHER.pieces())
    assert usage is None or usage.completion_tokens == len(WEATHER.pieces())


def test_mistral_embeddings(provider: LocalProvider, mistral_client: Any) -> None:
    embedded = mistral_client.embeddings.create(model="mistral-embed", inputs=["one two", "three"])
    assert [d.index for d in embedded.data] == [0, 1]
    assert embedded.usage.prompt_tokens == 3


def test_mistral_errors(provider: LocalProvider, mistral_client: Any) -> None:
    from mistralai.client import errors

    with pytest.raises(errors.SDKError) as caught:
        mistral_client.chat.complete(model="error-429", messages=MESSAGES)
    assert caught.value.status_code == 429 and "local provider error 429" in caught.value.body


def test_mistral_sync_stream_closed_midway_is_seen(provider: LocalProvider, mistral_client: Any) -> None:
    stream = mistral_client.chat.stream(model="local-1000", messages=MESSAGES)
    for _ in zip(range(3), stream, strict=False):
        pass
    t_close = time.monotonic()
    stream.close()
    seen_leaving(provider, t_close)


async def test_mistral_async(provider: LocalProvider, anyio_backend: str) -> None:
    sdk("mistralai")
    asyncio_only(anyio_backend, "mistralai's async methods run their hooks in asyncio.to_thread: asyncio only")
    from mistralai.client import Mistral

    async with Mistral(api_key="test", server_url=provider.url + "/mistral") as client:
        completion = await client.chat.complete_async(model="local-5", messages=MESSAGES)
        assert completion.usage.completion_tokens == 5
        provider.reset()
        stream = await client.chat.stream_async(model="local-1000", messages=MESSAGES)
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                break
        t_close = time.monotonic()
        await stream.close()
        seen_leaving(provider, t_close)


# ------------------------------------------------------------------------------------ litellm

#: LiteLLM provider prefix -> the api_base that points it at the embedded provider
LITELLM_BASES = {
    "openai": "/v1",
    "anthropic": "",
    "gemini": "/v1beta",
    "cohere": "/v2/chat",
    "groq": "/openai/v1",
    "mistral": "/mistral/v1",
}
LITELLM_PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/local-10:generateContent",
    "cohere": "/v2/chat",
    "groq": "/openai/v1/chat/completions",
    "mistral": "/mistral/v1/chat/completions",
}
LITELLM_ASYNCIO_ONLY = "LiteLLM's async path needs an asyncio loop (asyncio.get_event_loop())"


def litellm_kwargs(provider: LocalProvider, prefix: str, model: str) -> dict[str, Any]:
    return {"model": f"{prefix}/{model}", "api_base": provider.url + LITELLM_BASES[prefix], "api_key": "test"}


@pytest.fixture
def litellm_sync() -> Iterator[ModuleType]:
    """LiteLLM, whose clients are cached module-wide for an hour: afterwards its sync clients are closed
    and its cache emptied, so that no connection to the session's provider outlives the test."""
    module = sdk("litellm")
    yield module
    import openai
    from litellm.llms.custom_httpx.http_handler import HTTPHandler

    cache = module.in_memory_llm_clients_cache
    for client in [*cache.cache_dict.values(), vars(module).pop("module_level_client", None)]:
        if isinstance(client, HTTPHandler | openai.OpenAI):
            client.close()
    cache.flush_cache()


@pytest.fixture
async def litellm(litellm_sync: ModuleType, anyio_backend: str) -> AsyncIterator[ModuleType]:
    yield litellm_sync
    if anyio_backend == "asyncio":
        await close_litellm_async_clients(litellm_sync)


async def close_litellm_async_clients(litellm: ModuleType) -> None:
    """Its cached async clients and aiohttp sessions, and the process-wide ``module_level_aclient``
    (created once, on first use, by ``anthropic/`` streams without a client; then re-created lazily)."""
    await litellm.close_litellm_async_clients()
    module_level = vars(litellm).pop("module_level_aclient", None)
    if module_level is not None:
        await module_level.close()


@pytest.mark.parametrize("prefix", list(LITELLM_BASES))
async def test_litellm_acompletion(provider: LocalProvider, litellm: Any, prefix: str, anyio_backend: str) -> None:
    asyncio_only(anyio_backend, LITELLM_ASYNCIO_ONLY)
    provider.token_interval = 0.0
    response = await litellm.acompletion(
        messages=MESSAGES, max_tokens=4, **litellm_kwargs(provider, prefix, "local-10")
    )
    assert response.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 4
    assert [log.path for log in provider.requests] == [LITELLM_PATHS[prefix]]
    provider.reset()
    stream = await litellm.acompletion(
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        **litellm_kwargs(provider, prefix, "local-3"),
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    assert [c for c in chunks if getattr(c, "usage", None)], "no usage in the stream"
    assert units(provider) == 3


@pytest.mark.parametrize("prefix", list(LITELLM_BASES))
def test_litellm_completion_sync(provider: LocalProvider, litellm_sync: Any, prefix: str) -> None:
    litellm = litellm_sync
    provider.token_interval = 0.0
    response = litellm.completion(messages=MESSAGES, max_tokens=4, **litellm_kwargs(provider, prefix, "local-10"))
    assert response.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert response.usage.completion_tokens == 4
    provider.reset()
    provider.token_interval = 0.01
    stream = litellm.completion(messages=MESSAGES, stream=True, **litellm_kwargs(provider, prefix, "local-1000"))
    for _ in zip(range(3), stream, strict=False):
        pass
    t_close = time.monotonic()
    stream.close()
    seen_leaving(provider, t_close)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("prefix", list(LITELLM_BASES))
async def test_litellm_cancelled_call_is_seen(
    provider: LocalProvider, litellm: Any, prefix: str, streamed: bool, anyio_backend: str
) -> None:
    """Cancelling the task that awaits the call (or reads the stream) closes the connection, on
    LiteLLM's default aiohttp transport and through the openai SDK alike: one request, no re-send."""
    asyncio_only(anyio_backend, LITELLM_ASYNCIO_ONLY)
    kwargs = litellm_kwargs(provider, prefix, "local-1000")

    async def read() -> None:
        if streamed:
            async for _ in await litellm.acompletion(messages=MESSAGES, stream=True, **kwargs):
                pass
        else:
            await litellm.acompletion(messages=MESSAGES, **kwargs)

    seen_leaving(provider, await cancel_while_reading(provider, read))


async def test_litellm_aclose_on_the_aiohttp_transport_leaves_the_upstream_generating(
    provider: LocalProvider, litellm: Any, anyio_backend: str
) -> None:
    """``CustomStreamWrapper.aclose()`` after a partial read does not close the connection on LiteLLM's
    default aiohttp transport (with ``disable_aiohttp_transport=True`` it does): the service keeps
    generating until LiteLLM's sessions close.  A drop-in must close what it opened."""
    asyncio_only(anyio_backend, LITELLM_ASYNCIO_ONLY)
    stream = await litellm.acompletion(
        messages=MESSAGES, stream=True, **litellm_kwargs(provider, "anthropic", "local-1000")
    )
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    await stream.aclose()
    (log,) = provider.requests
    log.wait_units(len(log.units) + 5)
    assert log.disconnected_at is None
    t_close = time.monotonic()
    await close_litellm_async_clients(litellm)
    seen_leaving(provider, t_close)
