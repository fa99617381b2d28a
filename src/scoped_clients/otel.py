"""OpenTelemetry traces and metrics for scoped calls (``pip install "scoped-clients[otel]"``).

``instrument()`` once at start-up (after configuring your providers, or pass
them)::

    from scoped_clients import otel

    uninstrument = otel.instrument()  # the global tracer and meter providers

Every scope then becomes a span (``scoped_clients.scope``), child of the span
that was current when the scope opened (e.g. the server span of your ASGI
instrumentation), and every call in it a client span following the GenAI
semantic conventions: named ``"{gen_ai.operation.name} {gen_ai.request.model}"``,
with ``gen_ai.provider.name``, ``gen_ai.usage.input_tokens`` /
``output_tokens``, and for an aborted or refused call ``error.type =
"ScopeCancelled"``, the cancel reason and the saved-token figures
(``scoped_clients.*``).  Metrics: ``gen_ai.client.token.usage``,
``gen_ai.client.operation.duration`` and ours (``scoped_clients.tokens.saved``,
``.saved_max``, ``scoped_clients.calls.aborted`` / ``.refused``,
``scoped_clients.cancel.latency``).  The README's "Metrics and traces" lists
every name.

Why a report sink and not live spans: a call's attributes (outcome, tokens,
savings) are final only when its scope ends, so a live span could not carry them
anyway; the sink costs nothing on the hot path (no work per request or per
chunk, only at the scope's end) and needs no hook in the core.  The sink runs in
the task or thread that ends the scope, after the scope has left, where the
OpenTelemetry context is the one the scope opened in: the scope span gets the
right parent, and its calls' spans are built with their real start and end
times.  The price: spans of other instrumentations made *inside* a scope (an
HTTP client's) are its siblings, not its children, and a nested scope's span is
a sibling of its parent's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from . import __version__
from ._metrics import (
    MAX_MODELS,
    MCP_PROVIDER,
    METRICS,
    TOOL_OPERATION,
    Installation,
    Labeller,
    MetricSpec,
    Started,
    cancel_latency,
    error_type,
    is_generation,
    mcp_server,
    missing_extra,
    operation_name,
    tool_name,
    updates,
)
from ._report import CallRecord, ScopeReport

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise missing_extra("otel", "opentelemetry-api") from exc

__all__ = ["instrument"]

#: the scope span's name (a scope's own name can hold a URL path: it is an attribute)
SCOPE_SPAN = "scoped_clients.scope"
#: neutral label -> OpenTelemetry attribute
ATTRIBUTES = {
    "provider": "gen_ai.provider.name",
    "model": "gen_ai.request.model",
    "operation": "gen_ai.operation.name",
    "token_type": "gen_ai.token.type",
    "error_type": "error.type",
    "reason": "scoped_clients.cancel_reason",
    "outcome": "scoped_clients.outcome",
    "tool": "gen_ai.tool.name",
    "server_address": "server.address",
    "server_port": "server.port",
}
#: the record's savings figures, each with its ``*_source``, copied to aborted calls' spans
_FIGURES = ("tokens_saved", "tokens_saved_max", "tokens_produced")

_installation = Installation()
Attributes = dict[str, str | bool | int | float | list[str]]


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    max_models: int = MAX_MODELS,
) -> Callable[[], None]:
    """Export every scope's calls as spans and metrics; returns a function that stops it.

    ``None`` means the global provider (also one set later: the proxy follows
    it).  ``max_models`` distinct model names are kept in metric attributes,
    later ones are counted as ``"other"`` (spans keep the real name).  Calling it
    again with the same arguments changes nothing; with others, it replaces the
    previous instrumentation.

    Args:
        tracer_provider: where the spans go (``None``: the global tracer provider).
        meter_provider: where the metrics go (``None``: the global meter provider).
        max_models: how many distinct model names metric attributes keep before ``"other"``.
    """
    labeller = Labeller(max_models)
    return _installation.install(
        (tracer_provider, meter_provider, max_models), lambda: _start(tracer_provider, meter_provider, labeller)
    )


def _start(
    tracer_provider: trace.TracerProvider | None, meter_provider: metrics.MeterProvider | None, labeller: Labeller
) -> Started:
    tracer = trace.get_tracer("scoped_clients", __version__, tracer_provider)
    meter = metrics.get_meter("scoped_clients", __version__, meter_provider)
    record = {spec: _recorder(meter, spec) for spec in METRICS}

    def sink(report: ScopeReport) -> None:
        _trace(tracer, report)
        for spec, value, labels in updates(report, labeller):
            record[spec](
                value, {ATTRIBUTES[k]: _value(k, v) for k in spec.otel_labels if (v := labels.get(k)) is not None}
            )

    return sink, lambda: None  # OpenTelemetry has no way to remove an instrument


def _value(label: str, value: str) -> str | int:
    """The attribute's value: ``server.port`` is an int in the conventions, every other label a string."""
    return int(value) if label == "server_port" else value


def _recorder(meter: metrics.Meter, spec: MetricSpec) -> Callable[[float, dict[str, str | int]], None]:
    """The instrument's ``add`` (counter) or ``record`` (histogram)."""
    if spec.otel_kind == "counter":
        return meter.create_counter(spec.otel_name, spec.otel_unit, spec.description).add
    histogram = meter.create_histogram(
        spec.otel_name, spec.otel_unit, spec.description, explicit_bucket_boundaries_advisory=spec.buckets
    )
    return histogram.record


def _trace(tracer: trace.Tracer, report: ScopeReport) -> None:
    """The scope's span and its calls' spans, after the fact, with their real times."""
    offset = time.time_ns() - time.monotonic_ns()

    def epoch(monotonic: float) -> int:
        return int(monotonic * 1e9) + offset

    scope_span = tracer.start_span(
        SCOPE_SPAN, kind=SpanKind.INTERNAL, attributes=_scope_attributes(report), start_time=epoch(report.started_at)
    )
    if report.outcome == "failed":
        scope_span.set_status(Status(StatusCode.ERROR))
    parent = trace.set_span_in_context(scope_span)
    for record in report.calls:
        span = tracer.start_span(
            _span_name(record),
            parent,
            SpanKind.CLIENT,
            _call_attributes(record),
            start_time=epoch(record.started_at),
        )
        kind = error_type(record)
        if kind is not None:  # the description never quotes an error's text (it can echo the request)
            span.set_status(Status(StatusCode.ERROR, f"{record.outcome}: {record.cancel_reason or kind}"))
        if record.cancelled_at is not None:
            span.add_event(
                "scoped_clients.cancel",
                {"scoped_clients.cancel_reason": record.cancel_reason or ""},
                timestamp=epoch(max(record.started_at, record.cancelled_at)),
            )
        span.end(epoch(record.started_at + record.duration))
    scope_span.end(epoch(report.started_at + report.duration))


def _span_name(record: CallRecord) -> str:
    """``execute_tool {tool}``, ``chat {model}``...; an MCP request's is the MCP conventions'
    ``{mcp.method.name} {target}`` (``tools/call search``; ``tools/list``)."""
    operation = operation_name(record)
    if record.provider == MCP_PROVIDER:
        tool = tool_name(record)
        return record.operation if tool is None else f"{record.operation} {tool}"
    if operation == TOOL_OPERATION:
        return f"{operation} {record.operation}"
    return f"{operation} {record.model or record.provider}"


def _scope_attributes(report: ScopeReport) -> Attributes:
    attributes: Attributes = {
        "scoped_clients.scope.id": str(report.scope_id),
        "scoped_clients.scope.outcome": report.outcome,
        "scoped_clients.calls.count": len(report.calls),
        "scoped_clients.calls.aborted": report.count("aborted"),
        "scoped_clients.calls.refused": report.count("refused"),
        "scoped_clients.calls.orphans": report.orphans,
    }
    if report.scope is not None:
        attributes["scoped_clients.scope.name"] = report.scope
    if report.cancel_reason is not None:
        attributes["scoped_clients.cancel_reason"] = report.cancel_reason
    for figure in _FIGURES[:2]:
        source = report.source_of(figure)
        if source is not None:
            attributes[f"scoped_clients.{figure}"] = getattr(report, figure)
            attributes[f"scoped_clients.{figure}_source"] = source
    return attributes


def _call_attributes(record: CallRecord) -> Attributes:
    operation = operation_name(record)
    attributes: Attributes = {
        "gen_ai.provider.name": record.provider,
        "scoped_clients.operation": record.operation,
        "scoped_clients.outcome": record.outcome,
    }
    if record.provider != MCP_PROVIDER or operation == TOOL_OPERATION:
        attributes["gen_ai.operation.name"] = operation
    if record.model is not None:
        attributes["gen_ai.request.model"] = record.model
    tool = tool_name(record)
    if tool is not None:
        attributes["gen_ai.tool.name"] = tool
    if record.provider == MCP_PROVIDER:
        attributes.update(_mcp_attributes(record, operation))
    if is_generation(record) and record.outcome != "refused":
        if record.tokens_in is not None:
            attributes["gen_ai.usage.input_tokens"] = record.tokens_in
            attributes["scoped_clients.tokens_in_source"] = record.tokens_in_source
        attributes["gen_ai.usage.output_tokens"] = record.tokens_out
        attributes["scoped_clients.tokens_out_source"] = record.tokens_out_source
    if record.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
    kind = error_type(record)
    if kind is not None:
        attributes["error.type"] = kind
    attributes.update(_cancel_attributes(record))
    return attributes


def _mcp_attributes(record: CallRecord, operation: str) -> Attributes:
    """The MCP conventions' client span: ``mcp.method.name``, where the server is, the JSON-RPC error code.

    ``gen_ai.operation.name`` is ``execute_tool`` on a ``tools/call`` span, which makes it the GenAI
    conventions' tool execution span too, and is not set on the other MCP requests (as they ask).
    """
    attributes: Attributes = {"mcp.method.name": record.operation}
    server = mcp_server(record)
    if server.address is not None:
        attributes["server.address"] = server.address
    if server.port is not None:
        attributes["server.port"] = server.port
    if server.transport is not None:
        attributes["network.transport"] = server.transport
        if server.transport == "tcp":
            attributes["network.protocol.name"] = "http"
    code = record.detail.get("error_code")
    if isinstance(code, int):
        attributes["rpc.response.status_code"] = str(code)
    return attributes


def _cancel_attributes(record: CallRecord) -> Mapping[str, str | bool | int | float]:
    attributes: dict[str, str | bool | int | float] = {}
    if record.cancel_reason is not None:
        attributes["scoped_clients.cancel_reason"] = record.cancel_reason
    if record.orphan:
        attributes["scoped_clients.orphan"] = True
    latency = cancel_latency(record)
    if latency is not None:
        attributes["scoped_clients.cancel_latency"] = latency
    for figure in _FIGURES:
        value, source = getattr(record, figure), getattr(record, f"{figure}_source")
        if value is not None:
            attributes[f"scoped_clients.{figure}"] = value
            attributes[f"scoped_clients.{figure}_source"] = source
    if record.saved_method is not None:
        attributes["scoped_clients.saved_method"] = record.saved_method
    if record.saved_shape is not None:
        attributes["scoped_clients.saved_shape"] = record.saved_shape
    if record.cost_saved is not None:
        attributes["scoped_clients.cost_saved"] = record.cost_saved
    return attributes
