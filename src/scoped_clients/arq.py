"""arq jobs that run in a scope whose id is the job id.

::

    from scoped_clients.arq import scoped_job
    from scoped_clients.redis import RedisCancelBus

    bus = RedisCancelBus.from_url(REDIS_URL)


    @scoped_job(bus=bus)
    async def summarize(ctx, doc_id: str) -> str:
        return await client.chat.completions.create(...)  # a scoped client: aborted at the socket


    class WorkerSettings:
        functions = [summarize]
        allow_abort_jobs = True  # for Job.abort()

Each run is ``async with RequestScope(name=<function>, id=<job id>, bus=bus)``.  What
cancels it, and how the job ends:

* ``await job.abort()``: arq itself notices an abort only when its poll loop next
  reads the ``arq:abort`` sorted set (every ``poll_delay``, 0.5 s by default) and then
  cancels the job's task.  A scoped job also looks, every ``abort_poll`` seconds
  (default 0.02, one pipelined ``ZSCORE`` per worker for all its running scoped jobs,
  only while some run), and cancels its scope at once (reason ``aborted``): the LLM
  call stops at the socket tens of ms after ``abort()`` instead of hundreds.  The job
  then idles until arq's own poll cancels its task, so that arq records it the way it
  records every abort (``abort()`` returns ``True``; ``job.result()`` raises
  ``CancelledError``).  ``abort_poll=None`` leaves aborts to arq alone (the scope is
  still cancelled, reason ``job_cancelled``, when arq cancels the task).
* ``await bus.cancel(job_id)`` from any process sharing the bus (a push, no poll):
  the job fails with ``JobCancelled`` (arq does not retry it; ``job.result()``
  raises it), as it does when the scope's own ``timeout=`` passes.

The scope's report is logged like a request's.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

try:
    from arq.constants import abort_jobs_ss
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('scoped_clients.arq needs arq: pip install "scoped-clients[arq]"') from exc

from ._bus import CancelBus, LazyLocalBus, check_bus, valid_scope_id
from ._exceptions import ScopedClientsError
from ._reasons import CancelReason
from ._scope import RequestScope

__all__ = ["JobCancelled", "scoped_job"]

logger = logging.getLogger("scoped_clients")

P = ParamSpec("P")
R = TypeVar("R")
JobFunction = Callable[Concatenate[dict[Any, Any], P], Awaitable[R]]

#: reason code of a scope cancelled because its job was aborted (``Job.abort()``)
ABORTED_CODE = "aborted"
#: reason code of a scope whose task arq cancelled before we saw why (abort, job timeout, shutdown)
TASK_CANCELLED_CODE = "job_cancelled"
#: default seconds between two looks at arq's abort set while scoped jobs run
ABORT_POLL = 0.02
#: seconds an aborted job waits for arq to cancel its task (arq's ``poll_delay`` is 0.5 s by default)
ABORT_WAIT = 10.0

#: this module's default bus: ``_local_bus()`` is the same ``LocalCancelBus`` each time
_local_bus = LazyLocalBus()


class JobCancelled(ScopedClientsError, Exception):
    """A scoped arq job's scope was cancelled (by the bus, or its own ``timeout=``).

    An ``Exception``, unlike ``ScopeCancelled``: arq records the job as failed with it and
    does not retry it.  ``job_id``: the job's id (its scope's id); ``code`` / ``message``: the
    cancel's reason.
    """

    def __init__(self, job_id: str, code: str, message: str = "") -> None:
        self.job_id, self.code, self.message = job_id, code, message
        super().__init__(f"job {job_id} was cancelled ({code}{': ' + message if message else ''})")

    def __reduce__(self) -> tuple[Any, ...]:  # arq pickles the result of a failed job
        return (type(self), (self.job_id, self.code, self.message))


@overload
def scoped_job(fn: JobFunction[P, R], /) -> JobFunction[P, R]: ...
@overload
def scoped_job(
    *,
    bus: CancelBus | None = None,
    name: str | None = None,
    timeout: float | None = None,
    abort_poll: float | None = ABORT_POLL,
) -> Callable[[JobFunction[P, R]], JobFunction[P, R]]: ...
def scoped_job(
    fn: JobFunction[P, R] | None = None,
    /,
    *,
    bus: CancelBus | None = None,
    name: str | None = None,
    timeout: float | None = None,
    abort_poll: float | None = ABORT_POLL,
) -> JobFunction[P, R] | Callable[[JobFunction[P, R]], JobFunction[P, R]]:
    """Run an arq job function (``async def job(ctx, ...)``) in ``RequestScope(id=ctx["job_id"])``.

    ``bus``: the cancel bus its scopes join (default: this process's ``LocalCancelBus``);
    ``name``: the scope's name (default: the function's); ``timeout``: the scope's
    timeout in seconds; ``abort_poll``: seconds between two looks at arq's abort set
    (``None``: leave aborts to arq's own poll).  Works bare (``@scoped_job``, ``fn`` being the
    job function) or called (``@scoped_job(bus=bus)``).
    """
    if abort_poll is not None and (
        isinstance(abort_poll, bool) or not isinstance(abort_poll, int | float) or abort_poll <= 0
    ):
        raise ValueError(f"abort_poll is a number of seconds > 0, or None to leave aborts to arq; got {abort_poll!r}")
    check_bus(bus, "scoped_job(bus=...)")

    def decorate(job: JobFunction[P, R]) -> JobFunction[P, R]:
        if not inspect.iscoroutinefunction(job):
            raise TypeError(f"scoped_job wraps arq job functions, `async def job(ctx, ...)`; {job!r} is not one")
        scope_name = name or getattr(job, "__qualname__", None) or repr(job)

        @functools.wraps(job)
        async def run(ctx: dict[Any, Any], /, *args: P.args, **kwargs: P.kwargs) -> R:
            job_id = ctx.get("job_id") if isinstance(ctx, dict) else None
            if not valid_scope_id(job_id):
                async with RequestScope(name=scope_name, timeout=timeout):
                    return await job(ctx, *args, **kwargs)
            assert isinstance(job_id, str)
            scope = RequestScope(name=scope_name, id=job_id, bus=bus or _local_bus(), timeout=timeout)
            watching = _watch_aborts(ctx.get("redis"), abort_poll, scope)
            try:
                async with scope:
                    try:
                        result = await job(ctx, *args, **kwargs)
                    except asyncio.CancelledError:
                        # arq cancelled the task (its own abort poll, the job's timeout, a shutdown)
                        scope.cancel(TASK_CANCELLED_CODE, "arq cancelled the job's task")
                        raise
            finally:
                if watching is not None:
                    watching()
            reason = scope.cancel_reason
            if reason is None:
                return result
            if reason.code == ABORTED_CODE:
                await _wait_for_arq(job_id)  # arq's poll cancels us: arq then records the abort itself
            raise JobCancelled(job_id, reason.code, reason.message)

        return run

    return decorate if fn is None else decorate(fn)


async def _wait_for_arq(job_id: str) -> None:
    await asyncio.sleep(ABORT_WAIT)  # normally ended by arq's CancelledError
    logger.warning(
        "scoped_clients: arq did not cancel aborted job %s within %s s (is allow_abort_jobs=True set on the "
        "worker?); it ends failed with JobCancelled",
        job_id,
        ABORT_WAIT,
    )


# ---------------------------------------------------------------- abort poll


def _watch_aborts(redis: Any, interval: float | None, scope: RequestScope) -> Callable[[], None] | None:
    if interval is None or redis is None or not callable(getattr(redis, "pipeline", None)):
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    poller = _AbortPoller.of(loop, redis, interval)
    return poller.watch(scope)


class _AbortPoller:
    """One per event loop and arq Redis pool: looks up every running scoped job in ``arq:abort``."""

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, redis: Any, interval: float) -> _AbortPoller:
        pollers = _pollers.setdefault(loop, {})
        key = (id(redis), interval)
        poller = pollers.get(key)
        if poller is None or poller.redis is not redis:
            poller = pollers[key] = cls(redis, interval)
        return poller

    def __init__(self, redis: Any, interval: float) -> None:
        self.redis = redis
        self.interval = interval
        self.scopes: dict[str, RequestScope] = {}
        self.task: asyncio.Task[None] | None = None
        self.failing = False

    def watch(self, scope: RequestScope) -> Callable[[], None]:
        self.scopes[scope.id] = scope
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="scoped_clients arq abort poll")

        def unwatch() -> None:
            if self.scopes.get(scope.id) is scope:
                del self.scopes[scope.id]

        return unwatch

    async def _run(self) -> None:
        while self.scopes:
            ids = list(self.scopes)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.zscore(abort_jobs_ss, job_id)
                    scores = await pipe.execute()
            except Exception as exc:
                if not self.failing:
                    self.failing = True
                    logger.warning(
                        "scoped_clients: looking up arq's aborted jobs failed (%r); arq's own poll still works", exc
                    )
            else:
                self.failing = False
                for job_id, score in zip(ids, scores, strict=True):
                    scope = self.scopes.get(job_id)
                    if score is not None and scope is not None:
                        scope.cancel(CancelReason(ABORTED_CODE, "arq Job.abort()"))
            await asyncio.sleep(self.interval)


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, float], _AbortPoller]] = (
    weakref.WeakKeyDictionary()
)
