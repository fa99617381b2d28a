"""RequestScope semantics: ambient scope, cancel, nesting, children, hooks, shield, errors, reports."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

import scoped_clients
from scoped_clients import (
    CancelReason,
    RequestScope,
    ScopeCancelled,
    ScopedClientsError,
    ScopeReport,
    ScopeStateError,
    add_report_sink,
    current_scope,
    detached,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def reports() -> Iterator[list[ScopeReport]]:
    seen: list[ScopeReport] = []
    remove = add_report_sink(seen.append)
    yield seen
    remove()


def test_public_api_is_exported() -> None:
    for name in scoped_clients.__all__:
        assert getattr(scoped_clients, name).__module__.startswith("scoped_clients")
    assert {"RequestScope", "current_scope", "ScopeCancelled", "add_report_sink"} <= set(scoped_clients.__all__)


def test_exception_tree() -> None:
    assert issubclass(ScopeCancelled, ScopedClientsError)
    # A cancellation must pass through the SDKs' `except Exception` retry loops.
    assert not issubclass(ScopeCancelled, Exception)
    # Usage errors are ordinary bugs.
    assert issubclass(ScopeStateError, RuntimeError)
    assert issubclass(ScopeStateError, ScopedClientsError)


async def test_scope_is_ambient_and_nested() -> None:
    assert current_scope() is None
    async with RequestScope("outer") as outer:
        assert current_scope() is outer
        async with RequestScope("inner") as inner:
            assert current_scope() is inner
            assert inner.parent is outer
            with detached():
                assert current_scope() is None
            assert current_scope() is inner
        assert current_scope() is outer
    assert current_scope() is None


async def test_cancel_stops_the_body_and_is_absorbed(reports: list[ScopeReport]) -> None:
    reached = False
    with anyio.fail_after(10):
        async with RequestScope("chat") as scope:
            assert scope.cancel("client_disconnected") is True
            assert scope.cancel("timeout") is False  # idempotent: the first reason wins
            await anyio.sleep_forever()
            reached = True
    assert not reached
    assert scope.cancelled
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "client_disconnected"
    assert scope.report is not None and scope.report.outcome == "cancelled"
    assert [r.scope_id for r in reports] == [scope.id]  # exactly one report


async def test_cancel_from_another_thread() -> None:
    with anyio.fail_after(10):
        async with RequestScope() as scope:
            started = anyio.Event()

            def canceller() -> None:
                scope.cancel(CancelReason("shutdown", "server stopping"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, canceller)
                started.set()
                await anyio.sleep_forever()
    assert scope.cancel_reason is not None
    assert scope.cancel_reason.message == "server stopping"


async def test_timeout_cancels_with_reason_timeout() -> None:
    with anyio.fail_after(10):
        async with RequestScope(timeout=0.01) as scope:
            await anyio.sleep_forever()
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "timeout"


def test_sync_timeout_fires_hooks() -> None:
    fired = threading.Event()
    with RequestScope(timeout=0.01) as scope:
        scope.on_cancel(fired.set)
        assert fired.wait(10)
        with pytest.raises(ScopeCancelled):
            scope.check()
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "timeout"


async def test_parent_cancels_children_never_the_reverse() -> None:
    with anyio.fail_after(10):
        async with RequestScope("parent") as parent:
            async with RequestScope("child") as child:
                child.cancel("mine")
                await anyio.sleep_forever()
            assert not parent.cancelled
            async with RequestScope("child2") as child2:
                parent.cancel("client_disconnected")
                await anyio.sleep_forever()
    assert child2.cancel_reason is not None and child2.cancel_reason.code == "client_disconnected"


async def test_spawned_children_are_cancelled_and_awaited() -> None:
    finished: list[str] = []
    child_started = anyio.Event()

    async def long_child() -> None:
        try:
            child_started.set()
            await anyio.sleep_forever()
        finally:
            finished.append("long")

    async def short_child(done: anyio.Event) -> None:
        await done.wait()
        finished.append("short")

    with anyio.fail_after(10):
        done = anyio.Event()
        async with RequestScope() as scope:
            scope.spawn(short_child, done)
            done.set()
        assert finished == ["short"]  # the block waited for its child

        async with RequestScope() as scope:
            scope.spawn(long_child)
            await child_started.wait()
            scope.cancel()
        assert finished == ["short", "long"]


async def test_on_cancel_hooks_run_once_and_errors_do_not_stop_others() -> None:
    calls: list[str] = []

    def bad() -> None:
        calls.append("bad")
        raise RuntimeError("hook failed")

    async def good() -> None:
        await anyio.lowlevel.checkpoint()
        calls.append("good")

    async def stuck() -> None:
        calls.append("stuck")
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with RequestScope(hook_timeout=0.01) as scope:
            scope.on_cancel(bad)
            scope.on_cancel(stuck)
            scope.on_cancel(good)
            scope.cancel()
            scope.cancel()
            await anyio.sleep_forever()
    assert sorted(calls) == ["bad", "good", "stuck"]


async def test_hooks_do_not_run_without_cancel() -> None:
    calls: list[str] = []
    async with RequestScope() as scope:
        scope.on_cancel(lambda: calls.append("x"))
    assert calls == []


async def test_shield_lets_a_block_finish() -> None:
    finished = False
    with anyio.fail_after(10):
        async with RequestScope() as scope:
            scope.cancel()
            with scope.shield():
                await anyio.sleep(0.001)
                finished = True
    assert finished


async def test_body_exception_propagates_unchanged(reports: list[ScopeReport]) -> None:
    with pytest.raises(ValueError, match="boom"):
        async with RequestScope():
            raise ValueError("boom")
    assert reports[-1].outcome == "failed"


def test_sync_scope_absorbs_its_own_cancellation() -> None:
    with RequestScope() as scope:
        scope.cancel("client_disconnected")
        scope.check()
        pytest.fail("check() did not raise")  # pragma: no cover
    assert scope.cancelled


async def test_check_after_end_raises() -> None:
    async with RequestScope() as scope:
        scope.check()
    assert scope.report is not None
    with pytest.raises(ScopeCancelled, match="scope_closed"):
        scope.check()


# ---------------------------------------------------------------- bad use


async def test_entering_twice_is_an_error() -> None:
    scope = RequestScope("once")
    async with scope:
        pass
    with pytest.raises(ScopeStateError, match="single-use"):
        async with scope:
            pass


async def test_spawn_into_ended_scope_is_an_error() -> None:
    async def child() -> None:
        pass

    async with RequestScope() as scope:
        pass
    with pytest.raises(ScopeStateError, match="has ended"):
        scope.spawn(child)
    with pytest.raises(ScopeStateError, match="inside"):
        RequestScope().spawn(child)


def test_spawn_needs_an_async_scope() -> None:
    async def child() -> None:
        pass

    with RequestScope() as scope, pytest.raises(ScopeStateError, match="async scope"):
        scope.spawn(child)


@pytest.mark.parametrize("reason", [42, None, "", b"bytes"])
def test_cancel_reason_must_be_a_string_or_reason(reason: object) -> None:
    with pytest.raises(TypeError, match="reason code"):
        RequestScope().cancel(reason)  # type: ignore[arg-type]


async def test_nesting_under_an_ended_parent_is_an_error() -> None:
    async with RequestScope("parent") as parent:
        pass
    with pytest.raises(ScopeStateError, match="already ended"):
        async with RequestScope("child", parent=parent):
            pass
    with pytest.raises(ScopeStateError, match="not been entered"), RequestScope("child", parent=RequestScope("never")):
        pass


async def test_child_of_cancelled_parent_starts_cancelled() -> None:
    with anyio.fail_after(10):
        async with RequestScope() as parent:
            parent.cancel("client_disconnected")
            with parent.shield():
                async with RequestScope() as child:
                    await anyio.sleep_forever()
    assert child.cancel_reason is not None and child.cancel_reason.code == "client_disconnected"


def test_invalid_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        RequestScope(timeout=-1)


async def test_a_scope_with_a_timeout_exits_as_soon_as_its_body_ends() -> None:
    with anyio.fail_after(5):  # the deadline watcher must not keep the block open for 60 s
        async with RequestScope(timeout=60) as scope:
            pass
    assert not scope.cancelled
