"""Scope ids, LocalCancelBus and ScopeMiddleware's id header; cancels measured at the embedded provider."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from _helpers import cancel_sync_call, chat_app, held_open, wait
from scoped_clients import CancelBus, LocalCancelBus, RequestScope, ScopeCancelled, current_scope
from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI, OpenAI
from scoped_clients.provider import LocalProvider
from scoped_clients.testing import serve

MESSAGES: Any = [{"role": "user", "content": "tell me a long story"}]


async def stream(llm: AsyncOpenAI) -> None:
    chunks = await llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)
    async for _ in chunks:
        pass


# ------------------------------------------------------------------------- scope ids


def test_default_ids_are_unguessable_and_distinct() -> None:
    ids = {RequestScope().id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # a random UUID (122 random bits), as hex


def test_a_given_id_is_kept() -> None:
    with RequestScope(id="order-42/step:1") as scope:
        assert scope.id == "order-42/step:1"
    assert scope.report.scope_id == "order-42/step:1"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "caf\u00e9", "tab\there", 42, b"bytes"])
def test_an_id_that_cannot_travel_is_refused_with_what_to_pass(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"visible ASCII.*leave it out for an unguessable random id"):
        RequestScope(id=bad)


def test_a_bus_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match="LocalCancelBus"):
        RequestScope(bus="redis://localhost")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- LocalCancelBus


def test_local_cancel_bus_is_a_cancel_bus() -> None:
    assert isinstance(LocalCancelBus(), CancelBus)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pending_ttl": -1}, "pending_ttl"),
        ({"pending_ttl": True}, "pending_ttl"),
        ({"max_pending": 1.5}, "max_pending"),
    ],
)
def test_local_cancel_bus_options_are_checked(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LocalCancelBus(**options)


@pytest.mark.anyio
async def test_cancel_by_id_stops_the_stream_of_that_scope_only(provider: LocalProvider, llm: AsyncOpenAI) -> None:
    bus = LocalCancelBus()
    target, bystander = RequestScope("target", bus=bus), RequestScope("bystander", bus=bus)
    seen: dict[str, Any] = {}

    async def run(scope: RequestScope, model: str) -> None:
        async with scope:
            chunks = await llm.chat.completions.create(model=model, messages=MESSAGES, stream=True)
            async for _ in chunks:
                pass

    async def cancel_when_busy() -> None:
        logs = {log.json["model"]: log for log in await wait(provider.wait_for_requests, 2)}
        for log in logs.values():
            await wait(log.wait_units, 3)
        seen["t"] = time.monotonic()
        seen["count"] = await bus.cancel(target.id, "user_stopped", "the Stop button")
        seen["target"] = await wait(logs["local-1000"].wait_disconnect)
        seen["bystander_running"] = logs["local-999"].done is False
        seen["logs"] = logs
        bystander.cancel("test_over")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, target, "local-1000")
            tg.start_soon(run, bystander, "local-999")
            tg.start_soon(cancel_when_busy)
    assert seen["count"] == 1
    assert seen["target"] >= seen["t"] and seen["logs"]["local-1000"].units_after(seen["t"]) <= 1
    assert seen["bystander_running"]  # the other scope's stream went on
    assert target.cancel_reason is not None and target.cancel_reason.code == "user_stopped"
    assert target.cancel_reason.message == "the Stop button"
    assert bystander.cancel_reason is not None and bystander.cancel_reason.code == "test_over"
    assert [c.outcome for c in target.report.calls] == ["aborted"]


@pytest.mark.anyio
async def test_every_open_scope_with_the_id_is_cancelled() -> None:
    bus = LocalCancelBus()
    scopes = [RequestScope(id="same", bus=bus) for _ in range(3)]
    async with held_open(scopes):
        assert len(bus.scopes("same")) == 3
        assert await bus.cancel("same") == 3
    assert all(s.cancelled for s in scopes)
    assert bus.scopes("same") == []


@pytest.mark.anyio
async def test_a_cancel_before_the_scope_opens_is_applied_on_entry(provider: LocalProvider, llm: AsyncOpenAI) -> None:
    bus = LocalCancelBus()
    assert await bus.cancel("job-1", "user_stopped") == 0  # nothing open yet: kept
    async with RequestScope(id="job-1", bus=bus) as scope:
        assert scope.cancelled
        with pytest.raises(ScopeCancelled):
            await llm.chat.completions.create(model="local-10", messages=MESSAGES)
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "user_stopped"
    assert provider.requests == []  # no upstream call started
    async with RequestScope(id="job-1", bus=bus) as again:  # applied once: the next scope runs
        pass
    assert not again.cancelled


def test_a_kept_cancel_expires_after_pending_ttl() -> None:
    bus = LocalCancelBus(pending_ttl=0)  # expires at once: no clock to wait on
    bus.cancel_sync("job-2")
    with RequestScope(id="job-2", bus=bus) as scope:
        pass
    assert not scope.cancelled


def test_at_most_max_pending_cancels_are_kept_the_oldest_dropped_first() -> None:
    bus = LocalCancelBus(max_pending=2)
    for scope_id in ("a", "b", "c"):
        bus.cancel_sync(scope_id)
    with RequestScope(id="a", bus=bus) as a, RequestScope(id="c", bus=bus) as c:
        pass
    assert not a.cancelled and c.cancelled


def test_a_cancel_after_the_scope_ended_is_a_no_op() -> None:
    bus = LocalCancelBus()
    with RequestScope(id="done", bus=bus) as scope:
        pass
    assert bus.cancel_sync("done", "too_late") == 0
    assert not scope.cancelled and scope.report.outcome == "completed"
    with RequestScope(id="done", bus=bus) as retry:  # not kept for a later scope reusing the id
        pass
    assert not retry.cancelled


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, None])
def test_an_id_no_scope_can_have_is_ignored(bad: Any) -> None:
    bus = LocalCancelBus()
    assert bus.cancel_sync(bad) == 0
    assert "pending=0" in repr(bus)


def test_cancel_sync_from_a_thread_aborts_a_sync_call_in_another(provider: LocalProvider) -> None:
    bus = LocalCancelBus()

    def cancel(scope: RequestScope) -> float:
        t_cancel = time.monotonic()
        assert bus.cancel_sync(scope.id, "user_stopped") == 1
        return t_cancel

    with OpenAI(base_url=provider.url + "/v1", api_key="test") as client:
        result = cancel_sync_call(
            provider,
            lambda: list(client.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)),
            units=3,
            scope=RequestScope("sync", bus=bus),
            cancel=cancel,
        )
    assert not result.thread_alive and [type(e) for e in result.errors] == [ScopeCancelled]
    assert result.seen >= result.t_cancel and result.log.units_after(result.t_cancel) <= 1


class _BrokenBus(LocalCancelBus):
    def join(self, scope: RequestScope) -> Callable[[], None]:
        raise RuntimeError("the bus is broken")


def test_a_bus_that_fails_to_join_never_breaks_the_scope(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="scoped_clients")
    with RequestScope(bus=_BrokenBus()) as scope:
        scope.cancel("still_works")
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "still_works"
    assert any("could not join" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ ScopeMiddleware ids


def id_app(**options: Any) -> ScopeMiddleware:
    async def whoami(request: Request) -> Response:
        scope = current_scope()
        assert scope is not None
        return PlainTextResponse(scope.id)

    async def own_header(request: Request) -> Response:
        return PlainTextResponse("mine", headers={"x-request-id": "set-by-the-app"})

    app = Starlette(routes=[Route("/whoami", whoami), Route("/own", own_header)])
    return ScopeMiddleware(app, **options)


@pytest.fixture
def id_server() -> Iterator[httpx.Client]:
    with serve(id_app()) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        yield http


def test_the_request_id_header_names_the_scope_and_comes_back(id_server: httpx.Client) -> None:
    response = id_server.get("/whoami", headers={"X-Request-ID": "page-7f3a"})
    assert response.text == "page-7f3a"
    assert response.headers["x-request-id"] == "page-7f3a"


@pytest.mark.parametrize("bad", ["has space", "x" * 129])
def test_an_invalid_request_id_is_replaced_by_a_random_one(id_server: httpx.Client, bad: str) -> None:
    response = id_server.get("/whoami", headers={"x-request-id": bad})
    assert response.text != bad and len(response.text) == 32
    assert response.headers["x-request-id"] == response.text


def test_without_the_header_a_random_id_is_returned(id_server: httpx.Client) -> None:
    first, second = id_server.get("/whoami"), id_server.get("/whoami")
    assert first.headers["x-request-id"] == first.text and len(first.text) == 32
    assert second.text != first.text


def test_a_header_the_app_set_itself_is_left_alone(id_server: httpx.Client) -> None:
    response = id_server.get("/own", headers={"x-request-id": "from-the-page"})
    assert response.headers.get_list("x-request-id") == ["set-by-the-app"]


def test_a_custom_id_header_and_none() -> None:
    with serve(id_app(id_header="X-Trace")) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        response = http.get("/whoami", headers={"x-trace": "t-1", "x-request-id": "ignored"})
        assert response.text == "t-1" and response.headers["x-trace"] == "t-1"
        assert "x-request-id" not in response.headers
    with serve(id_app(id_header=None)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        response = http.get("/whoami", headers={"x-request-id": "ignored"})
        assert response.text != "ignored" and "x-request-id" not in response.headers


@pytest.mark.parametrize("bad", ["", "two words", 7])
def test_a_bad_id_header_name_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="id_header"):
        id_app(id_header=bad)


def test_a_bus_that_is_not_one_is_refused_by_the_middleware() -> None:
    with pytest.raises(TypeError, match="LocalCancelBus"):
        id_app(bus=object())


def test_a_cancel_endpoint_stops_another_requests_stream(provider: LocalProvider) -> None:
    """Same process, two requests: the Stop request names the streaming one by the id it got back."""
    app = chat_app(provider.url, LocalCancelBus())
    with (
        serve(app) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
        http.stream("GET", "/chat") as response,
    ):
        scope_id = response.headers["x-request-id"]
        (log,) = provider.wait_for_requests(1)
        log.wait_units(3)
        t_cancel = time.monotonic()
        answer = http.post(f"/cancel/{scope_id}")
        t_answered = time.monotonic()
        seen = log.wait_disconnect()
        text = "".join(response.iter_text())  # the middleware ends the cut-short stream's body properly
    assert answer.json() == {"cancelled_here": 1, "published": False}
    assert 0 < len(text.split()) < 1000
    assert seen >= t_cancel and log.units_after(t_answered) <= 1
    assert len(provider.requests) == 1
