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
    The output the provider would still have produced: an ``estimate``, capped by
    ``tokens_saved_max``.  See "Expected lengths" below.  ``method`` says what gave
    it: ``model_history`` (completed calls of the same model), ``provider_history``
    (of any model of the provider, same operation), or ``default`` (the prior).

Expected lengths
----------------

Lengths are learned from completed calls apart for each operation
(``chat.completions``, ``responses``, ``messages``, Cohere ``chat``...) and each
*shape* of call: turns that end in tool calls (``tool_call``) and text answers
(``text``).  Agent loops mix both (a tool-calling turn of 20 tokens, an answer of
300): one shape never teaches the other.  A completed call's shape is what its
response said (finish reason ``tool_calls`` / ``tool_use`` / ``TOOL_CALL``, or tool
calls in its body or stream).  A cut call's shape is ``tool_call`` once a tool call
started streaming in before the cut, ``text`` once a stream delivered other output;
else what its request says (no tools offered or ``tool_choice`` "none": ``text``; a
tool forced: ``tool_call``); else (the model chooses, and nothing arrived yet: a
non-streamed call) a mixture of both shapes, weighted by the generation time each
takes (how often the model chose it times its mean length).

A call is assumed cut at a uniformly random point of its answer (the user stops an
answer somewhere while it streams).  Given ``produced`` tokens, an answer of length
``L > produced`` then explains the cut with likelihood ``1 / L``: the expected
remainder is the mean of ``L - produced`` over the learned lengths ``L`` longer than
``produced``, each weighted by ``1 / L``.  (Unweighted, it would assume the cut came
at a random *time*, which favours long answers; on answers cut at a random point
that overestimated by some 30 %: ``benchmarks/README.md``.)

A cut generation never gets 0: with no learned length longer than what it already
produced (nothing learned yet for its shape, or an answer longer than all those
seen) the expectation comes from ``LengthPrior``, answer lengths as measured on real
traffic, and a cut call's figure is at least 1 token, capped by the bound.

A provider that notices a client leaving late (llama.cpp's server checks a
non-streamed client about once a second, and not at all while busy with
another request) generates more after the abort than any client can see: the
figures above count only what was produced *by* the abort.  Streaming the call
(``always_stream=True``) makes the provider stop at its next token.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: how a savings figure was obtained
FigureSource = Literal["exact", "estimate", "upper_bound"]
#: what a generation produces: a turn that ends in tool calls, or a text answer
Shape = Literal["text", "tool_call"]
SHAPES: tuple[Shape, ...] = ("text", "tool_call")
#: finish reasons of a turn that ended in tool calls (OpenAI chat and its legacy functions,
#: Anthropic, Cohere v2); the Responses API says ``completed`` either way (its items tell)
TOOL_CALL_FINISH = frozenset({"tool_calls", "function_call", "tool_use", "TOOL_CALL"})


@dataclass(frozen=True, slots=True)
class SavingsEstimate:
    tokens_saved: int | None
    tokens_saved_max: int | None
    #: what gave the expected output length (``model_history``, ``provider_history``, ``default``, ``finished``)
    method: str
    tokens_produced: int = 0
    tokens_saved_source: FigureSource = "estimate"
    tokens_saved_max_source: FigureSource | None = None
    tokens_produced_source: FigureSource = "estimate"
    #: the shape the expected length was learned for; None: a mixture of both (the model chose)
    shape: Shape | None = None


def requested_shape(body: Mapping[str, Any]) -> Shape | None:
    """The shape a generation request asks for, from its ``tools`` and ``tool_choice``.

    ``text`` when it offers no tools or forbids them (``"none"``); ``tool_call`` when it
    forces one (``"required"``, Anthropic's ``"any"``, a named function or tool, OpenAI's
    ``allowed_tools`` in mode ``required``); None when the model chooses (or the body
    could not be read).  One reading covers every vendor's spelling: OpenAI chat and
    Responses (strings, ``{"type": "function", ...}``), Anthropic (``{"type": "auto" |
    "any" | "tool" | "none"}``), Cohere (``"REQUIRED"`` / ``"NONE"``).
    """
    if not body:
        return None
    if not body.get("tools"):
        return "text"
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "allowed_tools":
            choice = choice.get("mode")
        elif kind in ("auto", "any", "none"):
            choice = kind
        else:  # a named function, tool or hosted tool
            return "tool_call"
    if isinstance(choice, str):
        choice = choice.lower()
        if choice == "none":
            return "text"
        if choice in ("required", "any"):
            return "tool_call"
    return None


def call_shape(
    requested: object, tool_calls_seen: bool, finish_reason: str | None, *, output_seen: bool = False
) -> Shape | None:
    """What a call is, as far as its response and then its request tell.

    ``tool_call`` once a tool call was seen (in the stream before a cut, or in the body)
    or the finish reason says so; ``text`` for any other finish reason, or when a stream
    delivered output and no tool call (``output_seen``: it is writing an answer; a turn
    that writes a preamble before its tool call is taken for an answer until the call
    starts); else the ``requested`` shape (``requested_shape``), None when the model chooses.
    """
    if tool_calls_seen or finish_reason in TOOL_CALL_FINISH:
        return "tool_call"
    if finish_reason is not None or output_seen:
        return "text"
    return requested if requested == "text" or requested == "tool_call" else None


def _phi(x: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@dataclass(frozen=True, slots=True)
class LengthPrior:
    """Answer lengths before any are learned: lognormal, ``median`` tokens, log-spread ``sigma``.

    The default, median 130 and sigma 1.0, has a mean of 214 tokens: the mean length of
    the assistant answers in LMSYS-Chat-1M (one million conversations with 25 models,
    Zheng et al., ICLR 2024: 214.5 tokens per response).  The paper gives the mean;
    sigma 1.0 (a tenth of the answers under 36 tokens, a tenth over 470) is our choice
    of a long right tail.  On the agent loops of ``benchmarks/savings.py`` (answers from
    an independent lognormal, median ~150, cut at a random point) the summed figure of
    the first answer of fresh processes was within 4 % of the provider's truth; simulated,
    answers twice as long are underestimated by about a third, answers half as long
    overestimated about twice.  Any learned length of the call's own shape replaces it.
    """

    median: float = 130.0
    sigma: float = 1.0

    def remaining(self, produced: float, bound: int | None) -> tuple[float, float]:
        """``(expected tokens still to come, share of the cut answers still running at produced)``
        for an answer of length ``min(L, bound)``, ``L`` drawn from the prior, cut at a uniform point.

        Closed form: over the answers ``L > p``, each weighted ``f(L) / L`` (the likelihood
        of a uniform cut at ``p``), ``E[1/L; L > p]`` of a lognormal is
        ``exp(-mu + sigma**2 / 2) * (1 - Phi(z + sigma))`` with ``z = (ln p - mu) / sigma``;
        the answers the bound cuts short all have length ``bound``.
        """
        if bound is not None and produced >= bound:
            return 0.0, 0.0
        mass, inverse = self._tail(max(produced, 1e-9), bound)
        if inverse <= 0:  # far in the tail: floating point gives out, and the tail is nearly flat
            return float(produced), 0.0
        return mass / inverse - produced, inverse / self._tail(1e-9, bound)[1]

    def mean(self, bound: int | None) -> float:
        """The mean answer length, ``E[min(L, bound)]``."""
        mu, sigma = math.log(self.median), self.sigma
        mean = math.exp(mu + sigma * sigma / 2)
        if bound is None:
            return mean
        z_bound = (math.log(bound) - mu) / sigma
        return mean * _phi(z_bound - sigma) + bound * (1 - _phi(z_bound))

    def _tail(self, p: float, bound: int | None) -> tuple[float, float]:
        """``(P(min(L, bound) > p), E[1 / min(L, bound); L > p])``."""
        mu, sigma = math.log(self.median), self.sigma
        z = (math.log(p) - mu) / sigma
        scale = math.exp(-mu + sigma * sigma / 2)
        if bound is None:
            return 1 - _phi(z), scale * (1 - _phi(z + sigma))
        z_bound = (math.log(bound) - mu) / sigma
        cut = 1 - _phi(z_bound)
        return _phi(z_bound) - _phi(z) + cut, scale * (_phi(z_bound + sigma) - _phi(z + sigma)) + cut / bound


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


#: history key: provider, operation, model (None: any model of the provider)
_Key = tuple[str, str | None, str | None]


class SavingsEstimator:
    """Learns output lengths (per operation and shape) and generation rates from completed calls; thread-safe."""

    def __init__(self, *, history: int = 256, prior: LengthPrior | None = None) -> None:
        self._history = history
        self._prior = prior or LengthPrior()
        self._lengths: dict[tuple[_Key, Shape], deque[int]] = {}
        #: the shapes completed calls turned out to have when the model chose (per key)
        self._chosen: dict[_Key, deque[Shape]] = {}
        self._rate_by_model: dict[tuple[str, str | None], RateModel] = {}
        self._rate_by_provider: dict[str, RateModel] = {}
        self._lock = threading.Lock()

    def _append(self, table: dict[Any, deque[Any]], key: object, value: object) -> None:
        table.setdefault(key, deque(maxlen=self._history)).append(value)

    def observe(
        self,
        provider: str,
        model: str | None,
        output_tokens: int,
        seconds: float | None = None,
        *,
        operation: str | None = None,
        shape: Shape = "text",
        chosen: bool = False,
    ) -> None:
        """Learn a completed call: its output length (for its operation and shape) and, given its
        duration, the model's rate.  ``chosen``: the request let the model choose its shape."""
        if output_tokens < 0:
            return
        with self._lock:
            for key in dict.fromkeys(((provider, operation, model), (provider, operation, None))):
                self._append(self._lengths, (key, shape), output_tokens)
                if chosen:
                    self._append(self._chosen, key, shape)
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
        operation: str | None = None,
        shape: Shape | None = "text",
    ) -> SavingsEstimate:
        """The figures of an aborted call.

        ``received``: output tokens the caller received; ``streamed``: the caller was
        reading a stream when the abort came (so what it received is what the
        provider produced, give or take the tokens in flight); ``elapsed``: seconds
        from the call's start to the abort; ``finished``: the provider's finish
        reason had arrived; ``shape``: what the call is (``call_shape``), None when
        the model chooses and nothing told yet.
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
                shape=shape,
            )
        produced = at_least = received
        if not streamed:
            rated = self.produced(provider, model, elapsed)
            if rated is not None:
                produced, at_least = max(received, rated[0]), max(received, rated[1])
        if max_tokens is not None:
            produced = min(produced, max(max_tokens, received))
        saved_max = None if max_tokens is None else max(0, max_tokens - at_least)
        expected, method = self.expected_remaining(provider, operation, model, shape, produced, max_tokens)
        saved = max(1, round(expected))  # cut before its finish reason: something was still to come
        if saved_max is not None:
            saved = min(saved, saved_max)
        return SavingsEstimate(
            tokens_saved=saved,
            tokens_saved_max=saved_max,
            method=method,
            tokens_produced=produced,
            tokens_saved_source="estimate",
            tokens_saved_max_source=None if saved_max is None else "upper_bound",
            tokens_produced_source="estimate",
            shape=shape,
        )

    def expected_remaining(
        self,
        provider: str,
        operation: str | None,
        model: str | None,
        shape: Shape | None,
        produced: int,
        bound: int | None = None,
    ) -> tuple[float, str]:
        """Expected output still to come after ``produced`` tokens, and what gave it (see the module's
        docstring).

        ``shape`` None (the model chooses, nothing told yet): both shapes, each weighted by the
        share of generation time it takes (how often the model chose it, Laplace-smoothed, times
        its mean length: where a user leaving at a random moment lands) and by the share of its
        cut answers still running after ``produced`` tokens.  The method is that of the heavier.
        """
        shapes: tuple[Shape, ...] = SHAPES if shape is None else (shape,)
        parts = []
        with self._lock:
            chosen = self._shape_frequencies(provider, operation, model) if shape is None else {shape: 1.0}
            for s in shapes:
                expected, running, mean, method = self._remaining(provider, operation, model, s, produced, bound)
                parts.append((chosen[s] * mean * running, expected, method))
        total = sum(weight for weight, _, _ in parts)
        if total <= 0:  # the bound is reached, or the prior's far tail (where it is nearly flat)
            return max(e for _, e, _ in parts), parts[0][2]
        expected = sum(weight * e for weight, e, _ in parts) / total
        return expected, max(parts, key=lambda part: part[0])[2]

    def _shape_frequencies(self, provider: str, operation: str | None, model: str | None) -> dict[Shape, float]:
        chosen = self._chosen.get((provider, operation, model)) or self._chosen.get((provider, operation, None)) or ()
        tools = sum(1 for s in chosen if s == "tool_call")
        return {"tool_call": (tools + 1) / (len(chosen) + 2), "text": (len(chosen) - tools + 1) / (len(chosen) + 2)}

    def _remaining(
        self, provider: str, operation: str | None, model: str | None, shape: Shape, produced: int, bound: int | None
    ) -> tuple[float, float, float, str]:
        """For one shape: ``(expected remainder, share of its cut answers still running at produced,
        mean length, method)``, from the model's lengths, else the provider's (same operation),
        else the prior."""
        keys = (((provider, operation, model), "model_history"), ((provider, operation, None), "provider_history"))
        learned = False
        for key, method in keys:
            lengths = self._lengths.get((key, shape))
            if not lengths:
                continue
            learned = True
            inverse = [1.0 / length for length in lengths if length > produced]
            if inverse:
                weight = sum(inverse)
                everything = sum(1.0 / length for length in lengths if length > 0)
                # the mean of (L - p) weighted 1 / L: (sum of (L - p) / L) / (sum of 1 / L)
                expected = (len(inverse) - produced * weight) / weight
                return expected, weight / everything, sum(lengths) / len(lengths), method
        expected, running = self._prior.remaining(produced, bound)
        # A shape learned, none of it this long: not this shape, as far as a mixture goes (alone,
        # it still gets the prior's figure: never 0).
        return expected, 0.0 if learned else running, self._prior.mean(bound), "default"


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
