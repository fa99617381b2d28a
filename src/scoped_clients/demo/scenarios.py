"""Drop requests like a browser closing its tab, and measure what the upstream did next."""

from __future__ import annotations

import importlib.util
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .._report import ScopeReport, add_report_sink
from ..provider import LocalProvider, Reply, ToolCall, embed
from ..testing import serve
from . import agents, mcp_tool
from .app import COLLECTION, DIM, TICKS, Mode, TaskProbe, build_app


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    #: what the upstream does before we drop: (requests to wait for, units of the last one)
    busy_requests: int
    busy_units: int
    tool: bool = False
    #: an agent loop (``demo.agents``): LLM turn calling the tool, the tool, a final LLM turn;
    #: dropped while the tool runs
    agent: agents.Framework | None = None
    #: a tool on an MCP server (``demo.mcp_tool``), called from a task the request does not cancel
    mcp: bool = False
    #: an SDK the scenario needs (LiteLLM), or None
    sdk: str | None = None

    def available(self) -> bool:
        if self.mcp:
            return mcp_tool.installed()
        if self.sdk is not None and importlib.util.find_spec(self.sdk) is None:
            return False
        return self.agent is None or self.agent.installed()

    def install(self) -> str | None:
        """What to install to run it (None: the ``demo`` extra is enough)."""
        if self.mcp:
            return mcp_tool.INSTALL
        if self.sdk is not None:
            return f"pip install {self.sdk}"
        return self.agent.install if self.agent is not None else None


BASE_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("streaming chat", "/stream", 1, 5),
    Scenario("non-streaming chat", "/complete", 1, 5),
    Scenario("non-streaming chat (Anthropic)", "/complete-anthropic", 1, 5),
    Scenario("non-streaming chat (Gemini)", "/complete-gemini", 1, 5),
    Scenario("non-streaming chat (LiteLLM, anthropic/)", "/complete-litellm", 1, 5, sdk="litellm"),
    Scenario("RAG: search -> rerank -> LLM", "/rag", 1, 3),
    Scenario("fire-and-forget task", "/fire", 1, 5),
    Scenario("tool subprocess", "/tool", 0, 5, tool=True),
)
#: one per framework, whether or not it is installed (``Scenario.available()``)
AGENT_SCENARIOS: tuple[Scenario, ...] = tuple(
    Scenario(f"agent: {f.name} (LLM -> tool -> LLM)", f.path, 1, 5, tool=True, agent=f) for f in agents.FRAMEWORKS
)
#: a tool on the MCP SDK's own server, in its own process; dropped while the tool runs
MCP_SCENARIOS: tuple[Scenario, ...] = (Scenario("MCP tool (call in a task of its own)", mcp_tool.PATH, 0, 5, mcp=True),)
#: the demo's default set: the agent and MCP scenarios whose packages are installed
SCENARIOS: tuple[Scenario, ...] = tuple(s for s in BASE_SCENARIOS + AGENT_SCENARIOS + MCP_SCENARIOS if s.available())


@dataclass
class Outcome:
    units_after_drop: int = 0
    latency_ms: float | None = None  # drop -> upstream saw the disconnect (None: it never did)
    calls_after_drop: int = 0
    tokens_saved: int | None = None
    tokens_saved_max: int | None = None
    reason: str | None = None
    tasks_left: int | None = None  # app tasks beyond the idle baseline, 100 ms after the drop (with a probe)
    tools_left: int | None = None  # tool processes still running 100 ms after the drop (tool scenarios)
    notes: list[str] = field(default_factory=list)


def _read_ticks(path: str) -> tuple[int | None, list[float]]:
    """The tool's pid and the time of every tick it wrote."""
    pid, stamps = None, []
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("pid "):
                    pid = int(line.split()[1])
                elif line.strip():
                    stamps.append(float(line))
    except FileNotFoundError:
        pass
    return pid, stamps


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # ESRCH: it exited between open and read
        return False


def _wait_ticks(path: str, n: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:  # the tool is another process: poll its file
        pid, stamps = _read_ticks(path)
        if pid is not None and len(stamps) >= n:
            return pid
        if time.monotonic() > deadline:
            raise TimeoutError("the tool did not start ticking")
        time.sleep(0.001)


def _observe_tool(outcome: Outcome, path: str, pid: int, t_drop: float, window: float, ticks: int = TICKS) -> None:
    deadline = time.monotonic() + window
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.0005)
    gone_at = time.monotonic()
    _, stamps = _read_ticks(path)
    outcome.units_after_drop = sum(1 for s in stamps if s > t_drop)
    if len(stamps) >= ticks:
        outcome.notes.append("ran to the end")
    elif not _running(pid):
        outcome.latency_ms = (gone_at - t_drop) * 1000


def _observe_upstream(outcome: Outcome, provider: LocalProvider, t_drop: float, window: float) -> None:
    """Wait until the upstream is idle (every request done, no new one for a while), then count."""
    deadline = time.monotonic() + window
    while True:
        logs = provider.requests
        for log in logs:
            try:
                log.wait_done(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                outcome.notes.append("still running at the end of the window")
        try:  # a pipeline may start its next call right after one ends
            provider.wait_for_requests(len(logs) + 1, timeout=min(0.3, max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            break
    logs = provider.requests
    outcome.units_after_drop = sum(log.units_after(t_drop) for log in logs)
    seen = [log.disconnected_at - t_drop for log in logs if log.disconnected_at is not None]
    finished = any(log.completed_at is not None and log.completed_at > t_drop for log in logs)
    outcome.latency_ms = max(seen) * 1000 if seen and not finished else None
    outcome.calls_after_drop = sum(1 for log in logs if log.started_at > t_drop)


def _observe_agent(
    outcome: Outcome, provider: LocalProvider, tick_file: str, pid: int, t_drop: float, window: float
) -> None:
    """Dropped while the agent's tool runs: the tool's ticks and the LLM's units after the drop both count;
    the disconnect is seen when the tool's process is gone (no LLM call is in flight at the drop)."""
    _observe_tool(outcome, tick_file, pid, t_drop, window, agents.TICKS)
    ticks, latency = outcome.units_after_drop, outcome.latency_ms
    _observe_upstream(outcome, provider, t_drop, window)
    outcome.units_after_drop += ticks
    outcome.latency_ms = latency


def _sample(outcome: Outcome, probe: TaskProbe | None, baseline: int, running: Callable[[], bool] | None) -> None:
    if probe is not None:
        outcome.tasks_left = probe.count() - baseline
    if running is not None:
        outcome.tools_left = int(running())


@contextmanager
def _collect_reports(scope_name: str) -> Iterator[tuple[list[ScopeReport], threading.Event]]:
    """The reports of the scopes named ``scope_name`` (the middleware names them "METHOD path")."""
    reports: list[ScopeReport] = []
    arrived = threading.Event()

    def sink(report: ScopeReport) -> None:
        if report.scope == scope_name:
            reports.append(report)
            arrived.set()

    remove = add_report_sink(sink)
    try:
        yield reports, arrived
    finally:
        remove()


def _seed(provider: LocalProvider) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(url=provider.url, prefer_grpc=False, check_compatibility=False)
    if client.collection_exists(COLLECTION):
        client.delete_collection(COLLECTION)
    client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    points = [models.PointStruct(id=i, vector=embed(f"doc {i}"), payload={"text": f"doc {i}"}) for i in range(20)]
    client.upsert(COLLECTION, points=points)
    client.close()


def run_scenario(
    provider: LocalProvider, port: int, scenario: Scenario, tick_file: str, mode: Mode, probe: TaskProbe | None = None
) -> Outcome:
    provider.reset()
    if scenario.agent is not None:  # the first LLM turn calls the tool; the final one is answered as usual
        provider.script(Reply(tool_calls=[ToolCall(agents.TOOL, {})]))
    if os.path.exists(tick_file):
        os.remove(tick_file)
    outcome = Outcome()
    baseline = probe.count() if probe is not None else 0
    with (
        _collect_reports(f"GET {scenario.path}") as (reports, arrived),
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(f"GET {scenario.path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n".encode())
        pid = None
        if scenario.mcp:
            mcp_tool.wait_ticks(tick_file, scenario.busy_units)
        elif scenario.tool:
            if scenario.busy_requests:
                provider.wait_for_requests(scenario.busy_requests, timeout=10)
            pid = _wait_ticks(tick_file, scenario.busy_units)
        else:
            logs = provider.wait_for_requests(scenario.busy_requests, timeout=10)
            logs[-1].wait_units(scenario.busy_units, timeout=10)
        t_drop = time.monotonic()
        sock.close()  # the tab is closed
        # sampled from a timer so that the observation below keeps its own timing
        running = partial(_running, pid) if pid is not None else None
        if scenario.mcp:
            running = partial(mcp_tool.running, tick_file)
        sampler = threading.Timer(0.1, _sample, (outcome, probe, baseline, running))
        sampler.start()
        window = 1.0 if mode == "scoped" else 8.0
        if scenario.mcp:  # measured at the MCP server: its tool handler's own notes
            outcome.units_after_drop, outcome.latency_ms, ran_on = mcp_tool.observe(tick_file, t_drop, window)
            if ran_on:
                outcome.notes.append("ran to the end")
        elif scenario.agent is not None and pid is not None:
            _observe_agent(outcome, provider, tick_file, pid, t_drop, window)
        elif pid is not None:
            _observe_tool(outcome, tick_file, pid, t_drop, window)
        else:
            _observe_upstream(outcome, provider, t_drop, window)
        sampler.join()
        if mode == "scoped" and arrived.wait(5):
            report = reports[-1]
            outcome.tokens_saved = report.tokens_saved
            outcome.tokens_saved_max = report.tokens_saved_max
            outcome.reason = report.cancel_reason
    return outcome


def _fmt_latency(o: Outcome) -> str:
    return "never (ran to the end)" if o.latency_ms is None else f"{o.latency_ms:.1f} ms"


def run_scenarios(
    reps: int = 1,
    *,
    count_tasks: bool = False,
    progress: Callable[[str], object] | None = None,
    scenarios: Sequence[Scenario] = SCENARIOS,
) -> dict[str, dict[Mode, list[Outcome]]]:
    """Run every scenario ``reps`` times on the raw app, then on the scoped app.

    ``count_tasks``: also count the app's tasks left 100 ms after each drop (``Outcome.tasks_left``).
    ``scenarios``: default, the demo's set; a scenario whose framework is not installed is refused.
    """
    missing = [str(s.install()) for s in scenarios if not s.available()]
    if missing:
        raise RuntimeError(f"these scenarios need packages that are not installed: {'; '.join(missing)}")
    base = [s for s in scenarios if s.agent is None and not s.mcp]
    agent = [s for s in scenarios if s.agent is not None]
    mcp = [s for s in scenarios if s.mcp]
    results: dict[str, dict[Mode, list[Outcome]]] = {s.name: {"raw": [], "scoped": []} for s in scenarios}
    with (
        LocalProvider(token_interval=0.01, default_tokens=300) as provider,
        tempfile.TemporaryDirectory() as tmp,
        ExitStack() as servers,
    ):
        _seed(provider)
        # the MCP server: one process for both apps (the SDK's own server, on streamable HTTP)
        mcp_url = servers.enter_context(mcp_tool.serve()) if mcp else ""
        provider.search_delay = 1.0
        tick_file = os.path.join(tmp, "ticks")
        modes: tuple[Mode, ...] = ("raw", "scoped")
        for mode in modes:
            if progress is not None:
                progress(f"running the {mode} app ...")
            builds: tuple[tuple[Callable[..., Any], str, list[Scenario]], ...] = (
                (build_app, provider.url, base),
                (agents.build_agent_app, provider.url, agent),
                (mcp_tool.build_mcp_app, mcp_url, mcp),
            )
            for build, upstream, group in builds:
                if not group:
                    continue
                probe = TaskProbe() if count_tasks else None
                with serve(build(mode, upstream, tick_file, probe), log_level="critical") as port:
                    for scenario in group:
                        for _ in range(reps):
                            outcome = run_scenario(provider, port, scenario, tick_file, mode, probe)
                            results[scenario.name][mode].append(outcome)
    return results


def run_demo(print_: Callable[[str], object] = print) -> dict[str, dict[Mode, Outcome]]:
    """Run every scenario on both apps and print the side-by-side table."""
    runs = run_scenarios(progress=print_)
    results = {name: {mode: outcomes[0] for mode, outcomes in by_mode.items()} for name, by_mode in runs.items()}
    print_(format_table(results))
    return results


def format_table(results: dict[str, dict[Mode, Outcome]]) -> str:
    head = (
        "| scenario | upstream units after the drop (raw -> scoped) | upstream saw the disconnect (raw -> scoped) "
        "| calls started after the drop (raw -> scoped) | tokens saved, our report (estimate / max) |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for name, by_mode in results.items():
        raw, scoped = by_mode["raw"], by_mode["scoped"]
        saved = "-" if scoped.tokens_saved is None else f"{scoped.tokens_saved} / {scoped.tokens_saved_max}"
        lines.append(
            f"| {name} | {raw.units_after_drop} -> {scoped.units_after_drop} "
            f"| {_fmt_latency(raw)} -> {_fmt_latency(scoped)} "
            f"| {raw.calls_after_drop} -> {scoped.calls_after_drop} | {saved} |"
        )
    total_raw = sum(r["raw"].units_after_drop for r in results.values())
    total_scoped = sum(r["scoped"].units_after_drop for r in results.values())
    latencies = [r["scoped"].latency_ms for r in results.values() if r["scoped"].latency_ms is not None]
    median = f"{statistics.median(latencies):.1f} ms" if latencies else "n/a"
    lines.append("")
    lines.append(
        f"Upstream work after the user left: {total_raw} units with the raw SDKs, {total_scoped} with scoped_clients "
        f"(median time to stop: {median})."
    )
    return "\n".join(lines)
