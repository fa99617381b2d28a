"""A call's ``CallRecord``: what it did, and for an aborted generation what that saved."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._report import CallRecord, CallRecordDraft, Outcome
from .._savings import SavingsEstimate, call_shape, default_estimator, get_prices
from .._vendors import generates_tokens

if TYPE_CHECKING:
    from ._call import HttpCall


def build_record(call: HttpCall, *, settled: bool = False) -> CallRecord:
    """The call's record.  ``settled``: the call is done and nothing writes its ``detail`` any more,
    so the record takes that dict itself rather than a copy (a call still in flight at the scope's
    exit may yet note ``closed_early``: its record gets a copy)."""
    meter = call.meter
    info = call.info
    # A call still in flight when its record is taken (the scope is ending) was aborted.
    outcome: Outcome = call.outcome or "aborted"
    now = time.monotonic()
    received = meter.tokens_out  # read once: a reader in another thread may still feed the meter
    record: Any = CallRecordDraft()  # every field is set below (tests/test_report_draft.py)
    record.provider = info.provider
    record.operation = info.operation
    record.model = info.model
    record.outcome = outcome
    record.started_at = call.started_at
    record.duration = now - call.started_at
    record.tokens_in = meter.tokens_in
    record.tokens_out = received
    record.tokens_in_source = meter.input_source
    record.tokens_out_source = meter.output_source
    # Only an aborted call has savings, and only a completed one with output teaches the estimator.
    savings = _savings_of(call, outcome, now, received) if outcome == "aborted" or received > 0 else None
    if savings is None:
        record.tokens_saved = record.tokens_saved_max = record.saved_method = record.saved_shape = None
        record.tokens_saved_source = record.tokens_saved_max_source = None
        record.tokens_produced = record.tokens_produced_source = record.cost_saved = None
    else:
        saved = record.tokens_saved = savings.tokens_saved
        record.tokens_saved_max = savings.tokens_saved_max
        record.saved_method = savings.method
        record.saved_shape = savings.shape
        record.tokens_saved_source = savings.tokens_saved_source
        record.tokens_saved_max_source = savings.tokens_saved_max_source
        record.tokens_produced = savings.tokens_produced
        record.tokens_produced_source = savings.tokens_produced_source
        record.cost_saved = None if saved is None else get_prices().cost(info.model, 0, saved)
    aborted = call.aborted
    record.cancel_reason = None if aborted is None else aborted.code
    record.cancelled_at = None if aborted is None else aborted.time
    record.orphan = call.orphan
    record.error = call.error
    record.finish_reason = meter.finish_reason
    record.units = dict(meter.units)
    detail = record.detail = call.detail if settled else dict(call.detail)
    if call.status_code is not None:
        detail["status_code"] = call.status_code
    finished: CallRecord = record.finished()
    return finished


def _savings_of(call: HttpCall, outcome: Outcome, now: float, received: int) -> SavingsEstimate | None:
    """An aborted generation's savings figures; a completed one teaches the estimator instead.

    What the caller received is what the provider produced only for a stream it
    was reading when the abort came (the meter reads the wire format, so a
    non-streamed call sent as a stream counts too).  For anything else (a
    non-streamed body, which arrives only at the end; a stream whose headers had
    not arrived; an orphan nobody was reading) the estimator infers the output
    produced from the time the call ran before the abort.
    """
    meter, info = call.meter, call.info
    estimator = default_estimator()
    requested = info.extra.get("shape", "text")
    shape = call_shape(requested, meter.tool_calls, meter.finish_reason, output_seen=meter.streamed and received > 0)
    if outcome == "completed":
        if received > 0:
            seconds = now - call.started_at
            chosen = requested is None
            estimator.observe(
                info.provider,
                info.model,
                received,
                seconds,
                operation=info.operation,
                shape=shape or "text",
                chosen=chosen,
            )
        return None
    if outcome != "aborted" or not (received or generates_tokens(info.provider, info.operation)):
        return None
    aborted_at = now if call.aborted is None else min(now, call.aborted.time)
    # Several choices (OpenAI's n): the bound is per choice, and the first finish reason is not the end.
    choices = info.extra.get("choices", 1)
    choices = choices if isinstance(choices, int) and choices > 1 else 1
    return estimator.estimate(
        info.provider,
        info.model,
        received,
        None if info.max_tokens is None else info.max_tokens * choices,
        streamed=meter.streamed and call.status_code is not None and not call.orphan,
        elapsed=max(0.0, aborted_at - call.started_at),
        finished=meter.finish_reason is not None and choices == 1,
        operation=info.operation,
        shape=shape,
    )
