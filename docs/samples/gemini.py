"""Gemini through google-genai: the stream of a user who left stops at the provider (sync and ``client.aio``)."""

from __future__ import annotations

# --8<-- [start:gemini]
from collections.abc import AsyncIterator

from google.genai import types

from scoped_clients.google_genai import Client  # was: from google.genai import Client

# GEMINI_API_KEY (or GOOGLE_API_KEY) as with the vendor's class; type(gemini) is google.genai.Client.
# client.aio runs on google-genai's own httpx2 client, scoped (never aiohttp), on asyncio and Trio.
gemini = Client()


async def tell(question: str) -> AsyncIterator[str]:
    stream = await gemini.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents=question, config=types.GenerateContentConfig(max_output_tokens=400)
    )
    async for chunk in stream:  # the scope cancelled between two chunks still closes the socket
        yield chunk.text or ""


def summarize(text: str) -> str:  # sync code: a cancel from another thread unblocks the read
    return gemini.models.generate_content(model="gemini-2.5-flash", contents=f"Summarize: {text}").text or ""


# --8<-- [end:gemini]


def check(provider: object) -> None:
    import time

    import anyio
    from _harness import assert_stopped

    from scoped_clients import RequestScope

    async def main() -> None:
        async with RequestScope(name="gemini") as scope:
            n = 0
            async for _ in tell("tell me a story"):
                n += 1
                if n == 3:  # the user closes the tab (ScopeMiddleware cancels the scope)
                    t_cancel = time.monotonic()
                    scope.cancel("client_disconnected")
        (log,) = provider.requests  # type: ignore[attr-defined]
        assert_stopped(log, t_cancel)
        (record,) = scope.report.calls  # type: ignore[union-attr]
        assert (record.provider, record.outcome, record.tokens_out) == ("gcp.gemini", "aborted", 3)
        with RequestScope() as sync_scope:
            summarize("a short text")
        assert [c.outcome for c in sync_scope.report.calls] == ["completed"]  # type: ignore[union-attr]

    anyio.run(main)
    anyio.run(gemini.aio.aclose)
    gemini.close()
