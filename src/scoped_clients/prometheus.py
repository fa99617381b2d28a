"""Prometheus metrics for scoped calls (``pip install "scoped-clients[prometheus]"``).

``instrument()`` once at start-up, and expose the registry as usual (e.g.
``prometheus_client.make_asgi_app()`` mounted at ``/metrics``)::

    from scoped_clients import prometheus

    prometheus.instrument()  # prometheus_client.REGISTRY

Metrics (the README's "Metrics and traces" has units and meanings):
``scoped_clients_tokens_saved_total`` (estimate) and
``scoped_clients_tokens_saved_max_total`` (upper bound),
``scoped_clients_calls_aborted_total`` / ``_refused_total``,
``scoped_clients_cancel_latency_seconds``, ``scoped_clients_tokens_used_total``
and ``scoped_clients_operation_duration_seconds``, labelled by ``provider``,
``model``, ``operation`` and ``reason`` (or ``outcome`` / ``token_type``).

Label cardinality is bounded: the operation is one of a few GenAI operation
names (``chat``, ``embeddings``, ``rerank``, ``retrieval``, ``execute_tool``,
``other``...); the first ``max_models`` distinct model names (default 50, cut
to 100 characters), 20 providers and 20 cancel reasons are kept, later ones are
counted as ``"other"``; no label carries a scope id, a scope name or request
text.  The metrics are updated by a report sink, once per ended scope: nothing
runs per request or per chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from ._metrics import MAX_MODELS, METRICS, Installation, Labeller, MetricSpec, Started, updates
from ._report import ScopeReport

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from ._metrics import missing_extra

    raise missing_extra("prometheus", "prometheus-client") from exc

__all__ = ["instrument"]

_installation = Installation()


def instrument(registry: CollectorRegistry | None = None, *, max_models: int = MAX_MODELS) -> Callable[[], None]:
    """Count every scope's calls in ``registry`` (default ``prometheus_client.REGISTRY``).

    Returns a function that stops counting and unregisters the metrics.  Calling
    it again with the same registry changes nothing; with another, the metrics
    move there (from zero).

    Args:
        registry: the ``CollectorRegistry`` to register the metrics in (``None``: the default one).
        max_models: how many distinct model names the ``model`` label keeps; later ones are ``"other"``.
    """
    target = prometheus_client.REGISTRY if registry is None else registry
    labeller = Labeller(max_models)
    return _installation.install((target, max_models), lambda: _start(target, labeller))


def _start(registry: CollectorRegistry, labeller: Labeller) -> Started:
    families = {spec: _family(registry, spec) for spec in METRICS}

    def sink(report: ScopeReport) -> None:
        for spec, value, labels in updates(report, labeller):
            family = families[spec]
            values = [labels[name] or "" for name in spec.prom_labels]
            if isinstance(family, Counter):
                family.labels(*values).inc(value)
            else:
                family.labels(*values).observe(value)

    def cleanup() -> None:
        for family in families.values():
            registry.unregister(family)

    return sink, cleanup


def _family(registry: CollectorRegistry, spec: MetricSpec) -> Counter | Histogram:
    if spec.prom_kind == "counter":
        return Counter(spec.prom_name, spec.description, spec.prom_labels, registry=registry)
    unit = "seconds" if spec.prom_name.endswith("_seconds") else ""
    return Histogram(
        spec.prom_name, spec.description, spec.prom_labels, registry=registry, unit=unit, buckets=spec.buckets
    )
