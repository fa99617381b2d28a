"""How many tokens an aborted call saved, and how each figure was obtained.

Every figure carries a *source*, one of:

``exact``
    Known, not inferred.  Only where nothing can be missing: the provider had
    already said why it stopped (its finish reason arrived before the abort), so
    nothing was saved and nothing more could have been produced.
``upper_bound``
    The provider cannot have saved more than this.
``estimate``
    Our best guess, which can be off either way.

The figures of an aborted generative call:

``tokens_produced``
    Output tokens the provider produced before it stopped, as far as we can
    tell.  For a stream the caller was reading when the abort came, what it
    received (the provider may have written one or two more tokens the caller
    never read: that is why even this is an estimate).  For a non-streamed call
    (nothing is received before the end) or a stream nobody was reading, the
    time from the call's start to the abort times the model's generation rate,
    learned from completed calls (see ``RateModel``); without a rate, what was
    received.
``tokens_saved_max``
    The request's own bound (``max_tokens``...) minus what the provider
    produced at least: what a stream delivered, or for a non-streamed call the
    elapsed time times a *slow* rate (the 10th percentile of the completed
    calls' rates).  An ``upper_bound``: the provider can have produced more than
    that, hardly less.  ``None`` when the request set no bound.
``tokens_saved``
    The output the provider would still have produced: the expected output
    length learned from completed calls of the same model, minus
    ``tokens_produced``; an ``estimate``, capped by ``tokens_saved_max``.
    ``method`` says which history gave the expected length: ``model_history``,
    ``provider_history`` or ``default`` (``default_expected_output`` tokens).

A provider that notices a client leaving late (llama.cpp's server checks a
non-streamed client about once a second, and not at all while busy with
another request) generates more after the abort than any client can see: the
figures above count only what was produced *by* the abort.  Streaming the call
(``always_stream=True``) makes the provider stop at its next token.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

#: how a savings figure was obtained
FigureSource = Literal["exact", "estimate", "upper_bound"]


@dataclass(frozen=True, slots=True)
class SavingsEstimate:
    tokens_saved: int | None
    tokens_saved_max: int | None
    #: which history gave the expected output length (``model_history``, ``provider_history``, ``default``)
    method: str
    tokens_produced: int = 0
    tokens_saved_source: FigureSource = "estimate"
    tokens_saved_max_source: FigureSource | None = None
    tokens_produced_source: FigureSource = "estimate"


class RateModel:
    """Seconds a call takes as a function of the tokens it produced: ``overhead + tokens / rate``.

    Fitted by least squares over the last completed calls, so that the time to
    the first token (queueing, prompt processing) is not mistaken for generation.
    With too few or too similar samples it falls back to ``sum(tokens) / sum(seconds)``
    and no overhead, which underestimates the rate: the bound built on it stays
    an upper bound.
    """

    __slots__ = ("_samples",)

    def __init__(self, history: int) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=history)

    def add(self, tokens: int, seconds: float) -> None:
        self._samples.append((tokens, seconds))

    def __bool__(self) -> bool:
        return bool(self._samples)

    def fit(self) -> tuple[float, float]:
        """``(tokens per second, overhead seconds)``."""
        samples = self._samples
        total_tokens = sum(t for t, _ in samples)
        total_seconds = sum(s for _, s in samples)
        fallback = (total_tokens / total_seconds, 0.0)
        if len(samples) < 3:
            return fallback
        mean_t = total_tokens / len(samples)
        mean_s = total_seconds / len(samples)
        var_t = sum((t - mean_t) ** 2 for t, _ in samples)
        # Lengths must differ by a few tokens for a slope to mean anything.
        if var_t < len(samples) * 4:
            return fallback
        slope = sum((t - mean_t) * (s - mean_s) for t, s in samples) / var_t
        overhead = mean_s - slope * mean_t
        if slope <= 0 or overhead < 0:
            return fallback
        return 1.0 / slope, min(overhead, min(s for _, s in samples))

    def produced_by(self, elapsed: float) -> tuple[float, float]:
        """Tokens produced in the first ``elapsed`` seconds of a call: ``(estimate, low)``.

        ``low`` uses a slow rate (the 10th percentile of the completed calls' own
        rates): the provider has probably produced at least that much, so a bound
        built on it stays a bound when one call runs slower than the fit says.
        """
        rate, overhead = self.fit()
        running = max(0.0, elapsed - overhead)
        rates = sorted(t / max(s - overhead, 1e-9) for t, s in self._samples)
        slow = min(rate, rates[(len(rates) - 1) // 10])
        return rate * running, slow * running


class SavingsEstimator:
    """Learns output lengths and generation rates from completed calls; thread-safe."""

    def __init__(self, *, history: int = 256, default_expected_output: int = 512) -> None:
        self._history = history
        self._default = default_expected_output
        self._by_model: dict[tuple[str, str | None], deque[int]] = {}
        self._by_provider: dict[str, deque[int]] = {}
        self._rate_by_model: dict[tuple[str, str | None], RateModel] = {}
        self._rate_by_provider: dict[str, RateModel] = {}
        self._lock = threading.Lock()

    def observe(self, provider: str, model: str | None, output_tokens: int, seconds: float | None = None) -> None:
        """Learn a completed call: its output length and, given its duration, the model's rate."""
        if output_tokens < 0:
            return
        with self._lock:
            self._by_model.setdefault((provider, model), deque(maxlen=self._history)).append(output_tokens)
            self._by_provider.setdefault(provider, deque(maxlen=self._history)).append(output_tokens)
            if seconds is not None and seconds > 0 and output_tokens > 0:
                self._rate_by_model.setdefault((provider, model), RateModel(self._history)).add(output_tokens, seconds)
                self._rate_by_provider.setdefault(provider, RateModel(self._history)).add(output_tokens, seconds)

    def produced(self, provider: str, model: str | None, elapsed: float) -> tuple[int, int] | None:
        """Output tokens the model produced in ``elapsed`` seconds of a call, ``(estimate, at least)``;
        None without a rate learned for the model or the provider."""
        with self._lock:
            rates = self._rate_by_model.get((provider, model)) or self._rate_by_provider.get(provider)
            if not rates:
                return None
            estimate, low = rates.produced_by(elapsed)
        return round(estimate), int(low)

    def estimate(
        self,
        provider: str,
        model: str | None,
        received: int,
        max_tokens: int | None,
        *,
        streamed: bool = True,
        elapsed: float = 0.0,
        finished: bool = False,
    ) -> SavingsEstimate:
        """The figures of an aborted call.

        ``received``: output tokens the caller received; ``streamed``: the caller was
        reading a stream when the abort came (so what it received is what the
        provider produced, give or take the tokens in flight); ``elapsed``: seconds
        from the call's start to the abort; ``finished``: the provider's finish
        reason had arrived.
        """
        if finished:
            return SavingsEstimate(
                tokens_saved=0,
                tokens_saved_max=0,
                method="finished",
                tokens_produced=received,
                tokens_saved_source="exact",
                tokens_saved_max_source="exact",
                tokens_produced_source="exact",
            )
        produced = at_least = received
        if not streamed:
            rated = self.produced(provider, model, elapsed)
            if rated is not None:
                produced, at_least = max(received, rated[0]), max(received, rated[1])
        if max_tokens is not None:
            produced = min(produced, max(max_tokens, received))
        saved_max = None if max_tokens is None else max(0, max_tokens - at_least)
        expected, method = self._expected_remaining(provider, model, produced)
        saved = round(expected)
        if saved_max is not None:
            saved = min(saved, saved_max)
        return SavingsEstimate(
            tokens_saved=max(0, saved),
            tokens_saved_max=saved_max,
            method=method,
            tokens_produced=produced,
            tokens_saved_source="estimate",
            tokens_saved_max_source=None if saved_max is None else "upper_bound",
            tokens_produced_source="estimate",
        )

    def _expected_remaining(self, provider: str, model: str | None, produced: int) -> tuple[float, str]:
        """Mean of ``L - produced`` over the learned lengths ``L`` longer than ``produced`` (0 if none)."""
        with self._lock:
            lengths = self._by_model.get((provider, model))
            method = "model_history"
            if not lengths:
                lengths = self._by_provider.get(provider)
                method = "provider_history"
            longer = [length - produced for length in lengths if length > produced] if lengths else None
        if not lengths:
            return float(max(0, self._default - produced)), "default"
        return (sum(longer) / len(longer) if longer else 0.0), method


_default = SavingsEstimator()


def default_estimator() -> SavingsEstimator:
    """The process-wide estimator the reports use."""
    return _default


class PriceTable:
    """Dollars per million tokens, per model: ``{"gpt-4o": (2.50, 10.00)}`` (input, output)."""

    def __init__(self, prices: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._prices = dict(prices or {})

    def cost(self, model: str | None, tokens_in: int | None, tokens_out: int | None) -> float | None:
        if model is None or model not in self._prices:
            return None
        price_in, price_out = self._prices[model]
        return ((tokens_in or 0) * price_in + (tokens_out or 0) * price_out) / 1_000_000


_prices = PriceTable()


def set_prices(prices: Mapping[str, tuple[float, float]]) -> None:
    """Set the prices that turn an aborted call's ``tokens_saved`` into ``cost_saved`` (dollars).

    ``prices`` maps a model name, as the request names it, to its (input, output)
    price in dollars per million tokens: ``set_prices({"gpt-4o": (2.50, 10.00)})``.
    It replaces the table set before (``set_prices({})`` removes every price); a
    call of a model without a price has ``cost_saved=None``.  Process-wide.
    """
    if not isinstance(prices, Mapping):
        raise TypeError(f"set_prices() takes a mapping of model name -> (input, output) price, not {prices!r}")
    for model, price in prices.items():
        if not isinstance(model, str):
            raise TypeError(f"set_prices(): model names are str, not {model!r}")
        if (
            not isinstance(price, tuple)
            or len(price) != 2
            or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 0 for p in price)
        ):
            raise ValueError(
                f"set_prices(): the price of {model!r} must be (input, output) dollars per million tokens, "
                f"two numbers >= 0, not {price!r}"
            )
    global _prices
    _prices = PriceTable(prices)


def get_prices() -> PriceTable:
    return _prices
