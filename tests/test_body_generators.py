"""Every async generator the library opens is closed by the library, never left to the garbage collector:
when the reader stops early, when the scope cancels the body mid-read, and at the end of a body; on
both HTTP libraries and every backend (asyncio and uvloop finalize such a generator silently, trio
warns: this records what each loop's finalizer hook is handed, so all three are checked alike).

What the HTTP libraries themselves leave to the collector, with or without us, is shown on the raw
library in ``test_vendor_warnings.py`` (httpx2 2.17 leaves httpcore2's
``HTTP11ConnectionByteStream.__aiter__``); here, with our transport in between, nothing more may be
left than that, and with httpx2 not even that: our body reads that generator itself and closes it.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import AsyncIterator
from types import AsyncGeneratorType
from typing import Any

import anyio
import pytest

from _collector import block_collected
from scoped_clients import RequestScope
from scoped_clients.provider import LocalProvider

#: what httpx2 2.17 leaves to the collector by itself (test_vendor_warnings shows it on the raw library)
THEIRS = {"httpcore2._async.http11.HTTP11ConnectionByteStream.__aiter__"}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "stream": True}


@contextlib.asynccontextmanager
async def left_to_the_collector() -> AsyncIterator[list[str]]:
    """The names of the async generators first iterated in the block that the loop's finalizer hook
    is handed (collected unexhausted) by the time the block has settled."""
    names: list[str] = []
    hooks = sys.get_asyncgen_hooks()
    loop_finalizer = hooks.finalizer

    def finalizer(agen: AsyncGeneratorType[Any, Any]) -> None:
        frame = agen.ag_frame
        module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
        names.append(f"{module}.{agen.__qualname__}")
        if loop_finalizer is not None:
            loop_finalizer(agen)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # trio's word on each: recorded here instead
            async with block_collected(lambda: len(names), at_least=10):
                yield names
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=loop_finalizer)


def clients(library: str) -> tuple[Any, Any]:
    """(the scoped AsyncClient class, the raw library's) for ``httpx`` or ``httpx2``."""
    if library == "httpx":
        import httpx

        from scoped_clients.httpx import AsyncClient

        return AsyncClient, httpx.AsyncClient
    import httpx2

    from scoped_clients.httpx2 import AsyncClient as AsyncClient2

    return AsyncClient2, httpx2.AsyncClient


async def read(
    client: Any, url: str, *, stop_after: int | None, scope: RequestScope | anyio.CancelScope | None = None
) -> list[bytes]:
    """Stream the provider's chat, reading ``stop_after`` chunks (all when None) through ``aclosing``;
    with ``scope``, cancel it after that many chunks instead of stopping. The chunks read, in a list
    that the caller holds (a cancel ends the call without a return value)."""
    seen: list[bytes] = []
    async with (
        client.stream("POST", url + "/v1/chat/completions", json=BODY) as response,
        contextlib.aclosing(response.aiter_raw()) as chunks,
    ):
        async for chunk in chunks:
            seen.append(chunk)
            if stop_after is not None and len(seen) >= stop_after:
                if scope is None:
                    break
                scope.cancel() if isinstance(scope, anyio.CancelScope) else scope.cancel("client_disconnected")
    return seen


@pytest.mark.anyio
@pytest.mark.parametrize("library", ["httpx", "httpx2"])
@pytest.mark.parametrize("how", ["stopped_early", "read_to_the_end", "drained_again"])
async def test_the_reader_stops_or_finishes(provider: LocalProvider, library: str, how: str) -> None:
    scoped, raw = clients(library)
    if how == "drained_again":
        # openai after [DONE]: its iterator over the body stays suspended while it drains
        # ``response.stream`` in a second iteration, then closes the response
        async def use(client: Any) -> None:
            async with client.stream("POST", provider.url + "/v1/chat/completions", json=BODY) as response:
                first = response.aiter_raw()
                await first.__anext__()
                async for _ in response.stream:
                    pass
    else:

        async def use(client: Any) -> None:
            await read(client, provider.url, stop_after=2 if how == "stopped_early" else None)

    async with left_to_the_collector() as by_raw, raw() as client:
        await use(client)
    async with left_to_the_collector() as by_us, RequestScope(), scoped() as client:
        await use(client)
    assert set(by_us) <= set(by_raw) | THEIRS, f"left to the collector with us: {by_us}; raw: {by_raw}"
    assert not [name for name in by_us if name.startswith("scoped_clients")]
    if library == "httpx2":
        # Our body reads httpcore2's generator itself (not through httpx2's response stream) and closes
        # it when it is closed: what httpx2 2.17 leaves by itself is not left with us.
        assert not set(by_us) & THEIRS, by_us


@pytest.mark.anyio
@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_the_scope_cancels_the_body_mid_read(provider: LocalProvider, library: str) -> None:
    scoped, raw = clients(library)
    async with left_to_the_collector() as by_raw, raw() as client:
        with anyio.CancelScope() as cancel:  # the raw library's own cancel, for comparison
            await read(client, provider.url, stop_after=2, scope=cancel)
    provider.reset()
    async with left_to_the_collector() as by_us, scoped() as client, RequestScope() as scope:
        await read(client, provider.url, stop_after=2, scope=scope)
    assert scope.cancelled
    assert set(by_us) <= set(by_raw) | THEIRS, f"left to the collector with us: {by_us}; raw: {by_raw}"
    assert not [name for name in by_us if name.startswith("scoped_clients")]
    # the body was closed at the socket: the provider saw the disconnect and stopped
    (log,) = provider.requests
    log.wait_disconnect()
    assert scope.cancel_reason is not None
    assert log.units_after(scope.cancel_reason.time) <= 1
