"""Every public argument is checked where it is given, with an error that says what to pass.

Issue 13's findings about inputs: infinite and absurd deadlines, unvalidated
``deadline``/``hook_timeout``, non-str messages and unbounded reason codes copied
into every report line, and Qdrant's integer ``timeout`` under ``timeout=inf``.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import scoped_clients.qdrant as scoped_qdrant
from scoped_clients import (
    CancelReason,
    RequestScope,
    ScopeCancelled,
    ScopeReport,
    ScopeStateError,
    add_report_sink,
    current_scope,
    detached,
)
from scoped_clients._reasons import MAX_CODE_LENGTH, MAX_MESSAGE_LENGTH, ReasonCode
from scoped_clients._scope import MAX_NAME_LENGTH
from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.provider import LocalProvider, embed

pytestmark = pytest.mark.anyio

NOT_NUMBERS: list[Any] = ["soon", "5", b"5", True, None, [1], object()]


@pytest.fixture
def reports() -> Iterator[list[ScopeReport]]:
    seen: list[ScopeReport] = []
    remove = add_report_sink(seen.append)
    yield seen
    remove()


# ------------------------------------------------------------ timeout, deadline


@pytest.mark.parametrize("value", [v for v in NOT_NUMBERS if v is not None])
def test_timeout_must_be_a_number(value: object) -> None:
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        RequestScope(timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, -0.001, -math.inf, math.nan])
def test_timeout_must_be_non_negative(value: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        RequestScope(timeout=value)


@pytest.mark.parametrize("kwargs", [{"timeout": math.inf}, {"deadline": math.inf}, {"timeout": None}])
async def test_infinity_means_no_deadline(kwargs: dict[str, float]) -> None:
    with anyio.fail_after(10):
        async with RequestScope(**kwargs) as scope:
            assert scope.deadline is None and scope.remaining() is None
    assert not scope.cancelled


def test_a_far_but_finite_timeout_is_a_deadline() -> None:
    with RequestScope(timeout=1e12) as scope:
        remaining = scope.remaining()
        assert remaining is not None and remaining > 1e11
    assert not scope.cancelled


@pytest.mark.parametrize("value", [v for v in NOT_NUMBERS if v is not None])
def test_deadline_must_be_a_number(value: object) -> None:
    with pytest.raises(TypeError, match="deadline must be a number of seconds"):
        RequestScope(deadline=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_deadline_must_be_a_real_time(value: float) -> None:
    with pytest.raises(ValueError, match="deadline"):
        RequestScope(deadline=value)


def test_a_wall_clock_deadline_is_caught() -> None:
    with pytest.raises(ValueError, match=r"time\.monotonic\(\) \+ seconds"):
        RequestScope(deadline=time.time() + 30)


async def test_a_past_deadline_cancels_at_once_with_reason_timeout() -> None:
    with anyio.fail_after(10):
        async with RequestScope(deadline=time.monotonic() - 1) as scope:
            await anyio.sleep_forever()
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "timeout"


async def test_nan_deadline_no_longer_cancels_at_once() -> None:
    with pytest.raises(ValueError, match="NaN"):
        RequestScope(deadline=math.nan)


@pytest.mark.parametrize("value", [-1, math.nan, math.inf, "5"])
def test_hook_timeout_must_be_finite_and_non_negative(value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="hook_timeout"):
        RequestScope(hook_timeout=value)


# ------------------------------------------------------------- name, parent


@pytest.mark.parametrize("value", [42, b"chat", ["chat"]])
def test_name_must_be_a_string(value: object) -> None:
    with pytest.raises(TypeError, match="name must be a str or None"):
        RequestScope(value)  # type: ignore[arg-type]


def test_a_long_name_is_truncated(reports: list[ScopeReport]) -> None:
    with RequestScope("n" * 10_000) as scope:
        pass
    assert scope.name is not None and len(scope.name) == MAX_NAME_LENGTH and scope.name.endswith("...")
    assert reports[-1].scope == scope.name


@pytest.mark.parametrize("value", ["outer", 1, object()])
def test_parent_must_be_a_scope_or_none(value: object) -> None:
    with pytest.raises(TypeError, match="parent must be a RequestScope or None"):
        RequestScope(parent=value)  # type: ignore[arg-type]


# ------------------------------------------------------------- cancel reasons


@pytest.mark.parametrize("message", [123, b"bytes", ["x"]])
def test_cancel_message_must_be_a_string(message: object) -> None:
    scope = RequestScope()
    with pytest.raises(TypeError, match="message must be a str or None"):
        scope.cancel("client_disconnected", message=message)  # type: ignore[arg-type]
    assert not scope.cancelled


def test_a_long_reason_code_is_rejected() -> None:
    scope = RequestScope()
    with pytest.raises(ValueError, match="short identifier"):
        scope.cancel("x" * 10_240)
    with pytest.raises(ValueError, match="short identifier"):
        CancelReason("x" * (MAX_CODE_LENGTH + 1))
    assert scope.cancel("x" * MAX_CODE_LENGTH) is True


def test_a_long_message_is_truncated_everywhere_it_is_copied(reports: list[ScopeReport]) -> None:
    with RequestScope() as scope:
        scope.cancel("user_stopped", "m" * 10_240)
        with pytest.raises(ScopeCancelled) as caught:
            scope.check()
    assert scope.cancel_reason is not None
    assert len(scope.cancel_reason.message) == MAX_MESSAGE_LENGTH
    assert len(str(caught.value)) < MAX_MESSAGE_LENGTH + 100
    assert reports[-1].cancel_message == scope.cancel_reason.message
    assert len(CancelReason("c", "m" * 10_240).message) == MAX_MESSAGE_LENGTH


def test_the_reason_cancel_makes_from_a_code_is_the_one_the_class_makes() -> None:
    """``cancel(code, message)`` builds its ``CancelReason`` through the slots (``checked_reason``): the same object."""
    from dataclasses import FrozenInstanceError, replace

    scope = RequestScope()
    before = time.monotonic()
    scope.cancel(ReasonCode.CLIENT_DISCONNECTED, "m" * 10_240)
    reason = scope.cancel_reason
    assert reason is not None and type(reason) is CancelReason
    assert type(reason.code) is str and before <= reason.time <= time.monotonic()
    made = CancelReason("client_disconnected", "m" * 10_240, reason.time)
    assert reason == made and hash(reason) == hash(made) and repr(reason) == repr(made)
    assert replace(reason, message="x") == CancelReason("client_disconnected", "x", reason.time)
    with pytest.raises(FrozenInstanceError):
        reason.code = "other"  # type: ignore[misc]


def test_a_cancel_reason_and_a_message_at_once_is_ambiguous() -> None:
    with pytest.raises(TypeError, match="put the message in the CancelReason"):
        RequestScope().cancel(CancelReason("shutdown"), message="twice")


# ------------------------------------------------------------ spawn, on_cancel


async def test_spawn_takes_a_function_not_a_coroutine() -> None:
    async def work(n: int) -> None:
        pass

    async with RequestScope() as scope:
        with pytest.raises(TypeError, match=r"scope\.spawn\(work, arg\)"):
            scope.spawn(work(1))  # type: ignore[arg-type]  # closed: no "never awaited" warning
        with pytest.raises(TypeError, match="async function"):
            scope.spawn(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="name"):
            scope.spawn(work, 1, name=7)  # type: ignore[arg-type]


async def test_on_cancel_takes_a_function_not_a_coroutine() -> None:
    async def cleanup() -> None:
        pass

    async with RequestScope() as scope:
        with pytest.raises(TypeError, match=r"scope\.on_cancel\(cleanup\)"):
            scope.on_cancel(cleanup())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            scope.on_cancel("cleanup")  # type: ignore[arg-type]


def test_an_async_hook_on_a_sync_scope_is_refused_when_registered() -> None:
    async def cleanup() -> None:
        pass

    with RequestScope() as scope, pytest.raises(TypeError, match="register a sync hook"):
        scope.on_cancel(cleanup)


# -------------------------------------------------- add_report_sink, detached


def test_add_report_sink_takes_a_sync_callable() -> None:
    async def async_sink(report: ScopeReport) -> None:
        pass

    with pytest.raises(TypeError, match="ScopeReport"):
        add_report_sink("log")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="never be awaited"):
        add_report_sink(async_sink)  # type: ignore[arg-type]


async def test_detached_works_with_and_async_with_and_is_single_use() -> None:
    async with RequestScope():
        async with detached():
            assert current_scope() is None
        block = detached()
        with block:
            assert current_scope() is None
        assert current_scope() is not None
        with pytest.raises(ScopeStateError, match="single-use"), block:
            pass  # pragma: no cover


# ------------------------------------------------------------- ScopeMiddleware


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"app": None}, TypeError, "ASGI application"),
        ({"name": 42}, TypeError, "name"),
        ({"timeout": "30"}, TypeError, "timeout"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"max_body_size": -1}, ValueError, "max_body_size"),
        ({"max_body_size": 1.5}, ValueError, "max_body_size"),
        ({"max_body_size": True}, ValueError, "max_body_size"),
    ],
)
def test_middleware_arguments_are_checked(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args = {"app": _app, **kwargs}
    with pytest.raises(error, match=match):
        ScopeMiddleware(**args)


def test_middleware_timeout_inf_means_none() -> None:
    assert ScopeMiddleware(_app, timeout=math.inf).timeout is None


# ------------------------------------------------------------------- Qdrant


@pytest.fixture
async def qdrant(provider: LocalProvider, anyio_backend: object) -> AsyncIterator[Any]:
    client = scoped_qdrant.AsyncQdrantClient(url=provider.url, check_compatibility=False)
    if await client.collection_exists("docs"):
        await client.delete_collection("docs")
    from qdrant_client import models

    await client.create_collection("docs", vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE))
    provider.reset()
    yield client
    await client.close()


@pytest.mark.parametrize(("seconds", "sent"), [(math.inf, None), (1e12, str(2**31 - 1))])
async def test_qdrant_under_an_infinite_or_huge_timeout(
    provider: LocalProvider, qdrant: Any, seconds: float, sent: str | None
) -> None:
    """``timeout=inf`` used to fail converting infinity to an integer for Qdrant's ``timeout``."""
    async with RequestScope(timeout=seconds) as scope:
        await qdrant.query_points("docs", query=embed("x"), limit=1)
    (log,) = provider.requests
    assert log.query.get("timeout") == sent
    assert scope.report is not None and [c.outcome for c in scope.report.calls] == ["completed"]


# ------------------------------------------------------------------ tools


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"argv": "echo hi"}, TypeError, r"shlex.split\('echo hi'\)"),
        ({"argv": []}, TypeError, "non-empty list of strings"),
        ({"argv": ["echo", 3]}, TypeError, "every argument must be a str"),
        ({"argv": ["echo"], "grace": -1}, ValueError, "grace is the seconds between SIGTERM and SIGKILL"),
        ({"argv": ["echo"], "grace": math.inf}, ValueError, "a finite number >= 0"),
        ({"argv": ["cat"], "input": "text"}, TypeError, "input is the bytes"),
    ],
)
async def test_run_command_arguments_are_checked_before_spawning(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    from scoped_clients.tools import run_command

    async with RequestScope() as scope:
        with pytest.raises(error, match=match):
            await run_command(**kwargs)
    assert scope.report is not None and scope.report.calls == ()  # nothing was admitted, nothing spawned


@pytest.mark.anyio
async def test_run_tool_takes_a_function() -> None:
    from scoped_clients.tools import run_tool

    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match="takes the tool function itself"):
        await run_tool(42)  # type: ignore[arg-type]
    coroutine = fetch()
    with pytest.raises(TypeError, match="not a coroutine"):
        await run_tool(coroutine)  # type: ignore[arg-type]
    coroutine.close()


@pytest.mark.parametrize(
    ("prices", "error"),
    [
        ([("gpt-4o", (2.5, 10.0))], TypeError),
        ({1: (2.5, 10.0)}, TypeError),
        ({"gpt-4o": 2.5}, ValueError),
        ({"gpt-4o": (2.5,)}, ValueError),
        ({"gpt-4o": (2.5, -1.0)}, ValueError),
        ({"gpt-4o": (2.5, float("nan"))}, ValueError),
        ({"gpt-4o": (True, 10.0)}, ValueError),
    ],
)
def test_set_prices_says_what_a_price_is(prices: object, error: type[Exception]) -> None:
    from scoped_clients import set_prices

    with pytest.raises(error, match="set_prices"):
        set_prices(prices)  # type: ignore[arg-type]
