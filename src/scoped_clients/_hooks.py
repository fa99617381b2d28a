"""A scope's ``on_cancel`` hooks: kept until the cancel, then taken once and run.

Each hook runs once; an error in one is logged and never stops the others.
Sync hooks run inline; async hooks run shielded, each bounded by the scope's
``hook_timeout``.  When they run (inline at the cancel, in a task started by
the cancel, or at the block's exit) is the scope's business (``_scope``).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable

import anyio

logger = logging.getLogger("scoped_clients")

Hook = Callable[[], object] | Callable[[], Awaitable[object]]


class NoHooks:
    """The hooks of a scope that has none yet (most scopes never get one): nothing to run."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def clear(self) -> None:
        pass

    def run_sync(self) -> None:
        pass

    async def run_async(self) -> None:
        pass


#: shared by every scope until its first ``on_cancel()``
NO_HOOKS = NoHooks()


class Hooks:
    """The hooks of one scope (``owner``, named in the log lines), guarded by the scope's lock."""

    __slots__ = ("_hooks", "_lock", "_owner", "context", "timeout")

    def __init__(self, owner: object, lock: threading.RLock, timeout: float) -> None:
        self._owner = weakref.ref(owner)  # for the log lines; no reference cycle with the scope
        self._lock = lock
        self._hooks: list[Hook] = []
        #: seconds each async hook may take
        self.timeout = timeout
        #: where the async hooks run (their task is started in it): the first hook's registration's
        self.context = contextvars.copy_context()

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def add(self, hook: Hook) -> None:
        """Keep ``hook`` (the caller holds the scope's lock and has checked its state)."""
        self._hooks.append(hook)

    def clear(self) -> None:
        self._hooks.clear()

    def take(self) -> list[Hook]:
        """The hooks not run yet, each handed out once."""
        with self._lock:
            hooks, self._hooks = self._hooks, []
            return hooks

    def run_sync(self) -> None:
        owner = self._owner()
        for hook in self.take():
            try:
                result = hook()
                if isinstance(result, Awaitable):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    logger.error("on_cancel hook %r is async but %r is a sync scope; use a sync hook", hook, owner)
            except Exception:
                logger.exception("on_cancel hook %r of %r failed", hook, owner)

    async def run_async(self) -> None:
        owner = self._owner()
        interrupted: BaseException | None = None
        for hook in self.take():
            try:
                with anyio.move_on_after(self.timeout, shield=True) as bound:
                    try:
                        result = hook()
                        if isinstance(result, Awaitable):
                            await result
                    except Exception:
                        logger.exception("on_cancel hook %r of %r failed", hook, owner)
            except anyio.get_cancelled_exc_class() as exc:
                # A native cancel (asyncio's task.cancel(): a shield does not hold it off) cut this hook
                # short: the others still run, then the cancel goes on.
                logger.error("on_cancel hook %r of %r was interrupted by a cancel of its task", hook, owner)
                if interrupted is None:
                    interrupted = exc
                continue
            if bound.cancelled_caught:
                logger.error("on_cancel hook %r of %r did not finish within %ss", hook, owner, self.timeout)
        if interrupted is not None:
            raise interrupted
