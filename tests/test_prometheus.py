"""scoped_clients.prometheus: counters scraped over HTTP from a real app after real cancelled calls.

The app runs under uvicorn on 127.0.0.1 with ``ScopeMiddleware``, a scoped
OpenAI client talking to the loopback provider, and prometheus_client's
``/metrics`` endpoint.  A client drops mid-request; the provider must see the
disconnect, and the scrape must count the aborted call, its savings and its
cancel latency.  The Grafana dashboard in ``examples/grafana`` is checked
against the names such a run really exports.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from _helpers import Reports, cancel_sync_call
from scoped_clients import RequestScope, ScopeCancelled, prometheus
from scoped_clients.asgi import ScopeMiddleware
from scoped_clients.openai import AsyncOpenAI, OpenAI
from scoped_clients.provider import LocalProvider
from scoped_clients.testing import serve

MAX_TOKENS = 300
MESSAGES: Any = [{"role": "user", "content": "hello"}]
DASHBOARD = Path(__file__).parent.parent / "examples" / "grafana" / "dashboard.json"


@pytest.fixture
def registry() -> Iterator[prometheus_client.CollectorRegistry]:
    """A fresh registry, instrumented; a report sink registered *after* ours sees counted reports."""
    registry = prometheus_client.CollectorRegistry()
    uninstrument = prometheus.instrument(registry)
    yield registry
    uninstrument()


@pytest.fixture
def reports(registry: prometheus_client.CollectorRegistry, reports: Reports) -> Reports:
    """conftest's sink, added after the registry's: a report it has seen is counted already."""
    return reports


def build_app(provider: LocalProvider, registry: prometheus_client.CollectorRegistry) -> ScopeMiddleware:
    llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)

    async def complete(request: Request) -> Response:
        model = request.query_params["model"]
        completion = await llm.chat.completions.create(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS)
        return JSONResponse({"answer": completion.choices[0].message.content})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await llm.close()

    routes = [Route("/complete", complete), Mount("/metrics", prometheus_client.make_asgi_app(registry))]
    return ScopeMiddleware(Starlette(routes=routes, lifespan=lifespan))


def scrape(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics/")
    assert response.status_code == 200
    return response.text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


@pytest.fixture
def scraped(provider: LocalProvider, registry: prometheus_client.CollectorRegistry, reports: Reports) -> Any:
    """A completed request, then one whose client leaves mid-generation; the scrape after both."""
    with serve(build_app(provider, registry), "uvicorn") as port:
        assert httpx.get(f"http://127.0.0.1:{port}/complete?model=local-3").json() == {"answer": "tok0 tok1 tok2 "}
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /complete?model=local-1000 HTTP/1.1\r\nHost: test\r\n\r\n")
        _, log = provider.wait_for_requests(2)
        log.wait_units(5)
        sock.close()  # the tab is closed
        seen = log.wait_disconnect()
        reports.wait(2)
        (dropped,) = [r for r in reports.items if r.outcome == "cancelled"]
        text = scrape(port)
    return text, log, seen, dropped


def test_a_dropped_request_is_counted_in_the_scrape(scraped: Any) -> None:
    text, log, seen, dropped = scraped
    assert seen is not None and log.completed_at is None  # the provider saw the client go, mid-answer
    (record,) = dropped.calls
    assert record.outcome == "aborted" and record.cancel_reason == "client_disconnected"
    found = samples(text)
    cancel = {"provider": "openai", "model": "local-1000", "operation": "chat", "reason": "client_disconnected"}
    assert value(found, "scoped_clients_calls_aborted_total", **cancel) == 1
    assert value(found, "scoped_clients_calls_aborted_total") == 1
    assert value(found, "scoped_clients_tokens_saved_max_total", **cancel) == record.tokens_saved_max
    assert value(found, "scoped_clients_tokens_saved_total", **cancel) == record.tokens_saved
    # the bound holds at the provider: it produced at most max_tokens - bound by the abort
    assert MAX_TOKENS - len(log.units) <= record.tokens_saved_max
    latency = {"provider": "openai", "operation": "chat", "reason": "client_disconnected"}
    assert value(found, "scoped_clients_cancel_latency_seconds_count", **latency) == 1
    assert value(found, "scoped_clients_cancel_latency_seconds_sum", **latency) == pytest.approx(
        record.started_at + record.duration - record.cancelled_at
    )
    used = {"provider": "openai", "model": "local-3", "operation": "chat"}
    assert value(found, "scoped_clients_tokens_used_total", **used, token_type="output") == 3
    assert value(found, "scoped_clients_tokens_used_total", **used, token_type="input") > 0
    assert value(found, "scoped_clients_operation_duration_seconds_count", outcome="completed") == 1
    assert value(found, "scoped_clients_operation_duration_seconds_count", outcome="aborted") == 1
    assert value(found, "scoped_clients_calls_refused_total") == 0
    # bounded labels: nothing names a scope (the middleware's scope names hold URL paths) or its id
    assert not any("scope" in label or "/complete" in v for _, ls in found for label, v in ls)


def test_promtool_accepts_the_scrape(scraped: Any) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian's prometheus package; scripts/test.sh installs it as root)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scraped[0], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""  # no lint warning either


def one_of_each(provider: LocalProvider) -> None:
    """An aborted call (cancelled from another thread mid-answer), a completed one and a refused one."""
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    try:
        result = cancel_sync_call(
            provider,
            lambda: llm.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=MAX_TOKENS),
            units=3,
        )
        assert result.seen >= result.t_cancel
        with RequestScope():
            llm.chat.completions.create(model="local-2", messages=MESSAGES)
        with RequestScope() as scope:
            scope.cancel("user_stop")
            with pytest.raises(ScopeCancelled):
                llm.chat.completions.create(model="local-5", messages=MESSAGES)
    finally:
        llm.close()


def test_a_refused_call_is_counted_by_reason(
    provider: LocalProvider, registry: prometheus_client.CollectorRegistry
) -> None:
    one_of_each(provider)
    assert [log.json["model"] for log in provider.requests] == ["local-1000", "local-2"]  # local-5 never sent
    found = samples(prometheus_client.generate_latest(registry).decode())
    assert value(found, "scoped_clients_calls_refused_total", reason="user_stop", model="local-5") == 1
    assert value(found, "scoped_clients_calls_refused_total") == 1
    assert value(found, "scoped_clients_operation_duration_seconds_count", model="local-5") == 0


def test_model_labels_are_capped(provider: LocalProvider) -> None:
    registry = prometheus_client.CollectorRegistry()
    uninstrument = prometheus.instrument(registry, max_models=2)
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    with RequestScope("many models"):
        for n in range(1, 6):
            llm.chat.completions.create(model=f"local-{n}", messages=MESSAGES)
    llm.close()
    found = samples(prometheus_client.generate_latest(registry).decode())
    uninstrument()
    models = {dict(ls)["model"] for n, ls in found if n == "scoped_clients_operation_duration_seconds_count"}
    assert models == {"local-1", "local-2", "other"}
    assert value(found, "scoped_clients_operation_duration_seconds_count", model="other") == 3
    assert samples(prometheus_client.generate_latest(registry).decode()) == {}  # uninstrument unregistered them


def test_instrument_twice_is_safe(provider: LocalProvider) -> None:
    registry = prometheus_client.CollectorRegistry()
    uninstrument = prometheus.instrument(registry)
    assert prometheus.instrument(registry) is uninstrument  # no "Duplicated timeseries" error, no double count
    llm = OpenAI(base_url=provider.url + "/v1", api_key="x", max_retries=0)
    with RequestScope():
        llm.chat.completions.create(model="local-2", messages=MESSAGES)
    found = samples(prometheus_client.generate_latest(registry).decode())
    assert value(found, "scoped_clients_operation_duration_seconds_count") == 1
    other = prometheus_client.CollectorRegistry()
    prometheus.instrument(other)()  # replaced, then removed: the first registry is left without our metrics
    with RequestScope():
        llm.chat.completions.create(model="local-2", messages=MESSAGES)
    llm.close()
    uninstrument()  # harmless now
    assert samples(prometheus_client.generate_latest(registry).decode()) == {}
    assert len(provider.requests) == 2


# ------------------------------------------------------------------ the Grafana dashboard

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset"}


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_the_dashboard_uses_only_exported_names(
    provider: LocalProvider, registry: prometheus_client.CollectorRegistry
) -> None:
    """Every metric and label a dashboard query names is one a real run exports."""
    one_of_each(provider)
    exported = {s.name for metric in registry.collect() for s in metric.samples}
    labels = {label for metric in registry.collect() for s in metric.samples for label in s.labels}
    assert {"scoped_clients_calls_refused_total", "scoped_clients_cancel_latency_seconds_bucket"} <= exported

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _expressions(dashboard)
    assert len(exprs) >= 8
    for expr in exprs:
        names = set(re.findall(r"\b(?:scoped_clients|gen_ai)_[a-zA-Z0-9_]+", expr))
        assert names, f"{expr!r} names no metric of ours"
        assert names <= exported, f"{expr!r}: {sorted(names - exported)} is not exported"
        grouped = {
            label.strip()
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in group.split(",")
            if label.strip()
        }
        matched = set(re.findall(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", expr))
        label_values = set(re.findall(r"label_values\([^,]+,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)", expr))
        unknown = (grouped | matched | label_values) - labels - _PROMQL_WORDS
        assert not unknown, f"{expr!r} uses labels {sorted(unknown)} that no metric carries"
