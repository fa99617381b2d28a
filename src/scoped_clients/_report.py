"""Reports: one ``CallRecord`` per wrapped call, one ``ScopeReport`` per scope.

A report is produced exactly once, when the scope ends, and handed to every
registered sink.  The default sink writes one structured line on the
``scoped_clients`` logger::

    scoped_clients.report {"scope": "chat", "outcome": "cancelled", "reason": "client_disconnected",
                           "tokens_saved": 412, ...}

so that an operator can ``grep scoped_clients.report`` and sum ``tokens_saved``.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from ._calls import UsageSource
from ._savings import FigureSource

logger = logging.getLogger("scoped_clients")

Outcome = Literal["completed", "aborted", "refused", "failed"]
ScopeOutcome = Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What one wrapped call did.  Token figures say where they come from."""

    #: who served the call: ``"openai"``, ``"anthropic"``, ``"cohere"``, ``"qdrant"``, ``"tool"``, ``"http"``
    provider: str
    #: what the call did, in the vendor's terms (``"chat.completions"``, ``"query_points"``...)
    operation: str
    #: the model the request named, if any
    model: str | None
    #: ``"completed"``, ``"aborted"`` (stopped in flight), ``"refused"`` (never sent) or ``"failed"``
    outcome: Outcome
    #: ``time.monotonic()`` when the call started
    started_at: float
    #: seconds from the start to the call settled
    duration: float
    #: input tokens (``None``: unknown, e.g. a refused call)
    tokens_in: int | None = None
    #: output tokens received
    tokens_out: int = 0
    #: where tokens_in / tokens_out come from: the provider's usage, or our count
    tokens_in_source: UsageSource = "estimated"
    #: where ``tokens_out`` comes from: ``"provider"`` (its usage) or ``"estimated"`` (our count)
    tokens_out_source: UsageSource = "estimated"
    #: aborted calls only: expected tokens the provider did not produce
    tokens_saved: int | None = None
    #: aborted calls only: the request's own bound minus ``tokens_produced``
    tokens_saved_max: int | None = None
    #: what gave the expected output length behind ``tokens_saved``: ``model_history``,
    #: ``provider_history``, ``default`` (the prior: nothing learned fits) or ``finished``
    saved_method: str | None = None
    #: the call's shape behind ``tokens_saved``: ``text``, ``tool_call``, or None (both: the model chose)
    saved_shape: str | None = None
    #: how each savings figure was obtained: ``exact``, ``estimate`` or ``upper_bound``
    tokens_saved_source: FigureSource | None = None
    #: how ``tokens_saved_max`` was obtained: ``upper_bound`` (or ``exact``)
    tokens_saved_max_source: FigureSource | None = None
    #: aborted calls only: output tokens the provider produced before the abort, as far as we can tell
    #: (what a stream delivered; for a non-streamed call, elapsed time times the model's learned rate)
    tokens_produced: int | None = None
    #: how ``tokens_produced`` was obtained: ``estimate`` (or ``exact``)
    tokens_produced_source: FigureSource | None = None
    #: tokens_saved in money, with a price table installed (``scoped_clients.set_prices``)
    cost_saved: float | None = None
    #: aborted and refused calls: the reason code of the cancel (``"client_disconnected"``, ``"timeout"``...)
    cancel_reason: str | None = None
    #: aborted calls: ``time.monotonic()`` of the cancel that stopped the call (cancel latency:
    #: ``started_at + duration - cancelled_at``)
    cancelled_at: float | None = None
    #: aborted because the scope ended while nobody awaited the call
    orphan: bool = False
    #: failed calls: what went wrong (``"HTTP 500"``, the exception)
    error: str | None = None
    #: the provider's finish reason, when it arrived (``"stop"``, ``"length"``...)
    finish_reason: str | None = None
    #: vendor units other than tokens (search units, billed units...)
    units: dict[str, float] = field(default_factory=dict)
    #: anything else the vendor's profile recorded
    detail: dict[str, object] = field(default_factory=dict)


class CallRecordDraft:
    """A ``CallRecord`` being filled in by the scoped transport, which builds one per HTTP call.

    The same slots, writable: the transport sets every one of them, then ``finished()`` turns the
    draft into the ``CallRecord`` itself (the class is swapped; the object is then frozen like any
    other record, equal to and hashed like one built by the constructor).  The frozen dataclass's
    ``__init__`` sets each of the 26 fields through ``object.__setattr__``: 3.2 us a record, against
    0.9 this way.
    """

    __slots__ = CallRecord.__slots__

    def finished(self) -> CallRecord:
        self.__class__ = CallRecord  # type: ignore[assignment]
        return self  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ScopeReport:
    """The final account of one scope, built once when its block exits."""

    #: the scope's name (``ScopeMiddleware``: the method and path)
    scope: str | None
    #: the scope's id (``scope.id``)
    scope_id: str
    #: ``"completed"``, ``"cancelled"`` or ``"failed"`` (an error left the block)
    outcome: ScopeOutcome
    #: the cancel's reason code, if it was cancelled
    cancel_reason: str | None
    #: the cancel's message, if it had one
    cancel_message: str | None
    #: ``time.monotonic()`` when the scope opened
    started_at: float
    #: seconds the scope was open
    duration: float
    #: one record per call, in the order they started
    calls: tuple[CallRecord, ...]

    def _sum(self, name: str) -> int:
        return sum(int(getattr(c, name) or 0) for c in self.calls)

    @property
    def tokens_in(self) -> int:
        """Input tokens of every call, summed."""
        return self._sum("tokens_in")

    @property
    def tokens_out(self) -> int:
        """Output tokens received, summed."""
        return self._sum("tokens_out")

    @property
    def tokens_saved(self) -> int:
        """The ``tokens_saved`` estimates of the aborted calls, summed (see ``source_of``)."""
        return self._sum("tokens_saved")

    @property
    def tokens_saved_max(self) -> int:
        """The ``tokens_saved_max`` upper bounds of the aborted calls, summed."""
        return self._sum("tokens_saved_max")

    @property
    def tokens_produced(self) -> int:
        """Output the providers produced before the aborts, summed."""
        return self._sum("tokens_produced")

    def source_of(self, name: str) -> FigureSource | None:
        """How the sum of the savings figure ``name`` (``"tokens_saved"``, ``"tokens_saved_max"``,
        ``"tokens_produced"``) was obtained: the weakest of its parts.

        A sum of exact figures is exact; exact and upper bounds sum to an upper
        bound; anything with an estimate in it is an estimate.  None when no call
        has the figure.
        """
        sources = {getattr(c, f"{name}_source") for c in self.calls if getattr(c, name) is not None}
        if not sources:
            return None
        if sources <= {"exact"}:
            return "exact"
        if sources <= {"exact", "upper_bound"}:
            return "upper_bound"
        return "estimate"

    @property
    def orphans(self) -> int:
        """How many calls were orphans (still in flight when the block ended normally)."""
        return sum(1 for c in self.calls if c.orphan)

    def count(self, outcome: Outcome) -> int:
        """How many calls ended with ``outcome`` (``"completed"``, ``"aborted"``, ``"refused"``, ``"failed"``)."""
        return sum(1 for c in self.calls if c.outcome == outcome)

    def summary(self) -> dict[str, object]:
        """The one-line form the default sink logs (stable keys)."""
        return {
            "scope": self.scope,
            "scope_id": self.scope_id,
            "outcome": self.outcome,
            "reason": self.cancel_reason,
            "duration_ms": round(self.duration * 1000, 3),
            "calls": len(self.calls),
            "completed": self.count("completed"),
            "aborted": self.count("aborted"),
            "refused": self.count("refused"),
            "failed": self.count("failed"),
            "orphans": self.orphans,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_saved": self.tokens_saved,
            "tokens_saved_max": self.tokens_saved_max,
            "tokens_saved_source": self.source_of("tokens_saved"),
            "tokens_saved_max_source": self.source_of("tokens_saved_max"),
            "tokens_produced": self.tokens_produced,
        }

    def to_dict(self) -> dict[str, object]:
        """``summary()`` with every call record (``"calls"``), JSON-ready."""
        data = self.summary()
        data["calls"] = [asdict(c) for c in self.calls]
        return data


ReportSink = Callable[[ScopeReport], object]

_sinks: list[ReportSink] = []
_sinks_lock = threading.Lock()


def log_sink(report: ScopeReport) -> None:
    """The default sink: one structured line on the ``scoped_clients`` logger."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("scoped_clients.report %s", json.dumps(report.summary(), separators=(",", ":")))


def add_report_sink(sink: ReportSink) -> Callable[[], None]:
    """Register ``sink(report)``, called once per ended scope.  Returns a function that removes it.

    Sinks run synchronously in the task or thread that ends the scope: keep them
    quick (queue the report if you ship it over the network).  A sink that raises
    is logged and never disturbs the request.
    """
    if not callable(sink):
        raise TypeError(f"add_report_sink() takes a function called with each ScopeReport, not {type(sink).__name__}")
    if inspect.iscoroutinefunction(sink) or inspect.iscoroutinefunction(getattr(sink, "__call__", None)):  # noqa: B004
        raise TypeError(
            f"add_report_sink({sink!r}): sinks are called synchronously, so an async sink would never be "
            f"awaited; pass a sync function that queues the report (e.g. with loop.call_soon_threadsafe)"
        )
    with _sinks_lock:
        _sinks.append(sink)

    def remove() -> None:
        with _sinks_lock:
            if sink in _sinks:
                _sinks.remove(sink)

    return remove


def reporting() -> bool:
    """Whether an ended scope's report is wanted at once: a sink is registered or the log takes it."""
    return bool(_sinks) or logger.isEnabledFor(logging.INFO)


def emit(report: ScopeReport) -> None:
    log_sink(report)
    with _sinks_lock:
        sinks = list(_sinks)
    for sink in sinks:
        try:
            sink(report)
        except Exception:
            logger.exception("scoped_clients report sink %r failed", sink)
