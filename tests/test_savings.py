"""Savings figures never claim more than was saved, and say how they were obtained.

The provider's log is the truth: ``len(log.units)`` is what it produced for the
call; with ``max_tokens`` M and a model longer than M it would have produced M,
so ``M - len(log.units)`` tokens were really saved.
"""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from _helpers import cancel_sync_call, read_chat_stream, wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients._report import CallRecord, ScopeReport
from scoped_clients._savings import RateModel, SavingsEstimator, default_estimator
from scoped_clients._transport._record import _savings_of
from scoped_clients._vendors.openai import ChatStreamMeter, OpenAIProfile
from scoped_clients.openai import AsyncOpenAI, OpenAI
from scoped_clients.provider import LocalProvider

MAX_TOKENS = 300
MESSAGES: Any = [{"role": "user", "content": "go"}]
FIGURES = ("tokens_saved", "tokens_saved_max", "tokens_produced")


def _sources(record: CallRecord) -> dict[str, object]:
    return {name: getattr(record, f"{name}_source") for name in FIGURES}


def _teach_rate(model: str, tokens_per_second: float) -> None:
    """Completed calls of ``model`` at a known rate, with no time to the first token."""
    for tokens in (10, 40, 160):
        default_estimator().observe("openai", model, tokens, tokens / tokens_per_second)


# ------------------------------------------------------------------ the estimator alone


def test_rate_model_separates_generation_from_time_to_first_token() -> None:
    rates = RateModel(16)
    for tokens in (10, 20, 40, 80):
        rates.add(tokens, 0.25 + tokens / 50)  # 50 tokens/s after 0.25 s of prompt processing
    rate, overhead = rates.fit()
    assert rate == pytest.approx(50) and overhead == pytest.approx(0.25)
    assert rates.produced_by(0.2) == (0, 0)  # still processing the prompt
    assert rates.produced_by(1.25) == pytest.approx((50, 50))


def test_the_bound_uses_a_slow_rate() -> None:
    rates = RateModel(16)
    for tokens in (10, 20, 40, 80, 160, 10, 20, 40, 80):
        rates.add(tokens, tokens / 50)
    rates.add(100, 100 / 25)  # one call at half the speed
    estimate, low = rates.produced_by(2.0)
    assert low == pytest.approx(50) and estimate > low  # the slowest tenth: what it produced at least


def test_rate_model_falls_back_to_the_slower_mean_rate() -> None:
    rates = RateModel(16)
    rates.add(100, 2.25)  # all calls of one length: no slope to fit
    rates.add(100, 2.25)
    rates.add(100, 2.25)
    rate, overhead = rates.fit()
    assert overhead == 0 and rate == pytest.approx(100 / 2.25)  # below the true rate: the bound stays a bound


def test_estimates_say_how_they_were_obtained() -> None:
    estimator = SavingsEstimator()
    for tokens in (100, 200, 300):
        estimator.observe("p", "m", tokens, tokens / 100)
    stream = estimator.estimate("p", "m", 50, 400, streamed=True, elapsed=9.0)
    assert (stream.tokens_produced, stream.tokens_saved_max, stream.tokens_saved) == (50, 350, 150)
    assert (stream.tokens_saved_max_source, stream.tokens_saved_source) == ("upper_bound", "estimate")
    plain = estimator.estimate("p", "m", 0, 400, streamed=False, elapsed=1.2)
    assert plain.tokens_produced == 120 and plain.tokens_saved_max == 280  # 1.2 s at 100 tokens/s
    assert plain.tokens_saved == 130  # mean of (200 - 120, 300 - 120)
    assert plain.tokens_produced_source == "estimate" and plain.tokens_saved_max_source == "upper_bound"
    assert estimator.estimate("p", "m", 0, 400, streamed=False, elapsed=60).tokens_saved_max == 0
    unknown = estimator.estimate("p", "other", 0, 400, streamed=False, elapsed=1.2)
    assert unknown.tokens_produced == 120  # the provider's pooled rate
    assert SavingsEstimator().estimate("p", "m", 0, 400, streamed=False, elapsed=5).tokens_saved_max == 400
    done = estimator.estimate("p", "m", 70, 400, streamed=True, finished=True)
    assert (done.tokens_saved, done.tokens_saved_max, done.tokens_produced) == (0, 0, 70)
    assert {done.tokens_saved_source, done.tokens_saved_max_source, done.tokens_produced_source} == {"exact"}


def _record(saved: int, source: str, bound: int | None, bound_source: str | None) -> CallRecord:
    return CallRecord(
        provider="p",
        operation="chat.completions",
        model="m",
        outcome="aborted",
        started_at=0.0,
        duration=1.0,
        tokens_saved=saved,
        tokens_saved_max=bound,
        tokens_saved_source=source,  # type: ignore[arg-type]
        tokens_saved_max_source=bound_source,  # type: ignore[arg-type]
    )


def test_a_sum_is_as_weak_as_its_weakest_part() -> None:
    def report(*calls: CallRecord) -> ScopeReport:
        return ScopeReport("s", 1, "cancelled", "client_disconnected", None, 0.0, 1.0, calls)

    exact = _record(0, "exact", 0, "exact")
    bounded = _record(10, "estimate", 20, "upper_bound")
    unbounded = _record(5, "estimate", None, None)
    assert report(exact, exact).summary()["tokens_saved_max_source"] == "exact"
    summary = report(exact, bounded, unbounded).summary()
    assert summary["tokens_saved_max"] == 20 and summary["tokens_saved_max_source"] == "upper_bound"
    assert summary["tokens_saved"] == 15 and summary["tokens_saved_source"] == "estimate"
    assert report().summary()["tokens_saved_source"] is None


def test_one_finish_reason_of_several_choices_is_not_the_end() -> None:
    """OpenAI's ``n``: ``max_tokens`` bounds each choice, and the first choice's finish
    reason leaves the others generating: nothing exact then."""
    info = OpenAIProfile().describe(
        "POST", "https://api.openai.com/v1/chat/completions", b'{"model": "m-n", "n": 2, "max_tokens": 100}'
    )
    meter = ChatStreamMeter()
    meter.tokens_out, meter.finish_reason = 30, "stop"
    call: Any = SimpleNamespace(meter=meter, info=info, started_at=0.0, aborted=None, status_code=200, orphan=False)
    several = _savings_of(call, "aborted", 1.0, meter.tokens_out)
    assert several is not None and several.tokens_saved_max == 2 * 100 - 30
    assert several.tokens_saved_max_source == "upper_bound"
    info.extra.clear()  # one choice: its finish reason is the end
    single = _savings_of(call, "aborted", 1.0, meter.tokens_out)
    assert single is not None and (single.tokens_saved_max, single.tokens_saved_max_source) == (0, "exact")


# ------------------------------------------------------------ against the provider's log


@pytest.mark.anyio
async def test_plain_completion_bound_subtracts_what_the_provider_probably_produced(provider: LocalProvider) -> None:
    model = "local-4001"
    _teach_rate(model, 20.0)  # slower than the provider (~100 tokens/s): the bound must stay above the truth
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    scope = RequestScope("plain")

    async def call() -> None:
        try:
            await llm.chat.completions.create(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS)
        except ScopeCancelled:
            pass

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(call)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 20)
            scope.cancel("client_disconnected")
        await wait(log.wait_disconnect)
    await llm.close()
    (record,) = scope.report.calls  # type: ignore[union-attr]
    reason = scope.cancel_reason
    assert reason is not None and record.outcome == "aborted" and record.tokens_out == 0
    elapsed = reason.time - record.started_at
    # What the provider produced by the abort, from the rate: subtracted from the bound.
    assert abs(record.tokens_produced - 20.0 * elapsed) <= 1  # type: ignore[operator]
    assert record.tokens_produced is not None and record.tokens_produced >= 4  # 20 units take >= 0.2 s
    # The bound subtracts what it produced at least (the same rate here, rounded down).
    assert 0 <= record.tokens_saved_max - (MAX_TOKENS - record.tokens_produced) <= 1  # type: ignore[operator]
    truly_saved = MAX_TOKENS - len(log.units)
    assert truly_saved <= record.tokens_saved_max < MAX_TOKENS
    assert record.tokens_saved is not None and record.tokens_saved <= record.tokens_saved_max
    assert _sources(record) == {
        "tokens_saved": "estimate",
        "tokens_saved_max": "upper_bound",
        "tokens_produced": "estimate",
    }


def test_sync_plain_completion_is_never_labelled_exact(provider: LocalProvider) -> None:
    model = "local-4002"
    _teach_rate(model, 20.0)
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    result = cancel_sync_call(
        provider, lambda: llm.chat.completions.create(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS), units=15
    )
    llm.close()
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.tokens_out == 0
    assert record.tokens_produced is not None and record.tokens_produced >= 3
    assert MAX_TOKENS - len(result.log.units) <= record.tokens_saved_max < MAX_TOKENS  # type: ignore[operator]
    assert "exact" not in _sources(record).values()


@pytest.mark.anyio
async def test_aborted_stream_counts_what_it_received_as_produced(provider: LocalProvider) -> None:
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    scope = RequestScope("stream")
    ten = anyio.Event()

    async def consume() -> None:
        with contextlib.suppress(ScopeCancelled):
            await read_chat_stream(llm, ten, after=10, model="local-4003", messages=MESSAGES, max_tokens=MAX_TOKENS)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(consume)
            await ten.wait()
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        (log,) = provider.requests
        await wait(log.wait_disconnect)
    await llm.close()
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.tokens_produced == record.tokens_out == 10
    assert record.tokens_saved_max == MAX_TOKENS - 10
    # The provider can have written a token the client never read: a bound, not an exact figure.
    assert record.tokens_saved_max - (MAX_TOKENS - len(log.units)) == log.units_after(t_cancel)
    assert _sources(record) == {
        "tokens_saved": "estimate",
        "tokens_saved_max": "upper_bound",
        "tokens_produced": "estimate",
    }


@pytest.mark.anyio
async def test_exact_only_when_the_provider_had_finished(provider: LocalProvider) -> None:
    """The finish reason arrived, the usage not yet (the provider totals it for one token interval):
    the call is aborted with nothing left to save, and that is exact."""
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    scope = RequestScope("finished")
    provider.token_interval = 0.2  # a wide window between the finish reason and the usage

    async def consume() -> None:
        try:
            stream = await llm.chat.completions.create(
                model="local-5",
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    scope.cancel("client_disconnected")
        except ScopeCancelled:
            pass

    with anyio.fail_after(20):
        async with scope:
            await consume()
        (log,) = provider.requests
        await wait(log.wait_done)
    await llm.close()
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.finish_reason == "stop"
    assert len(log.units) == 5  # the truth: all of it was produced, nothing saved
    assert (record.tokens_saved, record.tokens_saved_max, record.tokens_produced) == (0, 0, 5)
    assert set(_sources(record).values()) == {"exact"}
    assert scope.report.summary()["tokens_saved_source"] == "exact"  # type: ignore[union-attr]
