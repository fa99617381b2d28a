"""FastAPI with the adapter: ``install(app)`` and the request's scope as a dependency."""

from __future__ import annotations

# --8<-- [start:app]
from fastapi import FastAPI
from scoped_clients_fastapi import RequestScopeDep, install

from scoped_clients.openai import AsyncOpenAI

app = FastAPI()
client = AsyncOpenAI()
cleaned_up: list[str] = []


@app.post("/answer")
async def answer(question: str, scope: RequestScopeDep) -> dict[str, str]:
    # Cleanup that must happen if the client leaves: runs once, shielded, at the moment of the cancel.
    scope.on_cancel(lambda: cleaned_up.append(scope.id))
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], max_tokens=400
    )
    return {"answer": completion.choices[0].message.content or "", "request_id": scope.id}


install(app)  # after your other add_middleware calls: ScopeMiddleware must be the outermost
# --8<-- [end:app]


def check(provider: object) -> None:
    from _harness import assert_stopped, post_and_leave, reports

    from scoped_clients.testing import serve

    with reports() as seen, serve(app) as port:
        log, t_drop = post_and_leave(port, "/answer?question=why", provider, headers="x-request-id: req-42\r\n")  # type: ignore[arg-type]
        assert_stopped(log, t_drop)
        report = seen.wait()
    assert report.cancel_reason == "client_disconnected" and report.scope_id == "req-42"
    assert cleaned_up == ["req-42"]
