"""A call's ``CallRecord``: what it did, and for an aborted generation what that saved."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._report import CallRecord, Outcome
from .._savings import SavingsEstimate, call_shape, default_estimator, get_prices
from .._vendors import generates_tokens

if TYPE_CHECKING:
    from ._call import HttpCall


def build_record(call: HttpCall) -> CallRecord:
    meter = call.meter
    info = call.info
    # A call still in flight when its record is taken (the scope is ending) was aborted.
    outcome: Outcome = call.outcome or "aborted"
    now = time.monotonic()
    received = meter.tokens_out  # read once: a reader in another thread may still feed the meter
    savings = _savings_of(call, outcome, now, received)
    saved = None if savings is None else savings.tokens_saved
    cost = None if saved is None else get_prices().cost(info.model, 0, saved)
    detail = dict(call.detail)
    if call.status_code is not None:
        detail["status_code"] = call.status_code
    return CallRecord(
        provider=info.provider,
        operation=info.operation,
        model=info.model,
        outcome=outcome,
        started_at=call.started_at,
        duration=now - call.started_at,
        tokens_in=meter.tokens_in,
        tokens_out=received,
        tokens_in_source=meter.input_source,
        tokens_out_source=meter.output_source,
        tokens_saved=saved,
        tokens_saved_max=None if savings is None else savings.tokens_saved_max,
        saved_method=None if savings is None else savings.method,
        saved_shape=None if savings is None else savings.shape,
        tokens_saved_source=None if savings is None else savings.tokens_saved_source,
        tokens_saved_max_source=None if savings is None else savings.tokens_saved_max_source,
        tokens_produced=None if savings is None else savings.tokens_produced,
        tokens_produced_source=None if savings is None else savings.tokens_produced_source,
        cost_saved=cost,
        cancel_reason=call.aborted.code if call.aborted is not None else None,
        cancelled_at=call.aborted.time if call.aborted is not None else None,
        orphan=call.orphan,
        error=call.error,
        finish_reason=meter.finish_reason,
        units=dict(meter.units),
        detail=detail,
    )


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
