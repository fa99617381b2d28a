"""What a ``ScopeReport`` means as metrics: the logic ``scoped_clients.otel`` and ``.prometheus`` share.

Both integrations are report sinks.  This module turns one report into metric
updates (``updates``): which metric, what value, which labels.  The labels are
bounded here, once for both (``Labeller``): provider, model and cancel reason
keep their first few distinct values and fold the rest into ``"other"``; the
operation is one of a small fixed set; nothing carries a scope id, a scope
name (it can hold a URL path) or request text.  Each integration only maps a
``MetricSpec`` to its own instrument and the neutral label names to its own.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from ._report import CallRecord, ScopeReport, add_report_sink
from ._vendors import gen_ai_operation, generates_tokens

#: the label value that stands for every value past a label's cap
OTHER = "other"
#: the ``model`` label of a call that names no model (tools, vector search, plain HTTP)
NO_MODEL = "none"
#: distinct values kept per label before ``OTHER`` (``max_models`` is the integrations' option)
MAX_MODELS = 50
MAX_PROVIDERS = 20
MAX_REASONS = 20
MAX_TOOLS = 50
MAX_SERVERS = 20
#: longest model name kept in a label (characters)
MAX_MODEL_LENGTH = 100

TOOL_OPERATION = "execute_tool"
#: the records of ``scoped_clients.mcp`` (``_vendors/mcp.py``): provider ``"mcp"``, operation the
#: request's method, ``detail["tool"]`` and ``detail["server"]`` (its URL, ``"stdio:<command>"``...)
MCP_PROVIDER = "mcp"
MCP_TOOL_CALL = "tools/call"
#: ``error.type`` of a tool call whose result says ``isError`` (the MCP semantic conventions' value)
TOOL_ERROR = "tool_error"
#: ``error.type`` of an aborted or refused call: the exception its caller got
CANCELLED_ERROR_TYPE = "ScopeCancelled"

Kind = Literal["counter", "histogram"]
#: metric, value, neutral labels (a ``None`` label is absent, e.g. ``error_type`` of a success)
Update = tuple["MetricSpec", float, dict[str, str | None]]
#: what an integration's ``start`` returns: its report sink, and what unregisters its metrics
Started = tuple[Callable[[ScopeReport], None], Callable[[], None]]

# Bucket boundaries: the GenAI conventions' advice for tokens and durations; cancel latency
# spans the sub-millisecond aborts at the socket up to slow hooks.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as both integrations export it."""

    otel_name: str
    otel_kind: Kind
    otel_unit: str
    otel_labels: tuple[str, ...]
    prom_name: str
    prom_kind: Kind
    prom_labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] = ()


_CALL = ("provider", "model", "operation")
_CANCEL = (*_CALL, "reason")

TOKEN_USAGE = MetricSpec(
    "gen_ai.client.token.usage",
    "histogram",
    "{token}",
    (*_CALL, "token_type"),
    "scoped_clients_tokens_used",
    "counter",
    (*_CALL, "token_type"),
    "Input and output tokens used (as reported by the provider, or as counted by the meter when it did not say).",
    TOKEN_BUCKETS,
)
DURATION = MetricSpec(
    "gen_ai.client.operation.duration",
    "histogram",
    "s",
    # tool and server: present on tool calls (an MCP server's address and port), absent on the others;
    # OpenTelemetry only (a Prometheus family's labels are fixed)
    (*_CALL, "error_type", "outcome", "tool", "server_address", "server_port"),
    "scoped_clients_operation_duration_seconds",
    "histogram",
    (*_CALL, "outcome"),
    "Duration of the calls that reached the network (refused calls are counted apart).",
    DURATION_BUCKETS,
)
TOKENS_SAVED = MetricSpec(
    "scoped_clients.tokens.saved",
    "counter",
    "{token}",
    _CANCEL,
    "scoped_clients_tokens_saved",
    "counter",
    _CANCEL,
    "Output tokens aborted calls saved: an estimate (expected length from completed calls of the same shape, "
    "or a prior, minus what was produced).",
)
TOKENS_SAVED_MAX = MetricSpec(
    "scoped_clients.tokens.saved_max",
    "counter",
    "{token}",
    _CANCEL,
    "scoped_clients_tokens_saved_max",
    "counter",
    _CANCEL,
    "Upper bound of the output tokens aborted calls saved: the requests' max_tokens minus what was produced.",
)
CALLS_ABORTED = MetricSpec(
    "scoped_clients.calls.aborted",
    "counter",
    "{call}",
    _CANCEL,
    "scoped_clients_calls_aborted",
    "counter",
    _CANCEL,
    "Calls aborted in flight by a cancel (reason scope_closed: orphans nobody awaited when the scope ended).",
)
CALLS_REFUSED = MetricSpec(
    "scoped_clients.calls.refused",
    "counter",
    "{call}",
    _CANCEL,
    "scoped_clients_calls_refused",
    "counter",
    _CANCEL,
    "Calls refused before they reached the network, because their scope was already cancelled.",
)
CANCEL_LATENCY = MetricSpec(
    "scoped_clients.cancel.latency",
    "histogram",
    "s",
    ("provider", "operation", "reason"),
    "scoped_clients_cancel_latency_seconds",
    "histogram",
    ("provider", "operation", "reason"),
    "Time from a cancel to the aborted call settled (its socket closed, its caller released).",
    LATENCY_BUCKETS,
)
METRICS = (TOKEN_USAGE, DURATION, TOKENS_SAVED, TOKENS_SAVED_MAX, CALLS_ABORTED, CALLS_REFUSED, CANCEL_LATENCY)


class _Capped:
    """The first ``limit`` distinct values pass; later ones become ``OTHER`` (thread-safe)."""

    __slots__ = ("_limit", "_lock", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


class Labeller:
    """Bounded label values for one instrumentation (each ``instrument()`` call has its own)."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        if not isinstance(max_models, int) or isinstance(max_models, bool) or max_models < 0:
            raise ValueError(
                f"max_models must be an int >= 0 (distinct model names kept as label values before "
                f"{OTHER!r}), got {max_models!r}"
            )
        self.provider = _Capped(MAX_PROVIDERS)
        self.model = _Capped(max_models)
        self.reason = _Capped(MAX_REASONS)
        self.tool = _Capped(MAX_TOOLS)
        self.server = _Capped(MAX_SERVERS)

    def call(self, record: CallRecord) -> dict[str, str | None]:
        model = NO_MODEL if record.model is None else self.model(record.model[:MAX_MODEL_LENGTH])
        operation = operation_name(record)
        labels: dict[str, str | None] = {
            "provider": self.provider(record.provider),
            "model": model,
            "operation": operation,
        }
        tool = tool_name(record)
        if tool is not None:
            labels["tool"] = self.tool(tool[:MAX_MODEL_LENGTH])
        server = mcp_server(record)
        if server.address is not None:
            address = self.server(server.address)
            labels["server_address"] = address
            if address != OTHER and server.port is not None:
                labels["server_port"] = str(server.port)
        return labels


def is_mcp_tool_call(record: CallRecord) -> bool:
    return record.provider == MCP_PROVIDER and record.operation == MCP_TOOL_CALL


def operation_name(record: CallRecord) -> str:
    """The call's ``gen_ai.operation.name`` (a small fixed set: it is a label), as its vendor module names it.

    A tool run here (``scoped_clients.tools``) or on an MCP server (``tools/call``) is ``execute_tool``;
    the other MCP requests (``tools/list``...) are no GenAI operation: ``other``.
    """
    if record.provider == "tool" or is_mcp_tool_call(record):
        return TOOL_OPERATION
    return gen_ai_operation(record.provider, record.operation) or OTHER


def tool_name(record: CallRecord) -> str | None:
    """``gen_ai.tool.name``: a local tool's name is its operation; an MCP call's is in its detail."""
    if record.provider == "tool":
        return record.operation
    if is_mcp_tool_call(record):
        tool = record.detail.get("tool")
        return tool if isinstance(tool, str) else None
    return None


@dataclass(frozen=True, slots=True)
class McpServer:
    """Where an MCP record's server is, in the conventions' terms (``server.address``...)."""

    address: str | None = None
    port: int | None = None
    #: ``network.transport``: ``"tcp"`` (HTTP) or ``"pipe"`` (stdio)
    transport: str | None = None


_NO_SERVER = McpServer()


def mcp_server(record: CallRecord) -> McpServer:
    """The server of an MCP record, from its ``detail["server"]`` (a URL, or ``"stdio:<command>"``)."""
    if record.provider != MCP_PROVIDER:
        return _NO_SERVER
    server = record.detail.get("server")
    if not isinstance(server, str):
        return _NO_SERVER
    if server.startswith("stdio:"):
        return McpServer(transport="pipe")
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _NO_SERVER  # an in-process server, a session a framework built ("unknown")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return McpServer(parts.hostname, port, "tcp")


def error_type(record: CallRecord) -> str | None:
    """``error.type``: ``None`` for a completed call, the exception the caller got otherwise.

    An aborted or refused call raised ``ScopeCancelled`` to its caller; a failed
    one says ``HTTP 500`` (the status code, as the conventions ask), or the
    exception's class name, or ``_OTHER``.  MCP: a JSON-RPC error's code, and
    ``tool_error`` for a tool call whose result says ``isError`` (it completed).
    """
    if record.outcome == "completed":
        return TOOL_ERROR if record.provider == MCP_PROVIDER and record.detail.get("is_error") is True else None
    if record.outcome in ("aborted", "refused"):
        return CANCELLED_ERROR_TYPE
    code = record.detail.get("error_code") if record.provider == MCP_PROVIDER else None
    if isinstance(code, int):  # the JSON-RPC error code the server answered (the MCP conventions)
        return str(code)
    error = record.error or ""
    if error.startswith("HTTP ") and error[5:].isdigit():
        return error[5:]
    name = error.partition(":")[0]
    return name if name.isidentifier() else "_OTHER"


def is_generation(record: CallRecord) -> bool:
    """Whether the call produces tokens (its output count is meaningful even when 0)."""
    return record.tokens_out > 0 or record.tokens_in is not None or generates_tokens(record.provider, record.operation)


def cancel_latency(record: CallRecord) -> float | None:
    """Seconds from the cancel to the aborted call settled, if the record knows when the cancel came."""
    if record.outcome != "aborted" or record.cancelled_at is None:
        return None
    return max(0.0, record.started_at + record.duration - record.cancelled_at)


def updates(report: ScopeReport, labeller: Labeller) -> Iterator[Update]:
    """Every metric update one ended scope makes."""
    for record in report.calls:
        yield from _call_updates(record, labeller)


def _call_updates(record: CallRecord, labeller: Labeller) -> Iterator[Update]:
    labels = labeller.call(record)
    if record.outcome == "refused":
        yield CALLS_REFUSED, 1, {**labels, "reason": labeller.reason(record.cancel_reason or OTHER)}
        return
    yield DURATION, record.duration, {**labels, "error_type": error_type(record), "outcome": record.outcome}
    if is_generation(record):
        if record.tokens_in is not None:
            yield TOKEN_USAGE, record.tokens_in, {**labels, "token_type": "input"}
        yield TOKEN_USAGE, record.tokens_out, {**labels, "token_type": "output"}
    if record.outcome != "aborted":
        return
    cancel = {**labels, "reason": labeller.reason(record.cancel_reason or OTHER)}
    yield CALLS_ABORTED, 1, cancel
    if record.tokens_saved is not None:
        yield TOKENS_SAVED, record.tokens_saved, cancel
    if record.tokens_saved_max is not None:
        yield TOKENS_SAVED_MAX, record.tokens_saved_max, cancel
    latency = cancel_latency(record)
    if latency is not None:
        yield CANCEL_LATENCY, latency, cancel


def missing_extra(extra: str, package: str) -> ImportError:
    return ImportError(
        f'scoped_clients.{extra} needs {package}, which is not installed: pip install "scoped-clients[{extra}]"'
    )


class Installation:
    """At most one live instrumentation per integration; ``instrument()`` twice is safe.

    The same arguments again: nothing changes and the same uninstrument function
    is returned.  Other arguments: the previous instrumentation is removed first,
    so no report is ever counted twice.  An uninstrument function removes only
    the instrumentation that returned it (a later one stays); calling it twice is
    harmless.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._key: tuple[object, ...] = ()
        self._uninstrument: Callable[[], None] | None = None

    def install(self, key: tuple[object, ...], start: Callable[[], Started]) -> Callable[[], None]:
        """``start()`` builds the sink and what removes its metrics; ``key`` is what it was built from."""
        with self._lock:
            current = self._uninstrument
            if current is not None and key == self._key:  # providers and registries compare by identity
                return current
            if current is not None:
                current()
            sink, cleanup = start()
            remove = add_report_sink(sink)
            done = False

            def uninstrument() -> None:
                nonlocal done
                with self._lock:
                    if done:
                        return
                    done = True
                    remove()
                    cleanup()
                    if self._uninstrument is uninstrument:
                        self._key, self._uninstrument = (), None

            self._key, self._uninstrument = key, uninstrument
            return uninstrument
