"""``LoopHandle.soon``: what the loop's own thread posts runs in order, each in its own context, none lost.

A mass cancel posts each scope's body cancel with ``soon``: from the loop's thread these are batched
into one loop callback (``_loop._Batch``); from another thread each is its own ``post``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import anyio
import pytest

from scoped_clients import RequestScope
from scoped_clients._loop import LoopHandle

pytestmark = pytest.mark.anyio

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def _handle_for(name: str) -> LoopHandle:
    """A handle made in a context where ``who`` is ``name`` (a scope's handle captures its context)."""
    made: list[LoopHandle] = []

    async def make() -> None:
        who.set(name)
        made.append(LoopHandle())

    async with anyio.create_task_group() as tg:
        tg.start_soon(make)
    return made[0]


async def test_posts_from_the_loop_thread_run_in_order_each_in_its_handles_context() -> None:
    first, second = await _handle_for("first"), await _handle_for("second")
    seen: list[tuple[int, str]] = []
    done = anyio.Event()

    def note(i: int) -> None:
        seen.append((i, who.get()))

    for i in range(6):
        (first if i % 2 == 0 else second).soon(note, i)
    first.soon(lambda _: done.set(), None)
    assert seen == []  # nothing runs inline: the loop runs them on a later turn
    with anyio.fail_after(5):
        await done.wait()
    expected = [(i, "first" if i % 2 == 0 else "second") for i in range(6)]
    # trio's run_sync_soon callbacks run in trio's system context, asyncio's in the handle's
    assert [i for i, _ in seen] == list(range(6))
    if isinstance(first._native, asyncio.AbstractEventLoop):
        assert seen == expected


async def test_what_a_batched_callback_posts_runs_on_a_later_turn() -> None:
    handle = await _handle_for("h")
    seen: list[str] = []
    done = anyio.Event()

    def outer(_: object) -> None:
        seen.append("outer")
        handle.soon(inner, None)

    def inner(_: object) -> None:
        seen.append("inner")
        done.set()

    handle.soon(outer, None)
    with anyio.fail_after(5):
        await done.wait()
    assert seen == ["outer", "inner"]


async def test_a_post_from_another_thread_is_not_batched_and_still_runs() -> None:
    handle = await _handle_for("h")
    ran_on: list[int] = []
    done = anyio.Event()

    def fn(_: object) -> None:
        ran_on.append(threading.get_ident())
        done.set()

    await anyio.to_thread.run_sync(handle.soon, fn, None)
    with anyio.fail_after(5):
        await done.wait()
    assert ran_on == [handle.thread_id]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_that_raises_goes_to_the_loops_handler_and_the_rest_still_run(anyio_backend: str) -> None:
    handle = await _handle_for("h")
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
    seen: list[object] = []
    done = anyio.Event()

    def boom(_: object) -> None:
        raise ValueError("boom")

    def last(_: object) -> None:
        seen.append("posted while the batch ran")
        done.set()

    def post_last(_: object) -> None:
        handle.soon(last, None)

    try:
        handle.soon(seen.append, 1)
        handle.soon(post_last, None)  # while the batch runs: ``last`` goes after the batch's own calls
        handle.soon(boom, None)
        handle.soon(seen.append, 2)
        with anyio.fail_after(5):
            await done.wait()
    finally:
        loop.set_exception_handler(None)
    assert seen == [1, 2, "posted while the batch ran"]
    assert [str(e) for e in errors] == ["boom"]


async def test_a_thousand_scopes_cancelled_in_one_turn_all_end_cancelled() -> None:
    scopes: list[RequestScope] = []
    entered = anyio.Event()

    async def body(i: int) -> None:
        async with RequestScope(f"s{i}") as scope:
            scopes.append(scope)
            if len(scopes) == 1000:
                entered.set()
            await anyio.sleep_forever()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(body, i)
            await entered.wait()
            for scope in scopes:
                scope.cancel("shutdown")
    assert all(s.report is not None and s.report.outcome == "cancelled" for s in scopes)


def test_a_batch_does_not_keep_its_loop_alive() -> None:
    """A loop's batch is the value of its entry in a weak dictionary keyed by that loop: it must hold it weakly."""
    import gc
    import weakref

    loops: list[weakref.ref[object]] = []

    async def cancel_one() -> None:
        async with RequestScope() as scope:
            assert scope._loop is not None
            loops.append(weakref.ref(scope._loop._native))
            scope.cancel("shutdown")  # from the loop's thread: through its batch

    for backend in ("asyncio", "trio"):
        anyio.run(cancel_one, backend=backend)
    gc.collect()
    assert len(loops) == 2 and [ref() for ref in loops] == [None, None]
