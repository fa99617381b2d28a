"""How many tokens an aborted call saved.

Two figures, never mixed up:

``tokens_saved_max``
    Exact: the request's own bound (``max_tokens``, ``max_completion_tokens``,
    ``max_output_tokens``) minus the output tokens received before the abort.
    The provider could not have produced more.  ``None`` when the request set
    no bound.

``tokens_saved``
    An estimate of the output the provider would still have produced, learned
    from completed calls: the mean of ``L - received`` over the last ``history``
    completed output lengths ``L`` of the same (provider, model) that are longer
    than what was already received (0 if none was longer).  With no history for
    the model we pool the provider's calls; with none at all we assume
    ``default_expected_output`` tokens (512: a typical long chat answer).  Always
    capped by ``tokens_saved_max`` and never negative.  ``method`` says which
    rule gave the figure: ``model_history``, ``provider_history`` or ``default``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SavingsEstimate:
    tokens_saved: int | None
    tokens_saved_max: int | None
    method: str


class SavingsEstimator:
    """Learns output lengths from completed calls; thread-safe."""

    def __init__(self, *, history: int = 256, default_expected_output: int = 512) -> None:
        self._history = history
        self._default = default_expected_output
        self._by_model: dict[tuple[str, str | None], deque[int]] = {}
        self._by_provider: dict[str, deque[int]] = {}
        self._lock = threading.Lock()

    def observe(self, provider: str, model: str | None, output_tokens: int) -> None:
        """Learn the output length of a completed call."""
        if output_tokens < 0:
            return
        with self._lock:
            self._by_model.setdefault((provider, model), deque(maxlen=self._history)).append(output_tokens)
            self._by_provider.setdefault(provider, deque(maxlen=self._history)).append(output_tokens)

    def estimate(self, provider: str, model: str | None, received: int, max_tokens: int | None) -> SavingsEstimate:
        saved_max = None if max_tokens is None else max(0, max_tokens - received)
        with self._lock:
            lengths = self._by_model.get((provider, model))
            method = "model_history"
            if not lengths:
                lengths = self._by_provider.get(provider)
                method = "provider_history"
            longer = [length - received for length in lengths if length > received] if lengths else None
        if lengths:
            expected = sum(longer) / len(longer) if longer else 0.0
        else:
            method = "default"
            expected = float(max(0, self._default - received))
        saved = round(expected)
        if saved_max is not None:
            saved = min(saved, saved_max)
        return SavingsEstimate(tokens_saved=max(0, saved), tokens_saved_max=saved_max, method=method)


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
    """Install the price table used to turn saved tokens into money in reports."""
    global _prices
    _prices = PriceTable(prices)


def get_prices() -> PriceTable:
    return _prices
