"""Two replicas behind a load balancer: "Stop" lands on the other one and still stops the LLM.

Run (needs a Redis; Debian: ``apt-get install redis-server``)::

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/replicas/app.py

It starts the embedded provider and two replicas of this app (two uvicorn
servers, each with its own bus), streams an answer from replica 1, presses
"Stop" on replica 2, and prints what the provider saw.  To run one replica behind your own load balancer:
``uvicorn --factory 'app:from_env' --app-dir examples/replicas`` with
``REDIS_URL`` and ``OPENAI_BASE_URL`` set.

Who may cancel which request: the scope id is unguessable (32 random hex
digits) and is returned to the page in ``x-request-id``, but an id is a name,
not a key.  ``POST /chat`` records which session owns its id (in Redis, so that
every replica can check it; the first claim wins, so a client that names its
request with someone else's id gets a 409), and the cancel endpoint cancels only
a request of the caller's own session; any other id is answered 404, the same as
an unknown one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from scoped_clients.asgi import SCOPE_KEY, ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.redis import RedisCancelBus

SESSION_COOKIE = "session"
OWNER_KEY = "example:owner:"  # + scope id -> sha256 of the owning session
OWNER_TTL = 3600  # seconds: longer than any answer


def _digest(session: str) -> bytes:
    return hashlib.sha256(session.encode()).hexdigest().encode()


def create_app(*, redis_url: str, llm_url: str, model: str = "local-2000") -> ScopeMiddleware:
    bus = RedisCancelBus.from_url(redis_url)
    llm = AsyncOpenAI(base_url=llm_url, api_key=os.environ.get("OPENAI_API_KEY", "local"))
    owners: dict[str, redis.asyncio.Redis] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owners["redis"] = redis.asyncio.Redis.from_url(redis_url)  # on the server's own loop
        await anyio.to_thread.run_sync(bus.wait_connected, 5.0)  # optional: cancels work before it too
        try:
            yield
        finally:
            await owners["redis"].aclose()
            await llm.close()
            await bus.aclose()

    async def chat(request: Request) -> Response:
        scope_id = request.scope[SCOPE_KEY].id  # what ScopeMiddleware returns in x-request-id
        session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(32)
        if not await owners["redis"].set(OWNER_KEY + scope_id, _digest(session), ex=OWNER_TTL, nx=True):
            return JSONResponse({"error": "that request id is taken; leave x-request-id out"}, status_code=409)
        question = (await request.json()).get("q", "hello")
        stream = await llm.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=True
        )

        async def tokens() -> AsyncIterator[str]:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        response = StreamingResponse(tokens(), media_type="text/plain")
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
        return response

    async def cancel(request: Request) -> Response:
        scope_id = request.path_params["scope_id"]
        session = request.cookies.get(SESSION_COOKIE)
        owner = await owners["redis"].get(OWNER_KEY + scope_id) if session else None
        if session is None or owner is None or not hmac.compare_digest(owner, _digest(session)):
            return JSONResponse({"error": "no such request of yours"}, status_code=404)
        stopped_here = await bus.cancel(scope_id, "user_stopped", "Stop pressed")
        # bus.connected False: Redis is down, the cancel is queued and sent when it is back.
        return JSONResponse({"stopped_here": stopped_here, "sent": bus.connected}, status_code=202)

    routes = [Route("/chat", chat, methods=["POST"]), Route("/chat/{scope_id}/cancel", cancel, methods=["POST"])]
    return ScopeMiddleware(Starlette(routes=routes, lifespan=lifespan), bus=bus, name="chat")


def from_env() -> ScopeMiddleware:
    """For ``uvicorn --factory``: ``REDIS_URL`` and ``OPENAI_BASE_URL`` from the environment."""
    return create_app(
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        llm_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        model=os.environ.get("MODEL", "gpt-4o-mini"),
    )


@dataclass
class DemoRun:
    scope_id: str
    t_cancel: float
    stranger: int  # status of a cancel of that id without the owner's session
    taken: int  # status of another client's request that names itself with that id
    answer: dict[str, Any]  # what replica 2's cancel endpoint said
    received: str  # what the page got of the answer


def demo(redis_url: str, provider: Any) -> DemoRun:
    """Stream from replica 1, press Stop on replica 2; ``provider``: a ``LocalProvider``."""
    import httpx

    from scoped_clients.testing import serve

    first = create_app(redis_url=redis_url, llm_url=provider.url + "/v1")
    second = create_app(redis_url=redis_url, llm_url=provider.url + "/v1")
    with (
        serve(first) as port1,
        serve(second) as port2,
        httpx.Client(timeout=30) as page,
        page.stream("POST", f"http://127.0.0.1:{port1}/chat", json={"q": "tell me a story"}) as response,
    ):
        scope_id = response.headers["x-request-id"]
        received = ""
        chunks = response.iter_text()
        received += next(chunks)
        (log,) = provider.wait_for_requests(1)
        log.wait_units(10)
        # Another client naming its own request with that id (to own it) is refused ...
        taken = httpx.post(f"http://127.0.0.1:{port2}/chat", json={}, headers={"x-request-id": scope_id}).status_code
        # ... and so is a cancel without the owner's session.
        stranger = httpx.post(f"http://127.0.0.1:{port2}/chat/{scope_id}/cancel").status_code
        t_cancel = time.monotonic()
        answer = page.post(f"http://127.0.0.1:{port2}/chat/{scope_id}/cancel")
        try:
            for text in chunks:
                received += text
        except httpx.RemoteProtocolError:
            pass  # the answer was cut short: that is what Stop does
    seen = log.wait_disconnect()
    print(
        f"replica 1 streamed request {scope_id}; a stranger's cancel got {stranger}, a request reusing the id {taken}"
    )
    print(f"Stop on replica 2 answered {answer.status_code} {answer.json()}")
    print(
        f"provider saw the disconnect {1000 * (seen - t_cancel):.1f} ms after Stop "
        f"({log.units_after(t_cancel)} tokens after it, {len(log.units)} in all)"
    )
    return DemoRun(scope_id, t_cancel, stranger, taken, answer.json(), received)


def main() -> None:
    from scoped_clients.provider import LocalProvider

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    with LocalProvider(token_interval=0.05) as provider:
        demo(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), provider)


if __name__ == "__main__":
    main()
