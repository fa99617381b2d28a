"""aiohttp: the adapter's middleware gives every request its scope."""

from __future__ import annotations

# --8<-- [start:app]
from aiohttp import web
from scoped_clients_aiohttp import scope_middleware

from scoped_clients.openai import AsyncOpenAI

client = AsyncOpenAI()


async def answer(request: web.Request) -> web.Response:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": request.query["q"]}], max_tokens=400
    )
    return web.json_response({"answer": completion.choices[0].message.content})


# aiohttp has no disconnect event: the middleware watches the connection every 5 ms (poll=);
# web.AppRunner(app, handler_cancellation=True) makes it immediate.
app = web.Application(middlewares=[scope_middleware(timeout=60.0)])
app.router.add_post("/answer", answer)
# --8<-- [end:app]


def check(provider: object) -> None:
    from _harness import assert_stopped, post_and_leave, reports, serve_aiohttp

    with reports() as seen, serve_aiohttp(app) as port:
        log, t_drop = post_and_leave(port, "/answer?q=why", provider)  # type: ignore[arg-type]
        assert_stopped(log, t_drop)
        report = seen.wait()
    assert report.cancel_reason == "client_disconnected"
    assert [c.outcome for c in report.calls] == ["aborted"]
