"""scoped_clients.otel: spans and metrics of real calls against the loopback provider.

The OpenTelemetry SDK's in-memory span exporter and metric reader collect what
the instrumentation emits; the provider's log says what really happened on
the wire (disconnect seen, tokens produced), and the figures on the spans and
metrics must agree with both.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from _helpers import cancel_sync_call, read_chat_stream, wait
from scoped_clients import CallRecord, RequestScope, ScopeCancelled, ScopeReport, add_report_sink, otel
from scoped_clients.openai import AsyncOpenAI, OpenAI
from scoped_clients.provider import LocalProvider

MAX_TOKENS = 300
MESSAGES: Any = [{"role": "user", "content": "go"}]


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.reports: list[ScopeReport] = []

    def span(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans.get_finished_spans() if s.name == name]
        return span

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of metric ``name``."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def total(self, name: str, **attributes: Any) -> float:
        """Sum of a counter (``value``) or of a histogram (``sum``) over the points that match."""
        return sum(
            getattr(p, "value", None) if hasattr(p, "value") else p.sum
            for attrs, p in self.points(name)
            if all(attrs.get(k) == v for k, v in attributes.items())
        )


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    uninstrument = otel.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider)
    remove = add_report_sink(t.reports.append)
    yield t
    remove()
    uninstrument()
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def _record(t: Telemetry) -> CallRecord:
    (report,) = t.reports
    (record,) = report.calls
    return record


@pytest.mark.anyio
async def test_a_cancelled_stream_is_a_span_under_its_scope(provider: LocalProvider, telemetry: Telemetry) -> None:
    """Server span -> scope span -> call span; the call's span carries the cancel and the savings."""
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    server_tracer = telemetry.tracer_provider.get_tracer("test")
    ten = anyio.Event()

    async def consume() -> None:
        await read_chat_stream(llm, ten, after=10, model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS)

    with anyio.fail_after(20), server_tracer.start_as_current_span("GET /chat") as server_span:
        async with RequestScope("chat") as scope:
            scope.spawn(consume)
            await ten.wait()
            scope.cancel("client_disconnected")
        (log,) = provider.requests
        await wait(log.wait_disconnect)
    await llm.close()

    record = _record(telemetry)
    assert record.outcome == "aborted" and record.tokens_out == 10
    scope_span, call_span = telemetry.span("scoped_clients.scope"), telemetry.span("chat local-1000")
    assert scope_span.parent is not None and scope_span.parent.span_id == server_span.get_span_context().span_id
    assert call_span.parent is not None and call_span.parent.span_id == scope_span.context.span_id
    assert call_span.context.trace_id == server_span.get_span_context().trace_id
    assert call_span.kind is trace.SpanKind.CLIENT
    attrs = dict(call_span.attributes or {})
    assert {k: attrs[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "local-1000",
    }
    assert attrs["gen_ai.usage.output_tokens"] == 10
    assert attrs["error.type"] == "ScopeCancelled" and call_span.status.status_code is StatusCode.ERROR
    assert attrs["scoped_clients.cancel_reason"] == "client_disconnected"
    assert attrs["scoped_clients.tokens_saved_max"] == MAX_TOKENS - 10
    assert attrs["scoped_clients.tokens_saved_max_source"] == "upper_bound"
    assert attrs["scoped_clients.tokens_saved"] == record.tokens_saved
    assert attrs["scoped_clients.tokens_saved_source"] == "estimate"
    assert attrs["scoped_clients.tokens_produced_source"] == "estimate"
    # nothing learned yet: the prior, for a text answer (no tools offered)
    assert (attrs["scoped_clients.saved_method"], attrs["scoped_clients.saved_shape"]) == ("default", "text")
    # The bound holds at the server: it produced no more than the client was told it could have saved.
    assert MAX_TOKENS - len(log.units) <= attrs["scoped_clients.tokens_saved_max"]
    # Real times: the call inside the scope, the cancel event inside the call (one clock conversion: exact),
    # inside the server span (its times are the wall clock's own: 1 ms for the clock to slew between the two).
    assert scope_span.start_time <= call_span.start_time and call_span.end_time <= scope_span.end_time  # type: ignore[operator]
    slack = 1_000_000
    assert server_span.start_time - slack <= scope_span.start_time  # type: ignore[attr-defined,operator]
    assert scope_span.end_time <= server_span.end_time + slack  # type: ignore[attr-defined,operator]
    (event,) = call_span.events
    assert event.name == "scoped_clients.cancel"
    assert call_span.start_time <= event.timestamp <= call_span.end_time  # type: ignore[operator]
    scope_attrs = dict(scope_span.attributes or {})
    assert scope_attrs["scoped_clients.scope.outcome"] == "cancelled"
    assert scope_attrs["scoped_clients.calls.aborted"] == 1
    assert scope_span.status.status_code is StatusCode.UNSET  # the scope absorbed its cancel: nothing failed

    reason = scope.cancel_reason
    assert reason is not None and record.cancelled_at == reason.time
    latency = record.started_at + record.duration - reason.time
    assert attrs["scoped_clients.cancel_latency"] == pytest.approx(latency)
    labels = {"gen_ai.provider.name": "openai", "scoped_clients.cancel_reason": "client_disconnected"}
    assert telemetry.total("scoped_clients.calls.aborted", **labels) == 1
    assert telemetry.total("scoped_clients.tokens.saved_max", **labels) == MAX_TOKENS - 10
    assert telemetry.total("scoped_clients.tokens.saved", **labels) == record.tokens_saved
    assert telemetry.total("scoped_clients.cancel.latency", **labels) == pytest.approx(latency)
    assert telemetry.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) == 10
    ((duration_attrs, duration),) = telemetry.points("gen_ai.client.operation.duration")
    assert duration_attrs["error.type"] == "ScopeCancelled" and duration.count == 1
    assert duration.sum == pytest.approx(record.duration)


@pytest.mark.anyio
async def test_a_refused_call_never_reaches_the_provider(provider: LocalProvider, telemetry: Telemetry) -> None:
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    refused = anyio.Event()

    async def call() -> None:
        try:
            await llm.chat.completions.create(model="local-5", messages=MESSAGES)
        except ScopeCancelled:
            refused.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, RequestScope("late") as scope:
            scope.cancel("client_disconnected")
            tg.start_soon(call)  # a task outside the body: it reaches the transport and is refused there
            with scope.shield():
                await refused.wait()
    await llm.close()
    assert provider.requests == []
    span = telemetry.span("chat local-5")
    attrs = dict(span.attributes or {})
    assert attrs["scoped_clients.outcome"] == "refused" and attrs["error.type"] == "ScopeCancelled"
    assert "gen_ai.usage.output_tokens" not in attrs  # nothing was generated, nothing to report as used
    assert (
        telemetry.total("scoped_clients.calls.refused", **{"scoped_clients.cancel_reason": "client_disconnected"}) == 1
    )
    assert telemetry.points("gen_ai.client.operation.duration") == []  # it never ran


def test_a_sync_call_cancelled_from_another_thread(provider: LocalProvider, telemetry: Telemetry) -> None:
    """A non-streamed call: the savings are estimates (nothing arrives before the end)."""
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    result = cancel_sync_call(
        provider,
        lambda: llm.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS),
        units=5,
    )
    llm.close()
    assert result.seen >= result.t_cancel and result.log.units_after(result.seen) == 0
    record = _record(telemetry)
    attrs = dict(telemetry.span("chat local-1000").attributes or {})
    assert attrs["scoped_clients.tokens_saved_max"] == record.tokens_saved_max
    assert MAX_TOKENS - len(result.log.units) <= record.tokens_saved_max  # type: ignore[operator]
    assert attrs["scoped_clients.tokens_produced_source"] == "estimate"
    assert telemetry.total("scoped_clients.tokens.saved_max") == record.tokens_saved_max


@pytest.mark.anyio
async def test_a_completed_call_has_no_error(provider: LocalProvider, telemetry: Telemetry) -> None:
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    with anyio.fail_after(20):
        async with RequestScope("ok"):
            completion = await llm.chat.completions.create(model="local-3", messages=MESSAGES)
    await llm.close()
    assert completion.usage is not None
    span = telemetry.span("chat local-3")
    attrs = dict(span.attributes or {})
    assert "error.type" not in attrs and span.status.status_code is StatusCode.UNSET
    assert attrs["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens == 3
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert telemetry.total("gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) == (
        completion.usage.prompt_tokens
    )
    assert telemetry.points("scoped_clients.calls.aborted") == []


def test_a_failed_call_has_the_status_code_as_error_type(provider: LocalProvider, telemetry: Telemetry) -> None:
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    with RequestScope("fails"), pytest.raises(openai.InternalServerError):
        llm.chat.completions.create(model="error-500", messages=MESSAGES)
    llm.close()
    assert [log.status for log in provider.requests] == [500]
    span = telemetry.span("chat error-500")
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == "500" and attrs["scoped_clients.outcome"] == "failed"
    assert span.status.status_code is StatusCode.ERROR and "local provider error" not in (span.status.description or "")
    ((duration_attrs, _),) = telemetry.points("gen_ai.client.operation.duration")
    assert duration_attrs["error.type"] == "500"
    assert telemetry.points("scoped_clients.calls.aborted") == []


@pytest.mark.anyio
async def test_model_names_past_the_cap_are_counted_as_other(provider: LocalProvider) -> None:
    t = Telemetry()
    uninstrument = otel.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider, max_models=1)
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    try:
        with anyio.fail_after(20):
            async with RequestScope("two models"):
                await llm.chat.completions.create(model="local-2", messages=MESSAGES)
                await llm.chat.completions.create(model="local-3", messages=MESSAGES)
    finally:
        await llm.close()
        uninstrument()
    models = {a["gen_ai.request.model"] for a, _ in t.points("gen_ai.client.operation.duration")}
    assert models == {"local-2", "other"}
    assert {s.name for s in t.spans.get_finished_spans()} >= {"chat local-2", "chat local-3"}  # spans keep it


def test_instrument_twice_counts_once_and_uninstrument_stops(provider: LocalProvider) -> None:
    t = Telemetry()
    uninstrument = otel.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider)
    assert otel.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider) is uninstrument
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    with RequestScope("once"):
        llm.chat.completions.create(model="local-2", messages=MESSAGES)
    assert len(t.spans.get_finished_spans()) == 2  # scope + call, not twice
    assert sum(p.count for _, p in t.points("gen_ai.client.operation.duration")) == 1
    other = Telemetry()
    replace = otel.instrument(tracer_provider=other.tracer_provider, meter_provider=other.meter_provider)
    uninstrument()  # the first one's function no longer removes the second
    with RequestScope("replaced"):
        llm.chat.completions.create(model="local-2", messages=MESSAGES)
    assert len(t.spans.get_finished_spans()) == 2 and len(other.spans.get_finished_spans()) == 2
    replace()
    replace()  # twice is harmless
    with RequestScope("off"):
        llm.chat.completions.create(model="local-2", messages=MESSAGES)
    llm.close()
    assert len(other.spans.get_finished_spans()) == 2
    assert len(provider.requests) == 3


@pytest.mark.parametrize(("extra", "package"), [("otel", "opentelemetry"), ("prometheus", "prometheus_client")])
def test_without_the_extra_the_error_says_what_to_install(
    extra: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, f"scoped_clients.{extra}", raising=False)
    with pytest.raises(ImportError, match=rf'pip install "scoped-clients\[{extra}\]"'):
        importlib.import_module(f"scoped_clients.{extra}")


# ------------------------------------------------------------------ MCP: execute_tool


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    pytest.importorskip("mcp")
    from _mcp import serve_http

    with serve_http() as url:  # the SDK's own server, in its own process (tests/_mcp_server.py)
        yield url


@pytest.mark.anyio
async def test_an_mcp_tool_call_is_an_execute_tool_span(mcp_url: str, telemetry: Telemetry, tmp_path: Any) -> None:
    """``tools/call`` records are the GenAI conventions' ``execute_tool`` (and the MCP conventions' client
    span): the tool, the server, the outcome; the other MCP requests are no GenAI operation."""
    import mcp

    from _mcp import ServerLog
    from scoped_clients.mcp import Client

    log = ServerLog(tmp_path / "server.log")
    port = int(mcp_url.split(":")[2].split("/")[0])
    with anyio.fail_after(30):
        async with Client(mcp_url) as client:
            async with RequestScope("tools"):
                await client.call_tool("slow", {"seconds": 0, "tag": "ok", "log": str(log.path)})
                failed = await client.call_tool("no_such_tool", {})  # the server answers isError
                await client.list_tools()
                with pytest.raises(mcp.MCPError):
                    await client.read_resource("file:///nowhere")
            async with anyio.create_task_group() as outside, RequestScope("cancelled") as scope:

                async def call() -> None:  # a task the scope's body never awaits
                    with pytest.raises(ScopeCancelled):
                        await client.call_tool("slow", {"seconds": 30, "tag": "c", "log": str(log.path)})

                outside.start_soon(call)
                await log.wait("start", "c")
                scope.cancel("client_disconnected")
            await log.wait("cancelled", "c")  # the server's handler was stopped
    assert failed.is_error

    calls = [s for s in telemetry.spans.get_finished_spans() if s.name != "scoped_clients.scope"]
    spans = {(s.name, dict(s.attributes or {})["scoped_clients.outcome"]): s for s in calls}
    assert set(spans) == {  # the SDK lists the tools itself, to validate a result of a tool it has not seen
        ("tools/call slow", "completed"),
        ("tools/call no_such_tool", "completed"),
        ("tools/list", "completed"),
        ("resources/read", "failed"),
        ("tools/call slow", "aborted"),
    }
    ok, aborted = spans[("tools/call slow", "completed")], spans[("tools/call slow", "aborted")]
    server = {"server.address": "127.0.0.1", "server.port": port, "network.transport": "tcp"}
    for span in (ok, aborted):
        attrs = dict(span.attributes or {})
        assert span.kind is trace.SpanKind.CLIENT
        assert {k: attrs[k] for k in ("gen_ai.operation.name", "gen_ai.tool.name", "mcp.method.name")} == {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "slow",
            "mcp.method.name": "tools/call",
        }
        assert {k: attrs[k] for k in server} == server and attrs["gen_ai.provider.name"] == "mcp"
        assert "gen_ai.usage.output_tokens" not in attrs  # a tool generates no tokens
    assert "error.type" not in dict(ok.attributes or {}) and ok.status.status_code is StatusCode.UNSET
    cancelled = dict(aborted.attributes or {})
    assert cancelled["error.type"] == "ScopeCancelled" and aborted.status.status_code is StatusCode.ERROR
    assert cancelled["scoped_clients.cancel_reason"] == "client_disconnected"
    assert [e.name for e in aborted.events] == ["scoped_clients.cancel"]
    tool_error = dict(spans[("tools/call no_such_tool", "completed")].attributes or {})
    assert tool_error["error.type"] == "tool_error" and tool_error["gen_ai.tool.name"] == "no_such_tool"
    listed = dict(spans[("tools/list", "completed")].attributes or {})
    assert listed["mcp.method.name"] == "tools/list" and "gen_ai.operation.name" not in listed
    assert "gen_ai.tool.name" not in listed
    read = dict(spans[("resources/read", "failed")].attributes or {})
    assert read["error.type"] == read["rpc.response.status_code"] == "-32602"  # the JSON-RPC error code

    # metrics: the operation, the tool and the server as attributes, bounded (no arguments, no ids)
    durations = {
        (a.get("gen_ai.operation.name"), a.get("gen_ai.tool.name"), a.get("error.type")): (a, p)
        for a, p in telemetry.points("gen_ai.client.operation.duration")
    }
    attrs, point = durations[("execute_tool", "slow", None)]
    assert point.count == 1 and attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == port
    assert attrs["gen_ai.provider.name"] == "mcp" and attrs["gen_ai.request.model"] == "none"
    assert durations[("execute_tool", "slow", "ScopeCancelled")][1].count == 1
    assert durations[("execute_tool", "no_such_tool", "tool_error")][1].count == 1
    assert ("other", None, None) in durations and ("other", None, "-32602") in durations  # list, read
    cancel = {"gen_ai.operation.name": "execute_tool", "scoped_clients.cancel_reason": "client_disconnected"}
    assert telemetry.total("scoped_clients.calls.aborted", **cancel) == 1
    (latency,) = [
        p for a, p in telemetry.points("scoped_clients.cancel.latency") if a["gen_ai.operation.name"] == "execute_tool"
    ]
    assert latency.count == 1 and latency.sum < 1.0


def test_where_an_mcp_server_is_in_the_conventions_terms() -> None:
    """``detail["server"]`` as scoped_clients.mcp names a server: a URL, a stdio command, or neither."""
    from scoped_clients._metrics import McpServer, mcp_server

    def record(server: object, provider: str = "mcp") -> CallRecord:
        return CallRecord(provider, "tools/call", None, "completed", 0.0, 0.1, detail={"server": server, "tool": "t"})

    assert mcp_server(record("https://tools.example/mcp")) == McpServer("tools.example", 443, "tcp")
    assert mcp_server(record("http://127.0.0.1:8000/mcp")) == McpServer("127.0.0.1", 8000, "tcp")
    assert mcp_server(record("stdio:python")) == McpServer(transport="pipe")
    for nowhere in ("MCPServer", "unknown", None):  # in-process, a framework's session
        assert mcp_server(record(nowhere)) == McpServer()
    assert mcp_server(record("http://127.0.0.1:8000/", provider="http")) == McpServer()  # not an MCP record
