"""Each async generator that ``pyproject.toml`` lets trio report unclosed is reported by the RAW vendor
SDK too, in the same use: nothing of ours is involved here.

trio warns (``ResourceWarning``, made an error by our ``filterwarnings``) when an async generator is
garbage collected before it was exhausted; asyncio and uvloop finalize such generators silently. The
SDKs leave their own generators suspended when a stream ends: openai's ``AsyncStream`` stops reading
at the ``[DONE]`` event and closes the response under
``_iter_events`` -> ``SSEDecoder.aiter_bytes`` -> httpx2's ``Response.aiter_bytes``; and httpx2 2.17
(httpcore2 2.17) no longer closes httpcore2's ``HTTP11ConnectionByteStream.__aiter__`` when the
response stream above it is closed early (2.16.2 did, through ``PoolByteStream``'s own generator).

(anthropic's stream reads its body to the end and leaves nothing.) The ignore list names exactly
these generators. The MCP tests' own filter (``tests/_mcp.py``: httpx2's SSE reader, which the MCP SDK
leaves on streamable HTTP 2025-11-25) is shown here on the raw MCP SDK too. When a vendor release
stops leaking one, its test here fails: drop that name from ``filterwarnings`` (or ``TRIO_FILTER``) then.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import httpx2
import openai
import pytest

from _collector import block_collected
from scoped_clients.provider import LocalProvider

#: the generators the ``filterwarnings`` entry names that the raw openai SDK leaves, as trio names them
#: (module and qualified name): openai 3.x on httpx2 (the lock), openai 2.x on httpx (scripts/compat.py)
IGNORED = (
    [
        "openai._streaming.AsyncStream._iter_events",
        "openai._streaming.SSEDecoder.aiter_bytes",
        "httpx2._models.Response.aiter_bytes",
        "httpcore2._async.http11.HTTP11ConnectionByteStream.__aiter__",
    ]
    if int(openai.__version__.split(".")[0]) >= 3
    else [
        "openai._streaming.AsyncStream._iter_events",
        "openai._streaming.SSEDecoder.aiter_bytes",
        "openai._streaming.SSEDecoder._aiter_chunks",
        "httpx._models.Response.aiter_bytes",
        "httpx._models.Response.aiter_raw",
        "httpx._client.BoundAsyncStream.__aiter__",
    ]
)
#: what httpx2 and httpx (httpcore 1.x: Cohere, Qdrant, openai 2.x) leave of their own when a response
#: read partly is closed (httpx2's HTTP11ConnectionByteStream generator since 2.17; before, PoolByteStream's)
CLOSED_EARLY = {
    "httpx2": {"httpcore2._async.http11.HTTP11ConnectionByteStream.__aiter__"},
    "httpx": {
        "httpcore._async.connection_pool.PoolByteStream.__aiter__",
        "httpcore._async.http11.AsyncHTTP11Connection._receive_response_body",
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the only backend that reports them


@contextlib.asynccontextmanager
async def unexhausted() -> AsyncIterator[list[str]]:
    """The names of the async generators trio reports as collected unexhausted in the block (trio
    finalizes a generator in its own context, a few checkpoints after the collector found it)."""
    names: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with block_collected(lambda: len(caught)):
            yield names
    names += [str(w.message).split("'")[1] for w in caught if "garbage collected" in str(w.message)]


@pytest.mark.anyio
@pytest.mark.parametrize("generator", IGNORED)
async def test_the_raw_sdk_leaves_it_suspended(provider: LocalProvider, generator: str) -> None:
    async with unexhausted() as names, openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="k") as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        del stream
    assert text  # read to its end, as a caller who did nothing wrong
    assert generator in names, f"the raw SDK no longer leaves {generator} suspended: unignore it"


@pytest.mark.anyio
@pytest.mark.parametrize("library", ["httpx2", "httpx"])
async def test_raw_http_library_closed_early_leaves_its_generators(provider: LocalProvider, library: str) -> None:
    """The HTTP library alone, used as its docs say (``aclosing`` the iterator, the response closed by
    its context manager): a body left after its first chunk still leaves these to the collector."""
    module = importlib.import_module(library)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True}
    async with (
        unexhausted() as names,
        module.AsyncClient() as client,
        client.stream("POST", provider.url + "/v1/chat/completions", json=body) as response,
        contextlib.aclosing(response.aiter_raw()) as chunks,
    ):
        async for _ in chunks:
            break
    leaked = CLOSED_EARLY[library]
    if library == "httpx2" and tuple(map(int, httpx2.__version__.split(".")[:2])) < (2, 17):
        leaked = {"httpcore2._async.connection_pool.PoolByteStream.__aiter__"}
    assert leaked <= set(names), names


@pytest.mark.anyio
async def test_raw_httpx_cancelled_mid_upload_leaves_its_request_body_generator() -> None:
    """httpx 0.28 on httpcore 1.x (Cohere, Qdrant, openai 2.x): a request cancelled while its body is being
    sent leaves httpx's ``ByteStream.__aiter__`` suspended: httpcore's ``_send_request_body`` iterates the
    request stream with ``async for`` and never closes it when a send is cancelled (httpx2 2.17 does not).
    The fuzz test's clients on httpx meet it when a cancel lands mid-upload (a 5,000-case trio run did)."""
    import httpx

    accepted = anyio.Event()
    peers: list[anyio.abc.SocketStream] = []

    async def hold(peer: anyio.abc.SocketStream) -> None:  # accepts, never reads: the upload fills the buffers
        peers.append(peer)
        accepted.set()
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        async with unexhausted() as names:
            async with httpx.AsyncClient() as client:
                with anyio.CancelScope() as upload:

                    async def cancel_once_stuck() -> None:
                        await accepted.wait()
                        await anyio.wait_all_tasks_blocked()  # the client is blocked sending its body
                        upload.cancel()

                    tg.start_soon(cancel_once_stuck)
                    await client.post(f"http://127.0.0.1:{port}/", content=b"x" * 32_000_000)
            assert upload.cancelled_caught
        tg.cancel_scope.cancel()
    for peer in peers:
        await peer.aclose()
    assert "httpx._content.ByteStream.__aiter__" in names, names


# -- the MCP SDK, raw, against its own server (tests/_mcp_server.py in its own process)


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    pytest.importorskip("mcp")
    from _mcp import serve_http

    with serve_http() as url:
        yield url


def _mcp_trio_left() -> tuple[str, ...]:
    try:
        from _mcp import TRIO_LEFT
    except ImportError:  # no mcp: the test is skipped by its fixture
        return ("mcp not installed",)
    return TRIO_LEFT


@pytest.mark.anyio
@pytest.mark.parametrize("generator", _mcp_trio_left())
async def test_the_raw_mcp_sdk_leaves_its_sse_reader_suspended(mcp_url: str, generator: str, tmp_path: Path) -> None:
    """tests/_mcp.py's ``TRIO_FILTER`` (the MCP tests' own, module-level): the vendor's ``mcp.Client`` on
    streamable HTTP 2025-11-25, one tool call read to its end and the session closed by its context
    manager, as the SDK's docs say: trio still finds httpx2's SSE reader of the session's streams."""
    import mcp

    async with unexhausted() as names, mcp.Client(mcp_url, mode="legacy") as client:
        result = await client.call_tool("slow", {"seconds": 0, "tag": "raw", "log": str(tmp_path / "log")})
    assert not result.is_error
    assert generator in names, f"the raw MCP SDK no longer leaves {generator} suspended: drop it from TRIO_FILTER"


# -- the SDKs of issue 21, raw (tests/test_provider_wire.py drives them against the provider)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # google-genai's aiohttp path is asyncio-only
async def test_google_genai_subclasses_aiohttps_session(provider: LocalProvider, anyio_backend: str) -> None:
    genai = pytest.importorskip("google.genai")
    pytest.importorskip("aiohttp")
    client = genai.Client(api_key="k", http_options=genai.types.HttpOptions(base_url=provider.url))
    try:
        with pytest.warns(DeprecationWarning, match="Inheritance class AiohttpClientSession from ClientSession"):
            await client.aio.models.generate_content(model="local-2", contents="hi")
    finally:
        await client.aio.aclose()


def test_litellm_builds_adapters_over_readonly_typeddicts() -> None:
    """At import of its GitHub Copilot authenticator (a module-level ``TypeAdapter``), which its
    completion path imports on first use: the module is run again here."""
    pytest.importorskip("litellm")
    from litellm.llms.github_copilot import authenticator

    with pytest.warns(UserWarning, match="using the `ReadOnly` qualifier"):
        importlib.reload(authenticator)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # LiteLLM's async path needs an asyncio loop
async def test_litellm_reads_model_fields_off_an_instance(provider: LocalProvider, anyio_backend: str) -> None:
    litellm = pytest.importorskip("litellm")
    client = openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="k")  # no cached client of LiteLLM's
    try:
        with pytest.warns(
            DeprecationWarning, match="Accessing the 'model_(computed_)?fields' attribute on the instance"
        ):
            stream = await litellm.acompletion(
                model="openai/local-3", messages=[{"role": "user", "content": "hi"}], stream=True, client=client
            )
            async for _ in stream:
                pass
    finally:
        await client.close()
