"""A tool run owned by a scope: what ``scoped_clients.tools`` registers for each tool call and command."""

from __future__ import annotations

import logging
import threading
import time

import anyio

from ._loop import LoopHandle
from ._reasons import CancelReason
from ._registry import join
from ._report import CallRecord, Outcome
from ._scope import RequestScope, current_scope, registry

logger = logging.getLogger("scoped_clients")

#: seconds a sync tool's thread still running after the cancel gets to stop, once its
#: scope ends, before it is reported ``thread_leaked`` (a thread that checks its scope
#: every few ms stops 2-8 ms after the cancel; the wait does not block the event loop)
THREAD_GRACE = 0.05


class ToolCall:
    """A tool run registered with a scope (an ``Owned`` of its ``CallRegistry``)."""

    def __init__(self, scope: RequestScope, name: str, operation_kind: str) -> None:
        self.scope = scope
        self.registry = registry(scope)
        self.name = name
        self.kind = operation_kind
        self.loop = LoopHandle()
        self.started_at = time.monotonic()
        self.cancel_scope: anyio.CancelScope | None = None
        self.aborted: CancelReason | None = None
        self.orphan = False
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.detail: dict[str, object] = {}
        self.record: CallRecord | None = None
        self.done = False
        self.settled = anyio.Event()
        #: the caller was released (cancelled) while the tool's thread still ran: the
        #: verdict (stopped or leaked) waits for the thread, at most until the scope ends
        self.thread_running: threading.Event | None = None
        self.released_at = 0.0
        #: a sync tool's worker: set once the tool's function has returned or raised
        self.thread_done: threading.Event | None = None

    def abort(self, reason: CancelReason, *, orphan: bool = False) -> None:
        if self.done or self.aborted is not None or self.thread_running is not None:
            return
        self.aborted, self.orphan = reason, orphan
        self.loop.run(self._cancel)

    def _cancel(self) -> None:
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def final_record(self) -> CallRecord:
        if self.record is None:
            self.record = CallRecord(
                provider="tool",
                operation=self.name,
                model=None,
                outcome=self.outcome or "aborted",
                started_at=self.started_at,
                duration=time.monotonic() - self.started_at,
                cancel_reason=self.aborted.code if self.aborted else None,
                orphan=self.orphan,
                error=self.error,
                detail={"kind": self.kind, **self.detail},
            )
        return self.record

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.settled.set()
        self.outcome = outcome
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
        self.registry.release(self, self.final_record())

    def refused(self, reason: CancelReason) -> CallRecord:
        """The scope refused the run: its record."""
        self.aborted, self.outcome, self.done = reason, "refused", True
        return self.final_record()

    # ------------------------------------------------- a sync tool's thread

    def settle_aborted(self) -> None:
        """The caller was cancelled with the tool's thread (if any) already stopped: ``aborted``, not leaked.

        However the cancellation reached the caller: through run_tool's own cancel scope, or
        as an exception from an enclosing one (the scope's body, a ``move_on_after``), which
        anyio and trio deliver to the outermost cancelled scope when both are cancelled.
        """
        if self.thread_done is not None and self.thread_done.is_set():
            self.detail["thread_leaked"] = False
            self.detail["ran_after_cancel_s"] = 0.0
        self.finish("aborted")

    def release_thread(self, running: threading.Event) -> None:
        """The caller was released while the tool's thread still runs: settle when it stops, or leaked."""
        self.released_at = time.monotonic()
        self.thread_running = running

    def thread_stopped(self) -> None:
        """On the loop, posted by the tool's thread as it ends."""
        if self.thread_running is None or self.done:
            return
        self.detail["thread_leaked"] = False
        self.detail["ran_after_cancel_s"] = round(time.monotonic() - self.released_at, 6)
        self.finish("aborted")

    def _thread_verdict(self) -> None:
        if self.done or self.thread_running is None:
            return
        if self.thread_running.is_set():  # stopped; its posted callback has not run yet
            self.thread_stopped()
            return
        self.detail["thread_leaked"] = True
        logger.warning("tool %s: its thread is still running after the cancel (Python cannot stop it)", self.name)
        self.finish("aborted")

    # --------------------------------------------------------- scope exit

    async def aclose_on_exit(self) -> None:
        """The scope is ending: let the aborted tool settle (a command's group being stopped).

        A sync tool's thread gets ``THREAD_GRACE`` seconds to stop (awaited, the loop runs
        on) before it is reported ``thread_leaked``.
        """
        if threading.get_ident() != self.loop.thread_id:
            return
        if self.thread_running is not None:
            with anyio.move_on_after(THREAD_GRACE):
                await self.settled.wait()
            self._thread_verdict()
            return
        await self.settled.wait()

    def close_on_exit(self) -> None:
        self._thread_verdict()


def admit_tool(name: str, kind: str) -> ToolCall | None:
    scope = current_scope()
    if scope is None:
        return None
    call = ToolCall(scope, name, kind)
    join(call.registry, call, call.refused)
    return call
