"""Retries that respect the scope, on tenacity (``pip install scoped-clients[retry]``).

``@scoped_retry(...)`` takes tenacity's arguments and works on sync and async
functions.  On top of what you ask for, it:

* never retries ``ScopeCancelled`` (a ``BaseException``: tenacity's default
  ``retry_if_exception_type()`` only sees ``Exception``; a ``retry=`` predicate
  you pass is additionally guarded);
* stops, re-raising the last error, when the next backoff would end past the
  scope's deadline;
* sleeps with ``scoped_clients.retry.sleep`` / ``sleep_sync``: a backoff ends
  with ``ScopeCancelled`` the moment the scope is cancelled, even in a task or
  thread outside the scope's body.

When to use it instead of the SDK's ``max_retries``: the SDKs' own retries are
fine for transient HTTP errors of one call (and never retry a cancelled one).
Use ``scoped_retry`` around *your* steps (a pipeline stage, a tool, a call
with your own validation) and whenever backoffs can be long: an SDK's backoff
sleep is not tied to the scope, ``scoped_retry``'s is, and it gives up rather
than sleep past the request's deadline.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from ._exceptions import ScopeCancelled
from ._loop import LoopHandle
from ._reasons import CancelReason
from ._registry import join
from ._report import CallRecord
from ._scope import RequestScope, current_scope, registry

try:
    import tenacity
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("scoped_clients.retry needs tenacity: pip install 'scoped-clients[retry]'") from exc

__all__ = ["scoped_retry", "sleep", "sleep_sync", "stop_with_scope"]

F = TypeVar("F", bound=Callable[..., Any])


class _Waiter:
    """A wait registered with a scope: woken by the cancel, never recorded as a call."""

    def __init__(self, scope: RequestScope, is_async: bool) -> None:
        self.scope = scope
        self.loop = LoopHandle() if is_async else None
        self.cancel_scope: anyio.CancelScope | None = None
        self.event = threading.Event()
        self.reason: CancelReason | None = None

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None:
        self.reason = reason
        self.event.set()
        if self.loop is not None:
            self.loop.run(self._wake)

    def _wake(self) -> None:
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def final_record(self) -> CallRecord | None:
        return None

    async def aclose_on_exit(self) -> None:
        return None

    def close_on_exit(self) -> None:
        return None


def _unrecorded(reason: CancelReason) -> None:
    """A refused wait is not a call: nothing to record (the caller gets ``ScopeCancelled``)."""
    return None


async def sleep(seconds: float) -> None:
    """``anyio.sleep(seconds)`` that ends with ``ScopeCancelled`` as soon as the ambient scope is cancelled."""
    scope = current_scope()
    if scope is None:
        await anyio.sleep(seconds)
        return
    waiter = _Waiter(scope, is_async=True)
    owner = registry(scope)
    join(owner, waiter, _unrecorded)
    try:
        with anyio.CancelScope() as cancel_scope:
            waiter.cancel_scope = cancel_scope
            if waiter.reason is not None:
                cancel_scope.cancel()
            await anyio.sleep(seconds)
    finally:
        owner.release(waiter, None)
    if waiter.reason is not None:
        raise ScopeCancelled(waiter.reason, scope.name)


def sleep_sync(seconds: float) -> None:
    """``time.sleep(seconds)`` that ends with ``ScopeCancelled`` as soon as the ambient scope is cancelled (any
    thread)."""
    scope = current_scope()
    if scope is None:
        threading.Event().wait(seconds)
        return
    waiter = _Waiter(scope, is_async=False)
    owner = registry(scope)
    join(owner, waiter, _unrecorded)
    try:
        waiter.event.wait(seconds)
    finally:
        owner.release(waiter, None)
    if waiter.reason is not None:
        raise ScopeCancelled(waiter.reason, scope.name)


class stop_with_scope(tenacity.stop.stop_base):
    """Stop (re-raising the last error) when the next sleep would end past the scope's deadline.

    A cancelled or ended scope does not "stop": the backoff sleep raises
    ``ScopeCancelled`` at once, so the caller sees the cancellation, not the last error.
    """

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        scope = current_scope()
        remaining = None if scope is None or scope.cancelled else scope.remaining()
        return remaining is not None and retry_state.upcoming_sleep >= remaining


def _never_cancellations(retry: Any) -> Any:
    def predicate(retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed and isinstance(outcome.exception(), ScopeCancelled):
            return False
        return bool(retry(retry_state))

    return predicate


def scoped_retry(**kwargs: Any) -> Callable[[F], F]:
    """``tenacity.retry`` that respects the ambient scope (see the module docstring)."""
    stop = kwargs.pop("stop", None)
    kwargs["stop"] = stop_with_scope() if stop is None else tenacity.stop_any(stop, stop_with_scope())
    kwargs["retry"] = _never_cancellations(kwargs.get("retry", tenacity.retry_if_exception_type()))
    kwargs.setdefault("reraise", True)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            retrying: Any = tenacity.AsyncRetrying(sleep=sleep, **kwargs)
        else:
            retrying = tenacity.Retrying(sleep=sleep_sync, **kwargs)
        wrapped = retrying.wraps(fn)
        return functools.wraps(fn)(wrapped)  # type: ignore[return-value]

    return decorate
