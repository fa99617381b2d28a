"""RequestScope semantics: ambient scope, cancel, nesting, children, hooks, shield, errors, reports."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

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
    _timer,
    add_report_sink,
    current_scope,
    detached,
)
from scoped_clients._scope import registry

pytestmark = pytest.mark.anyio


@pytest.fixture
def reports() -> Iterator[list[ScopeReport]]:
    seen: list[ScopeReport] = []
    remove = add_report_sink(seen.append)
    yield seen
    remove()


def test_public_api_is_exported() -> None:
    for name in scoped_clients.__all__:
        value = getattr(scoped_clients, name)
        assert isinstance(value, str) or value.__module__.startswith("scoped_clients")
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


async def test_a_deadline_never_fires_before_it_has_passed() -> None:
    """A loop's timer can run early: uvloop reads its clock once a turn and counts in whole milliseconds,
    so a timer set from ``time.monotonic()`` fired up to ~1 ms before the deadline. The scope waits out
    the rest: the cancel's time is never before the deadline, on any backend."""
    early = []
    for i in range(100):
        with anyio.fail_after(10):  # timeouts in fractions of a millisecond: uvloop's timers fired early on 2 in 5
            async with RequestScope(parent=None, timeout=0.0005 + (i % 7) * 0.0003) as scope:
                await anyio.sleep_forever()
        assert scope.cancel_reason is not None and scope.cancel_reason.code == "timeout"
        assert scope.deadline is not None
        if scope.cancel_reason.time < scope.deadline:
            early.append(scope.deadline - scope.cancel_reason.time)
    assert not early, f"{len(early)} of 100 deadlines fired early, by up to {max(early) * 1e3:.3f} ms"


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


async def test_report_without_a_sink_is_built_when_read_and_final(caplog: pytest.LogCaptureFixture) -> None:
    """No sink and no INFO log: the report is built on first read (issue 23), then always the same object."""
    caplog.set_level(logging.WARNING, logger="scoped_clients")
    async with RequestScope("lazy") as scope:
        assert scope.report is None
        await anyio.lowlevel.checkpoint()
    assert scope._report is None  # nothing wanted it at the exit
    report = scope.report
    assert report is not None and report.scope == "lazy" and report.scope_id == scope.id
    assert report.outcome == "completed" and report.duration >= 0 and report.calls == ()
    assert scope.report is report


async def test_report_with_a_sink_is_the_one_the_sink_got(reports: list[ScopeReport]) -> None:
    async with RequestScope("eager") as scope:
        pass
    assert reports[-1] is scope.report and scope.report.scope == "eager"


async def test_scope_closed_reason_is_one_object_made_on_first_use() -> None:
    async with RequestScope() as scope:
        pass
    with pytest.raises(ScopeCancelled) as first:
        scope.check()
    with pytest.raises(ScopeCancelled) as second:
        scope.check()
    assert first.value.reason is second.value.reason
    assert first.value.reason.code == "scope_closed"


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
    with anyio.fail_after(5):  # the deadline's timer must not keep the block open for 60 s
        async with RequestScope(timeout=60) as scope:
            pass
    assert not scope.cancelled


# ------------------------------------------------- cancel hardening


@pytest.mark.parametrize("order", ["cancel_first", "abort_first", "from_thread"])
async def test_a_child_reraising_scope_cancelled_never_escapes_the_block(
    order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned child ends with ``ScopeCancelled`` (as a call aborted at its socket does) while the
    body gets the plain cancellation: the block absorbs both (it used to raise a BaseExceptionGroup).

    ``abort_first`` is the fuzzer's 3-5 % case, made deterministic: ``cancel()`` from another
    thread aborts the calls at once and posts the body's cancel to the loop; here that post is
    held back, so the child's ``ScopeCancelled`` (and the task group cancelling the body) comes
    first and the block exits before the body's cancel callback ever runs.
    """
    ready = anyio.Event()
    go = anyio.Event()
    held: list[object] = []

    async def child(scope: RequestScope) -> None:
        ready.set()
        with contextlib.suppress(anyio.get_cancelled_exc_class()):
            await go.wait()  # woken by the "abort", or cancelled with the scope
        assert scope.cancel_reason is not None
        raise ScopeCancelled(scope.cancel_reason, scope.name)

    with anyio.fail_after(10):
        async with RequestScope("fanout") as scope:
            scope.spawn(child, scope)
            await ready.wait()
            if order == "cancel_first":
                scope.cancel("client_disconnected")
            elif order == "abort_first":
                assert scope._loop is not None
                # the canceller thread has not posted yet (``soon`` is how a cancel posts the body's cancel)
                monkeypatch.setattr(type(scope._loop), "soon", lambda self, fn, arg: held.append(fn))
                go.set()
                scope.cancel("client_disconnected")
            else:
                await anyio.to_thread.run_sync(scope.cancel, "client_disconnected")
            await anyio.sleep_forever()
    assert scope.report is not None and scope.report.outcome == "cancelled"
    assert len(held) == (1 if order == "abort_first" else 0)


async def test_a_child_error_during_a_cancel_still_propagates() -> None:
    """Absorbing our own cancellation must not swallow a real error of a child."""

    async def child() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    with anyio.fail_after(10), pytest.raises(BaseExceptionGroup) as caught:
        async with RequestScope() as scope:
            scope.spawn(child)
            await anyio.lowlevel.checkpoint()
            scope.cancel()
            await anyio.sleep_forever()
    assert caught.group_contains(ValueError, match="cleanup failed")
    assert not caught.group_contains(ScopeCancelled)


async def test_outer_cancellation_is_not_absorbed_by_a_cancelled_scope() -> None:
    """A cancel of an enclosing anyio scope travels through our block even when ours was cancelled too."""
    reached_after = False
    with anyio.fail_after(10):
        with anyio.CancelScope() as outer:
            async with RequestScope() as scope:
                scope.cancel()
                outer.cancel()
                await anyio.sleep_forever()
            reached_after = True  # pragma: no cover
    assert outer.cancelled_caught and not reached_after


async def _run_a_child_if(child: str, scope: RequestScope) -> None:
    """``child == "finished"``: a child of ``scope`` has run and returned."""
    if child == "finished":
        done = anyio.Event()

        async def quick() -> None:
            done.set()

        scope.spawn(quick)
        await done.wait()


@pytest.mark.parametrize("child", ["never", "finished"])
async def test_the_body_leaves_the_same_way_whether_or_not_a_child_ever_ran(child: str) -> None:
    """A scope that never started a child closes its task group without cancelling it (issue 23):
    the body's error, an enclosing cancel and our own cancel leave exactly as with a child that ran."""
    reached = []

    async def enter(scope: RequestScope) -> None:
        await _run_a_child_if(child, scope)

    with pytest.raises(ValueError, match="the body's own") as caught:
        async with RequestScope() as scope:
            await enter(scope)
            raise ValueError("the body's own")
    assert type(caught.value) is ValueError  # not wrapped in a group
    assert not scope.cancelled

    with anyio.fail_after(10):
        with anyio.CancelScope() as outer:
            async with RequestScope() as scope:
                await enter(scope)
                outer.cancel()
                await anyio.sleep_forever()
            reached.append("after the enclosing cancel")  # pragma: no cover
    assert outer.cancelled_caught and not reached and not scope.cancelled

    with anyio.fail_after(10):
        async with RequestScope() as scope:
            await enter(scope)
            scope.cancel("client_disconnected")
            await anyio.sleep_forever()
        reached.append("after our own cancel")
    assert reached == ["after our own cancel"] and scope.cancel_reason is not None


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("child", ["never", "finished"])
async def test_a_native_task_cancel_travels_whether_or_not_a_child_ever_ran(child: str) -> None:
    import asyncio

    task = asyncio.current_task()
    assert task is not None
    with anyio.fail_after(10):
        with pytest.raises(asyncio.CancelledError):
            async with RequestScope() as scope:
                await _run_a_child_if(child, scope)
                task.cancel()
                await anyio.sleep_forever()
        task.uncancel()
    assert not scope.cancelled


@pytest.mark.parametrize("where", ["loop", "thread"])
async def test_async_hooks_run_at_cancel_time_not_at_exit(where: str) -> None:
    """The hook runs while the block is still open: a shielded child waits for it, so the block
    could not exit first (the hook used to run only once the children had settled)."""
    hook_ran = anyio.Event()
    order: list[str] = []

    async def hook() -> None:
        await anyio.lowlevel.checkpoint()
        order.append("hook")
        hook_ran.set()

    async def child() -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await hook_ran.wait()
        order.append("child settled")

    with anyio.fail_after(10):
        async with RequestScope(hook_timeout=5) as scope:
            scope.on_cancel(hook)
            scope.spawn(child)
            await anyio.lowlevel.checkpoint()
            if where == "loop":
                scope.cancel()
            else:
                await anyio.to_thread.run_sync(scope.cancel)
            await anyio.sleep_forever()
    assert order == ["hook", "child settled"]


@pytest.mark.parametrize("where", ["loop", "thread"])
async def test_an_async_hook_runs_at_the_cancel_in_the_context_it_was_registered_in(where: str) -> None:
    """No child at all: the body itself waits (shielded) for the hook, so the hook must run before the exit;
    it sees what the request's context held when it was registered (a value set after the block's entry)."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
    seen: list[tuple[str, RequestScope | None]] = []
    ran = anyio.Event()

    async def hook() -> None:
        await anyio.lowlevel.checkpoint()
        seen.append((request_id.get(), current_scope()))
        ran.set()

    with anyio.fail_after(10):
        async with RequestScope(hook_timeout=5) as scope:
            request_id.set("r-1")
            scope.on_cancel(hook)
            request_id.set("r-2")  # later changes are the body's own
            if where == "loop":
                scope.cancel()
            else:
                await anyio.to_thread.run_sync(scope.cancel)
            with scope.shield():
                await ran.wait()
    assert seen == [("r-1", scope)]


@pytest.mark.parametrize("where", ["loop", "thread"])
def test_an_async_hook_runs_at_the_cancel_on_a_loop_anyio_did_not_start(where: str) -> None:
    """uvicorn runs ``asyncio.run`` itself: nothing names the library in a loop callback, where the
    cancel starts the hooks' task (found by the FastAPI sample: the hooks only ran at the exit)."""
    import asyncio

    order: list[str] = []

    async def main() -> None:
        ran = anyio.Event()

        async def hook() -> None:
            await anyio.lowlevel.checkpoint()
            order.append("hook")
            ran.set()

        async with RequestScope(hook_timeout=5) as scope:
            scope.on_cancel(hook)
            with scope.shield(), anyio.move_on_after(10):
                if where == "loop":
                    scope.cancel()
                else:
                    await asyncio.to_thread(scope.cancel)
                await ran.wait()
            order.append("body")

    asyncio.run(main())
    assert order == ["hook", "body"]


async def test_async_hooks_finish_before_the_block_exits_when_the_cancel_lands_at_its_end() -> None:
    """The body cancels its scope and returns at once: the cancel's loop callback runs during the exit, which
    must then run the hooks itself (a task started by it could outlive the block), while a call left in flight
    is closed."""
    events: list[str] = []

    class OpenBody:  # a call still in flight at the exit, whose closing takes a few loop turns
        def abort(self, reason: CancelReason, *, orphan: bool = False) -> None:
            pass

        def final_record(self) -> None:
            return None

        async def aclose_on_exit(self) -> None:
            for _ in range(5):
                await anyio.lowlevel.checkpoint()

        def close_on_exit(self) -> None:
            pass

    async def hook() -> None:
        events.append("hook started")
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        events.append("hook finished")

    with anyio.fail_after(10):
        async with RequestScope() as scope:
            registry(scope).admit(OpenBody())
            scope.on_cancel(hook)
            scope.cancel("client_disconnected")  # no await after it
    events.append("block exited")
    assert events == ["hook started", "hook finished", "block exited"]


def test_an_async_hook_registered_after_the_cancel_from_a_foreign_loop_callback() -> None:
    """A protocol's callback (``connection_lost``) on a loop anyio.run did not start names no async library:
    registering a hook there after the cancel starts the hooks' task all the same, and does not raise."""
    import asyncio

    events: list[str] = []

    async def main() -> None:
        ran = asyncio.Event()

        async def hook() -> None:
            events.append("hook ran")
            ran.set()

        def register(scope: RequestScope) -> None:
            try:
                scope.on_cancel(hook)
                events.append("registered")
            except BaseException as exc:
                events.append(f"on_cancel raised {type(exc).__name__}")
                ran.set()

        async with RequestScope() as scope:
            scope.cancel("client_disconnected")
            asyncio.get_running_loop().call_soon(register, scope)
            with scope.shield():
                await asyncio.wait_for(ran.wait(), 10)
        events.append("block exited")

    asyncio.run(main())
    assert events == ["registered", "hook ran", "block exited"]


async def test_a_cancel_while_the_exit_waits_for_a_child_runs_the_hooks_the_child_needs() -> None:
    """The body has ended and the exit waits for a child stuck in a wait no cancel reaches, which a hook
    releases: the cancel that arrives then must run the hook at once, not after the children."""
    events: list[str] = []
    release = threading.Event()
    watchdog = threading.Timer(5, release.set)  # a failing run ends, the order shows it
    watchdog.start()

    async def child() -> None:
        await anyio.to_thread.run_sync(release.wait)  # not abandoned on cancel: it waits for the thread
        events.append("child done")

    def hook() -> None:
        events.append("hook")
        release.set()

    body_ended = anyio.Event()
    try:
        async with anyio.create_task_group() as outer:
            scope = RequestScope()

            async def canceller() -> None:
                await body_ended.wait()  # runs while the scope's exit waits for its child
                scope.cancel("client_disconnected")

            outer.start_soon(canceller)
            async with scope:
                scope.on_cancel(hook)
                scope.spawn(child)
                body_ended.set()
            events.append("block exited")
    finally:
        watchdog.cancel()
    assert events == ["hook", "child done", "block exited"]


@pytest.mark.parametrize("had_child", [False, True], ids=["no-child-ever", "a-child-finished"])
async def test_spawn_during_the_exit_is_refused_once_no_child_runs(had_child: bool) -> None:
    """A spawn() from another task in the exit's checkpoint (asyncio: the step after the body's last): the
    group has found nothing to wait for, with or without a child before it (one that has finished), so the
    task would outlive the block; it is refused (on trio the nursery refuses it, or the scope has ended)."""
    results: list[str] = []
    finished = anyio.Event()

    async def quick() -> None:
        results.append("late child ran")

    async def finish() -> None:
        finished.set()

    async with anyio.create_task_group() as outer:
        scope = RequestScope()

        async def late() -> None:
            try:
                scope.spawn(quick)
                results.append("accepted")
            except ScopeStateError:
                results.append("refused")

        async with scope:
            if had_child:
                scope.spawn(finish)
                await finished.wait()
                await anyio.lowlevel.checkpoint()  # the child's task has ended: the group is empty again
            outer.start_soon(late)
    assert results == ["refused"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_cancel_during_the_exits_hooks_cuts_one_short_and_the_others_still_run() -> None:
    """asyncio's task.cancel() (a server's timeout) is not held off by a shield: it cuts the hook it lands in
    short; the scope's other hooks still run, then the cancel leaves the block."""
    import asyncio

    events: list[str] = []
    h1_started = asyncio.Event()

    async def h1() -> None:
        events.append("h1 start")
        h1_started.set()
        await asyncio.Event().wait()  # until cut short

    async def h2() -> None:
        events.append("h2 ran")

    async def request() -> None:
        async with RequestScope() as scope:
            scope.on_cancel(h1)
            scope.on_cancel(h2)
            scope.cancel("client_disconnected")  # no await after it: the exit runs the hooks

    task = asyncio.ensure_future(request())
    await asyncio.wait_for(h1_started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["h1 start", "h2 ran"]


async def test_an_async_hook_registered_after_a_cancel_before_the_entry_runs_at_the_entry() -> None:
    """Before the entry, sync or async is not known: a hook registered on a scope cancelled before it was
    entered waits for the entry (it used to be run as a sync hook at once: an async one was closed, unrun)."""
    ran: list[str] = []

    async def hook() -> None:
        ran.append("hook")

    scope = RequestScope()
    assert scope.cancel("client_disconnected")
    scope.on_cancel(hook)
    with anyio.fail_after(10):
        async with scope:
            await anyio.sleep_forever()  # cancelled at the entry
    assert ran == ["hook"]
    assert scope.report is not None and scope.report.outcome == "cancelled"


async def test_the_deadline_still_bounds_the_children_the_exit_waits_for() -> None:
    """The body ends at once, its child would run forever: the scope's timeout cancels the child while the
    exit waits for it (the deadline used to stop counting as the exit began)."""
    events: list[str] = []

    async def child() -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            events.append("child cancelled")
            raise

    with anyio.fail_after(5):
        async with RequestScope(timeout=0.05) as scope:
            scope.spawn(child)
    assert events == ["child cancelled"]
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "timeout"


async def test_spawn_of_a_function_that_returns_no_coroutine_raises_at_the_call() -> None:
    async with RequestScope() as scope:
        with pytest.raises(TypeError):
            scope.spawn(lambda: 42)  # type: ignore[arg-type,return-value]
        await anyio.lowlevel.checkpoint()  # the body goes on: nothing was started that could fail it
    assert not scope.cancelled


async def test_a_hook_registered_from_another_thread_as_the_block_ends_runs_or_is_refused() -> None:
    """The exit decides under the scope's lock: a hook another thread registers on a cancelled scope is
    either run by the exit or refused with ScopeStateError; never accepted and dropped. Here the thread
    registers while the scope leaves its bus (after the exit's hooks ran): refused."""
    outcome: list[str] = []
    ran: list[str] = []

    class Bus:
        def join(self, scope: RequestScope) -> Callable[[], None]:
            def leave() -> None:
                def other_thread() -> None:
                    try:
                        scope.on_cancel(lambda: ran.append("hook"))
                        outcome.append("accepted")
                    except ScopeStateError:
                        outcome.append("refused")

                thread = threading.Thread(target=other_thread)
                thread.start()
                thread.join()

            return leave

        async def cancel(self, scope_id: str, reason: str = "cancelled", message: str | None = None) -> int:
            return 0

    async with RequestScope("req", bus=Bus()) as scope:  # type: ignore[arg-type]
        scope.cancel("client_disconnected")
    assert outcome == ["refused"] and ran == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_registering_an_async_hook_starts_no_task() -> None:
    """A task waiting for the cancel cost ~60 us a scope (issue 23): the hooks' task is started by the cancel."""
    import asyncio

    async def hook() -> None:
        pass

    async with RequestScope() as scope:
        before = len(asyncio.all_tasks())
        scope.on_cancel(hook)
        await anyio.lowlevel.checkpoint()
        assert len(asyncio.all_tasks()) == before
        scope.cancel()
        await anyio.lowlevel.cancel_shielded_checkpoint()
        assert len(asyncio.all_tasks()) == before + 1  # the hooks' task, started by the cancel
        await anyio.sleep_forever()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_scope_cancelled_at_its_entry_starts_one_hooks_task() -> None:
    """A cancel inherited at the entry: the entry cancels the body and starts the hooks' task, once.

    The cancel used to be posted to the loop as well, which started a second, empty hooks task.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    started: list[asyncio.Task[object]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.Task(coro, loop=loop, **kwargs)
        started.append(task)
        return task

    ran: list[str] = []

    async def hook() -> None:
        ran.append("hook")

    loop.set_task_factory(factory)
    try:
        with anyio.fail_after(10):
            async with RequestScope("parent") as parent:
                parent.cancel("client_disconnected")
                with parent.shield():
                    child = RequestScope("child")
                    child.on_cancel(hook)
                    async with child:
                        await anyio.sleep_forever()
    finally:
        loop.set_task_factory(previous)
    assert ran == ["hook"]
    assert child.cancel_reason is not None and child.cancel_reason.code == "client_disconnected"
    hooks_tasks = [task.get_name() for task in started if task.get_name().startswith("on_cancel hooks of")]
    assert len(hooks_tasks) == 1, hooks_tasks


async def test_hooks_registered_before_entering_and_after_the_cancel_run_once() -> None:
    calls: list[str] = []

    async def early() -> None:
        calls.append("early")

    async def late() -> None:
        calls.append("late")
        late_ran.set()

    late_ran = anyio.Event()

    with anyio.fail_after(10):
        scope = RequestScope()
        scope.on_cancel(early)
        async with scope:
            scope.cancel()
            with scope.shield():
                await anyio.lowlevel.checkpoint()
                scope.on_cancel(late)  # after the cancel: runs right away, not at the exit
                await late_ran.wait()
    assert sorted(calls) == ["early", "late"]


async def test_a_hook_runner_does_not_keep_a_normal_block_open() -> None:
    calls: list[str] = []
    with anyio.fail_after(5):
        async with RequestScope() as scope:
            scope.on_cancel(lambda: calls.append("x"))
    assert calls == [] and not scope.cancelled


@pytest.mark.parametrize(
    "kwargs", [{"timeout": math.inf}, {"timeout": 1e12}, {"deadline": math.inf}], ids=["inf", "1e12", "deadline-inf"]
)
def test_far_deadlines_do_not_stop_every_later_sync_timeout(kwargs: dict[str, float]) -> None:
    """The one timer thread used to die on a deadline beyond Condition.wait's limit, and from then
    on no sync timeout in the process fired."""
    with RequestScope("far", parent=None, **kwargs) as far:
        for _ in range(3):
            fired = threading.Event()
            with RequestScope("short", parent=None, timeout=0.01) as short:
                short.on_cancel(fired.set)
                assert fired.wait(10), "the sync timeout did not fire: the timer thread is dead"
    assert not far.cancelled
    assert far.deadline is None if math.isinf(next(iter(kwargs.values()))) else far.deadline is not None


def test_a_short_timeout_fires_while_the_timer_thread_waits_for_a_later_one() -> None:
    """The timer thread sleeps until the deadline it knows of (a live scope's, or the last of the scopes
    that ended before theirs); a new, shorter one must wake it, not wait 30 s behind it."""
    with RequestScope("long", parent=None, timeout=30) as long:
        for ended in range(3):
            with RequestScope(f"ended-{ended}", parent=None, timeout=30):
                pass
        fired = threading.Event()
        with RequestScope("short", parent=None, timeout=0.01) as short:
            short.on_cancel(fired.set)
            assert fired.wait(10), "the short timeout waited behind a 30 s one"
    assert not long.cancelled
    for _ in range(3):  # and with no live scope left, only ended ones ahead of the new one
        with RequestScope(parent=None, timeout=30):
            pass
    fired = threading.Event()
    with RequestScope("short-again", parent=None, timeout=0.01) as short:
        short.on_cancel(fired.set)
        assert fired.wait(10), "the short timeout waited behind ended scopes' deadlines"


def test_scopes_that_ended_leave_no_timers_behind() -> None:
    """An ended scope's timer entry holds nothing (its callback, which holds the scope, is dropped at
    once), and the timer thread's heap (sync scopes', and async ones' on trio) is compacted as it grows:
    5,000 scopes with a 30 s timeout leave a bounded heap."""
    for _ in range(5000):
        with RequestScope(parent=None, timeout=30):
            pass
    heap = _timer._timers._heap
    assert len(heap) <= _timer._COMPACT_MIN < 5000
    assert all(entry[2].fn is None for entry in heap)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_the_timer_lock_was_held_still_fires_sync_deadlines() -> None:
    """Celery's prefork pool forks the worker: a thread of the parent holding the timer thread's lock at
    that moment would leave the child's first sync deadline waiting for it forever."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _timer._timers._cond:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        pid = _fork(lambda: 0 if _a_sync_deadline_fires(timeout=0.01) else 2)
    finally:
        release.set()
        holder.join()
    assert _exit_code_of(pid, "the forked child hung on the timer thread's lock") == 0


def test_a_forked_child_fires_none_of_the_parents_deadlines() -> None:
    """A scope open at the fork is the parent's (its calls' sockets are shared with the child): its deadline
    must not fire in the child, whose timer thread starts with the child's first deadline."""
    with RequestScope("parent", parent=None, timeout=0.2) as inherited:
        assert inherited.deadline is not None
        later = inherited.deadline + 0.05
        # The child's deadline is due after the inherited one: the timer thread, which takes its heap in
        # order, has passed the inherited deadline once the child's fires.
        pid = _fork(lambda: 2 if not _a_sync_deadline_fires(deadline=later) else (1 if inherited.cancelled else 0))
    assert not inherited.cancelled
    assert _exit_code_of(pid, "the forked child did not finish") == 0  # 1: the parent's deadline fired in it


def _fork(child: Callable[[], int]) -> int:
    """``fork()``: the child runs ``child()`` and reports only through its exit code (3 if it raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads running
        pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = child()
        finally:
            os._exit(code)
    return pid


def _a_sync_deadline_fires(**deadline: float) -> bool:
    """Whether a sync scope's ``timeout`` or ``deadline`` fires (its hook runs) within 5 s."""
    fired = threading.Event()
    with RequestScope("child", parent=None, **deadline) as scope:  # type: ignore[arg-type]
        scope.on_cancel(fired.set)
        return fired.wait(5)


def _exit_code_of(pid: int, hung: str) -> int:
    """A forked child's exit code; one still running after 10 s is killed and the test fails with ``hung``."""
    for _ in range(1000):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(hung)


async def test_scope_cancelled_from_the_bodys_own_task_group_is_absorbed() -> None:
    """The same mix one level down: the body's own task group ends with a child's ScopeCancelled
    (and, on trio, the body's Cancelled) in one exception group."""

    async def call(scope: RequestScope) -> None:
        with contextlib.suppress(anyio.get_cancelled_exc_class()):
            await anyio.sleep_forever()
        assert scope.cancel_reason is not None
        raise ScopeCancelled(scope.cancel_reason, scope.name)

    with anyio.fail_after(10):
        async with RequestScope() as scope, anyio.create_task_group() as tg:
            tg.start_soon(call, scope)
            await anyio.lowlevel.checkpoint()
            await anyio.to_thread.run_sync(scope.cancel, "client_disconnected")
            await anyio.sleep_forever()
    assert scope.cancelled


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_task_cancel_still_travels_when_a_child_raised_scope_cancelled() -> None:
    """asyncio's task.cancel() (asyncio.timeout, frameworks) is edge-triggered: absorbing our own
    cancel and the child's ScopeCancelled must not swallow it."""
    import asyncio

    ready = anyio.Event()

    async def child(scope: RequestScope) -> None:
        ready.set()
        with contextlib.suppress(anyio.get_cancelled_exc_class()):
            await anyio.sleep_forever()
        assert scope.cancel_reason is not None
        raise ScopeCancelled(scope.cancel_reason, scope.name)

    task = asyncio.current_task()
    assert task is not None
    with anyio.fail_after(10):
        with pytest.raises(asyncio.CancelledError):
            async with RequestScope() as scope:
                scope.spawn(child, scope)
                await ready.wait()
                scope.cancel()
                task.cancel()
                await anyio.sleep_forever()
        task.uncancel()
    assert scope.cancelled
