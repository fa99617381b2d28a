"""scoped_retry: tenacity retries that stop with the scope, measured at the provider."""

from __future__ import annotations

import threading
import time

import anyio
import httpx2
import pytest
import tenacity

import scoped_clients.httpx2 as scoped
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.provider import LocalProvider
from scoped_clients.retry import scoped_retry


@pytest.mark.anyio
async def test_backoff_ends_the_moment_the_scope_is_cancelled(provider: LocalProvider) -> None:
    attempts: list[float] = []
    failed_once = anyio.Event()

    @scoped_retry(wait=tenacity.wait_fixed(60), stop=tenacity.stop_after_attempt(5))
    async def flaky() -> None:
        attempts.append(time.monotonic())
        failed_once.set()
        async with scoped.AsyncClient() as client:
            (await client.post(provider.url + "/v1/chat/completions", json={"model": "error-500"})).raise_for_status()

    caught: list[BaseException] = []

    async def caller() -> None:
        try:
            await flaky()
        except ScopeCancelled as exc:
            caught.append(exc)

    with anyio.fail_after(10):  # a 60 s backoff would blow this watchdog
        async with anyio.create_task_group() as tg, RequestScope() as scope:
            tg.start_soon(caller)  # outside the body, like a fire-and-forget task
            await failed_once.wait()
            await anyio.to_thread.run_sync(provider.wait_for_requests, 1)
            scope.cancel("client_disconnected")
    assert len(attempts) == 1 and len(provider.requests) == 1
    assert len(caught) == 1


@pytest.mark.anyio
async def test_scope_cancelled_is_never_retried(provider: LocalProvider) -> None:
    calls = 0

    @scoped_retry(retry=tenacity.retry_if_exception_type(BaseException), stop=tenacity.stop_after_attempt(5))
    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        current = RequestScope.__module__  # noqa: F841 - keep the body non-trivial
        raise ScopeCancelled(__import__("scoped_clients").CancelReason("client_disconnected"))

    with pytest.raises(ScopeCancelled):
        await cancelled()
    assert calls == 1


@pytest.mark.anyio
async def test_gives_up_instead_of_sleeping_past_the_deadline(provider: LocalProvider) -> None:
    attempts = 0

    @scoped_retry(wait=tenacity.wait_fixed(30), stop=tenacity.stop_after_attempt(5))
    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise httpx2.ConnectError("down")

    with anyio.fail_after(10):
        async with RequestScope(timeout=20):
            with pytest.raises(httpx2.ConnectError):  # the original error, not tenacity.RetryError
                await flaky()
    assert attempts == 1


@pytest.mark.anyio
async def test_retries_normally_when_not_cancelled() -> None:
    attempts = 0

    @scoped_retry(wait=tenacity.wait_none(), stop=tenacity.stop_after_attempt(3))
    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ValueError("again")
        return "ok"

    async with RequestScope():
        assert await flaky() == "ok"
    assert attempts == 3


def test_sync_backoff_ends_when_cancelled_from_another_thread() -> None:
    failed = threading.Event()

    @scoped_retry(wait=tenacity.wait_fixed(60), stop=tenacity.stop_after_attempt(3))
    def flaky() -> None:
        failed.set()
        raise ValueError("down")

    scope = RequestScope()
    caught: list[BaseException] = []

    def worker() -> None:
        with scope:
            try:
                flaky()
            except ScopeCancelled as exc:
                caught.append(exc)
                raise

    thread = threading.Thread(target=worker)
    thread.start()
    assert failed.wait(10)
    scope.cancel("client_disconnected")
    thread.join(10)
    assert not thread.is_alive() and len(caught) == 1
