"""Starlette: a streamed answer under ScopeMiddleware."""

from __future__ import annotations

# --8<-- [start:app]
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI

client = AsyncOpenAI()


async def chat(request: Request) -> StreamingResponse:
    question = request.query_params.get("q", "Hello")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], max_tokens=400, stream=True
    )

    async def tokens() -> AsyncIterator[str]:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return StreamingResponse(tokens(), media_type="text/plain")


# ScopeMiddleware first in the list: the outermost, so that nothing hides the client's disconnect
app = Starlette(routes=[Route("/chat", chat, methods=["POST"])], middleware=[Middleware(ScopeMiddleware)])
# --8<-- [end:app]


def check(provider: object) -> None:
    from _harness import assert_stopped, post_and_leave, reports

    from scoped_clients.testing import serve

    with reports() as seen, serve(app) as port:
        log, t_drop = post_and_leave(port, "/chat?q=why", provider)  # type: ignore[arg-type]
        assert_stopped(log, t_drop)
        report = seen.wait()
    assert report.cancel_reason == "client_disconnected"
    assert [c.outcome for c in report.calls] == ["aborted"]
