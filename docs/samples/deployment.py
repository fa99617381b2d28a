"""Replicas: every process joins one cancel bus on Redis; "Stop" on any replica stops the stream."""

from __future__ import annotations

import hashlib
import os

from fastapi import Request


class Session:
    """Stands for your application's sessions: here, requests whose id starts with the caller's name."""

    def __init__(self, user: str) -> None:
        self.user = user

    async def owns(self, scope_id: str) -> bool:
        return bool(self.user) and scope_id.startswith(hashlib.sha256(self.user.encode()).hexdigest()[:8])


async def current_session(request: Request) -> Session:
    return Session(request.headers.get("x-user", ""))


# --8<-- [start:app]
from collections.abc import AsyncIterator  # noqa: E402
from typing import Annotated  # noqa: E402

from fastapi import Depends, FastAPI, HTTPException  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402

from scoped_clients.asgi import ScopeMiddleware  # noqa: E402
from scoped_clients.openai import AsyncOpenAI  # noqa: E402
from scoped_clients.redis import RedisCancelBus  # noqa: E402

# one per process; or RedisCancelBus(redis_asyncio_client)
bus = RedisCancelBus.from_url(os.environ.get("REDIS_URL", "redis://redis:6379/0"))
app = FastAPI()
app.add_middleware(ScopeMiddleware, bus=bus)  # every request's scope joins the bus, by its id (x-request-id)
client = AsyncOpenAI()


@app.post("/chat")
async def chat(question: str) -> StreamingResponse:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], max_tokens=400, stream=True
    )

    async def tokens() -> AsyncIterator[str]:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return StreamingResponse(tokens(), media_type="text/plain")  # the page reads its id from x-request-id


@app.post("/chat/{scope_id}/cancel", status_code=202)  # on any replica
async def stop(scope_id: str, session: Annotated[Session, Depends(current_session)]) -> None:
    if not await session.owns(scope_id):  # your check: see "Who may cancel which scope" below
        raise HTTPException(404)
    await bus.cancel(scope_id, "user_stopped")  # the replica streaming it aborts the LLM call


# --8<-- [end:app]


def check(provider: object, redis_url: str) -> None:
    import socket
    import time

    import httpx
    from _harness import assert_stopped, reports

    from scoped_clients.testing import serve

    request_id = hashlib.sha256(b"ada").hexdigest()[:8] + "-chat-1"
    try:
        with reports() as seen, serve(app) as port:
            sock = socket.create_connection(("127.0.0.1", port))
            head = f"POST /chat?question=why HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nx-request-id: {request_id}\r\n"
            sock.sendall(head.encode() + b"\r\n")
            (log,) = provider.wait_for_requests(1)  # type: ignore[attr-defined]
            log.wait_units(3)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                assert http.post(f"/chat/{request_id}/cancel", headers={"x-user": "eve"}).status_code == 404
                t_cancel = time.monotonic()
                assert http.post(f"/chat/{request_id}/cancel", headers={"x-user": "ada"}).status_code == 202
            assert_stopped(log, t_cancel)
            report = seen.of(request_id)
            sock.close()
    finally:
        bus.close()
    assert report.scope_id == request_id and report.cancel_reason == "user_stopped"
