"""Quickstart: one import swapped and one middleware; a plain handler's LLM call stops when its client leaves."""

from __future__ import annotations

# --8<-- [start:app]
from fastapi import FastAPI

from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI  # was: from openai import AsyncOpenAI

app = FastAPI()
app.add_middleware(ScopeMiddleware)  # outermost: one RequestScope per request
client = AsyncOpenAI()  # same constructor, isinstance(client, openai.AsyncOpenAI)


@app.post("/answer")
async def answer(question: str) -> str:
    # Plain (non-streaming) handler: Starlette would let this run to the end after the user
    # left. Under the middleware the completion is aborted the moment the client disconnects.
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], max_tokens=400
    )
    return completion.choices[0].message.content or ""


# --8<-- [end:app]


def check(provider: object) -> None:
    from _harness import assert_stopped, post_and_leave, reports

    from scoped_clients.testing import serve

    with reports() as seen, serve(app) as port:
        log, t_drop = post_and_leave(port, "/answer?question=why", provider)  # type: ignore[arg-type]
        assert_stopped(log, t_drop)
        report = seen.wait()
    assert report.cancel_reason == "client_disconnected"
    assert [c.outcome for c in report.calls] == ["aborted"]
    assert report.tokens_saved_max > 0
