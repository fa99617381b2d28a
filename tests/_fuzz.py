"""The randomized cancellation engine, shared by ``tests/test_fuzz.py`` and ``benchmarks/soak.py``.

Each iteration is a ``Case`` drawn from ``random.Random(seed)``: a call shape (every
scoped client, async and sync, and the tools), where the call runs (the scope's body,
a child spawned into the scope, a task outside the body, a thread), who cancels
(the owning task, another task, a thread, the deadline, a parent scope, two cancels
at once) and when (before the call, during connect/send, while the provider holds
the response headers, mid-body, after completion).  The case runs against the
embedded ``LocalProvider``; every request carries the iteration's tag, so the
provider's log tells what *the upstream* saw, and the engine checks:

* the caller: only ``ScopeCancelled`` or the backend's cancellation escape a call
  (never the vendor's connection errors), and the scope's block never raises;
* the upstream: at most one request per call (no SDK retry), none for a call made
  after the cancel (late call), at most 1 unit produced after the cancel, and a
  request still running when the scope was cancelled sees the client go;
* the report: one record per call that reached the transport, outcomes consistent
  with what happened (never ``failed`` for a cancel), the cancel hook run once;
* the process, at checkpoints: no growth of tasks, descriptors, threads or child
  processes.

Synchronisation is on provider events (request arrived, n units produced) and the
scope's own ``on_cancel`` hook; no assertion depends on how long anything took.
A violation names the seed and the iteration: ``FUZZ_SEED=<seed> FUZZ_ITERATION=<i>``
replays that one case (the cases are drawn in full from the seed before any runs).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import sniffio

import scoped_clients.anthropic as sc_anthropic
import scoped_clients.cohere as sc_cohere
import scoped_clients.httpx as sc_httpx
import scoped_clients.httpx2 as sc_httpx2
import scoped_clients.openai as sc_openai
import scoped_clients.qdrant as sc_qdrant
from scoped_clients import LocalCancelBus, RequestScope, ScopeCancelled, ScopeStateError
from scoped_clients.provider import LocalProvider, RequestLog, embed
from scoped_clients.tools import run_command, run_tool

REASON = "client_disconnected"
COLLECTION = "fuzz"
DIM = 8
#: seconds between two units at the provider: wide enough that "<= 1 unit after the cancel"
#: holds on a loaded 2-core machine (the cancel reaches the provider in 1-3 ms)
TOKEN_INTERVAL = 0.02
LONG_TOKENS = 1000
MAX_TOKENS = 400
#: a bound on every wait for the provider: a wait that times out is a violation (a hang), not a flake
WAIT = 10.0

#: "bus": by the scope's id through a ``LocalCancelBus``, from another thread (a cancel endpoint)
SOURCES = ("owner", "task", "thread", "deadline", "parent", "twice", "bus")
POINTS = ("before", "connect", "headers", "body", "after")


# ------------------------------------------------------------------ call shapes


@dataclass
class Ctx:
    """What one call needs: the provider, the shared clients, the request's tag and size."""

    env: Engine
    result: Result
    tag: str
    long: bool
    hold_headers: bool  # ask the provider to hold the response headers (x-local-delay)

    @property
    def headers(self) -> dict[str, str]:
        h = {"x-fuzz": self.tag}
        if self.hold_headers:
            h["x-local-delay"] = "30"
        return h

    @property
    def model(self) -> str:
        return f"local-{LONG_TOKENS}" if self.long else "local-3"

    @property
    def units_url(self) -> str:
        n = LONG_TOKENS if self.long else 3
        return f"{self.env.provider.url}/units?n={n}&interval={TOKEN_INTERVAL}"


MESSAGES = [{"role": "user", "content": "tell me a long story"}]
DOCS = [f"document number {i} about cancellation" for i in range(10)]


def _openai(env: Engine, sync: bool, **kw: Any) -> Any:
    cls = sc_openai.OpenAI if sync else sc_openai.AsyncOpenAI
    return cls(base_url=env.provider.url + "/v1", api_key="fuzz", **kw)


def _anthropic(env: Engine, sync: bool, **kw: Any) -> Any:
    cls = sc_anthropic.Anthropic if sync else sc_anthropic.AsyncAnthropic
    return cls(base_url=env.provider.url, api_key="fuzz", **kw)


def _cohere(env: Engine, sync: bool) -> Any:
    cls = sc_cohere.ClientV2 if sync else sc_cohere.AsyncClientV2
    return cls(base_url=env.provider.url, api_key="fuzz")


def _qdrant(env: Engine, sync: bool) -> Any:
    cls = sc_qdrant.QdrantClient if sync else sc_qdrant.AsyncQdrantClient
    return cls(url=env.provider.url, check_compatibility=False)


def _httpx(env: Engine, sync: bool) -> Any:
    return sc_httpx.Client() if sync else sc_httpx.AsyncClient()


def _httpx2(env: Engine, sync: bool) -> Any:
    return sc_httpx2.Client() if sync else sc_httpx2.AsyncClient()


def _fuzz_filter(tag: str) -> Any:
    from qdrant_client import models

    # the provider ignores filters: the tag travels in the body, where the provider's log keeps it
    return models.Filter(must=[models.FieldCondition(key="fuzz", match=models.MatchValue(value=tag))])


def _llm_kwargs(ctx: Ctx) -> dict[str, Any]:
    return {"model": ctx.model, "max_tokens": MAX_TOKENS, "extra_headers": ctx.headers}


# Async calls: each consumes its answer in full.


async def a_openai_chat(c: Any, ctx: Ctx) -> None:
    await c.chat.completions.create(messages=MESSAGES, **_llm_kwargs(ctx))


async def a_openai_chat_stream(c: Any, ctx: Ctx) -> None:
    async for _ in await c.chat.completions.create(messages=MESSAGES, stream=True, **_llm_kwargs(ctx)):
        pass


async def a_openai_responses(c: Any, ctx: Ctx) -> None:
    await c.responses.create(model=ctx.model, input="hi", max_output_tokens=MAX_TOKENS, extra_headers=ctx.headers)


async def a_openai_responses_stream(c: Any, ctx: Ctx) -> None:
    stream = await c.responses.create(
        model=ctx.model, input="hi", max_output_tokens=MAX_TOKENS, stream=True, extra_headers=ctx.headers
    )
    async for _ in stream:
        pass


async def a_anthropic_messages(c: Any, ctx: Ctx) -> None:
    await c.messages.create(messages=MESSAGES, **_llm_kwargs(ctx))


async def a_anthropic_stream(c: Any, ctx: Ctx) -> None:
    async with c.messages.stream(messages=MESSAGES, **_llm_kwargs(ctx)) as stream:
        async for _ in stream.text_stream:
            pass


async def a_cohere_chat_stream(c: Any, ctx: Ctx) -> None:
    opts = {"additional_headers": ctx.headers}
    async for _ in c.chat_stream(model=ctx.model, messages=MESSAGES, max_tokens=MAX_TOKENS, request_options=opts):
        pass


async def a_cohere_rerank(c: Any, ctx: Ctx) -> None:
    opts = {"additional_headers": ctx.headers}
    await c.rerank(model="rerank-local", query="cancellation", documents=DOCS, request_options=opts)


async def a_qdrant_query(c: Any, ctx: Ctx) -> None:
    await c.query_points(COLLECTION, query=embed("cancellation"), limit=3, query_filter=_fuzz_filter(ctx.tag))


async def a_http_get(c: Any, ctx: Ctx) -> None:
    response = await c.get(ctx.units_url, headers=ctx.headers)
    response.raise_for_status()


async def a_http_stream(c: Any, ctx: Ctx) -> None:
    async with c.stream("GET", ctx.units_url, headers=ctx.headers) as response:
        async for _ in response.aiter_lines():
            pass


async def a_run_command(c: Any, ctx: Ctx) -> None:
    argv = ["curl", "-sSfN", "--noproxy", "*", "-o", "/dev/null", ctx.units_url]
    for k, v in ctx.headers.items():
        argv += ["-H", f"{k}: {v}"]
    result = await run_command(argv, grace=0.5)
    if result.returncode != 0:
        raise RuntimeError(f"curl exited {result.returncode}: {result.stderr!r}")


async def _async_fetch_tool(c: Any, ctx: Ctx) -> None:
    ctx.result.attempts += 1  # the tool's own HTTP call is a call of the scope too
    response = await c.get(ctx.units_url, headers=ctx.headers)
    response.raise_for_status()


def _sync_fetch_tool(c: Any, ctx: Ctx) -> None:
    ctx.result.attempts += 1
    response = c.get(ctx.units_url, headers=ctx.headers)
    response.raise_for_status()


async def a_run_tool_async(c: Any, ctx: Ctx) -> None:
    await run_tool(_async_fetch_tool, c, ctx)


async def a_run_tool_sync(c: Any, ctx: Ctx) -> None:
    await run_tool(_sync_fetch_tool, c, ctx)


# Sync calls.


def s_openai_chat(c: Any, ctx: Ctx) -> None:
    c.chat.completions.create(messages=MESSAGES, **_llm_kwargs(ctx))


def s_openai_chat_stream(c: Any, ctx: Ctx) -> None:
    for _ in c.chat.completions.create(messages=MESSAGES, stream=True, **_llm_kwargs(ctx)):
        pass


def s_openai_responses(c: Any, ctx: Ctx) -> None:
    c.responses.create(model=ctx.model, input="hi", max_output_tokens=MAX_TOKENS, extra_headers=ctx.headers)


def s_openai_responses_stream(c: Any, ctx: Ctx) -> None:
    for _ in c.responses.create(
        model=ctx.model, input="hi", max_output_tokens=MAX_TOKENS, stream=True, extra_headers=ctx.headers
    ):
        pass


def s_anthropic_messages(c: Any, ctx: Ctx) -> None:
    c.messages.create(messages=MESSAGES, **_llm_kwargs(ctx))


def s_anthropic_stream(c: Any, ctx: Ctx) -> None:
    with c.messages.stream(messages=MESSAGES, **_llm_kwargs(ctx)) as stream:
        for _ in stream.text_stream:
            pass


def s_cohere_chat_stream(c: Any, ctx: Ctx) -> None:
    opts = {"additional_headers": ctx.headers}
    for _ in c.chat_stream(model=ctx.model, messages=MESSAGES, max_tokens=MAX_TOKENS, request_options=opts):
        pass


def s_cohere_rerank(c: Any, ctx: Ctx) -> None:
    opts = {"additional_headers": ctx.headers}
    c.rerank(model="rerank-local", query="cancellation", documents=DOCS, request_options=opts)


def s_qdrant_query(c: Any, ctx: Ctx) -> None:
    c.query_points(COLLECTION, query=embed("cancellation"), limit=3, query_filter=_fuzz_filter(ctx.tag))


def s_http_get(c: Any, ctx: Ctx) -> None:
    c.get(ctx.units_url, headers=ctx.headers).raise_for_status()


def s_http_stream(c: Any, ctx: Ctx) -> None:
    with c.stream("GET", ctx.units_url, headers=ctx.headers) as response:
        for _ in response.iter_lines():
            pass


@dataclass(frozen=True)
class Shape:
    """One call shape: its client factory and its async and/or sync call."""

    name: str
    client: Callable[[Engine, bool], Any]
    acall: Callable[[Any, Ctx], Awaitable[None]] | None
    scall: Callable[[Any, Ctx], None] | None
    holds_headers: bool = True  # can ask the provider to hold the headers (qdrant sends no extra header)
    search: bool = False  # its units are the provider's search_delay
    wrapped_calls: int = 1  # calls of the scope per call (a tool and its HTTP request: 2)


def _always(factory: Callable[..., Any]) -> Callable[[Engine, bool], Any]:
    def make(env: Engine, sync: bool) -> Any:
        return factory(env, sync, always_stream=True)

    return make


def _tool_http(env: Engine, sync: bool) -> Any:
    return sc_httpx.AsyncClient()


def _tool_http_sync(env: Engine, sync: bool) -> Any:
    return sc_httpx2.Client()  # a sync tool runs in a worker thread: a sync client


def _no_client(env: Engine, sync: bool) -> Any:
    return None


SHAPES: tuple[Shape, ...] = (
    Shape("openai.chat", _openai, a_openai_chat, s_openai_chat),
    Shape("openai.chat.stream", _openai, a_openai_chat_stream, s_openai_chat_stream),
    Shape("openai.chat.always_stream", _always(_openai), a_openai_chat, s_openai_chat),
    Shape("openai.responses", _openai, a_openai_responses, s_openai_responses),
    Shape("openai.responses.stream", _openai, a_openai_responses_stream, s_openai_responses_stream),
    Shape("openai.responses.always_stream", _always(_openai), a_openai_responses, s_openai_responses),
    Shape("anthropic.messages", _anthropic, a_anthropic_messages, s_anthropic_messages),
    Shape("anthropic.stream", _anthropic, a_anthropic_stream, s_anthropic_stream),
    Shape("anthropic.messages.always_stream", _always(_anthropic), a_anthropic_messages, s_anthropic_messages),
    Shape("cohere.chat_stream", _cohere, a_cohere_chat_stream, s_cohere_chat_stream),
    Shape("cohere.rerank", _cohere, a_cohere_rerank, s_cohere_rerank, search=True),
    Shape("qdrant.query_points", _qdrant, a_qdrant_query, s_qdrant_query, holds_headers=False, search=True),
    Shape("httpx.get", _httpx, a_http_get, s_http_get),
    Shape("httpx.stream", _httpx, a_http_stream, s_http_stream),
    Shape("httpx2.get", _httpx2, a_http_get, s_http_get),
    Shape("httpx2.stream", _httpx2, a_http_stream, s_http_stream),
    Shape("tools.run_command", _no_client, a_run_command, None),
    Shape("tools.run_tool.async", _tool_http, a_run_tool_async, None, wrapped_calls=2),
    Shape("tools.run_tool.sync", _tool_http_sync, a_run_tool_sync, None, wrapped_calls=2),
)
SHAPE = {s.name: s for s in SHAPES}


# -------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One iteration, fully decided by the seed (nothing here depends on a previous run)."""

    index: int
    shape: str
    mode: str  # "async" or "sync"
    source: str  # who cancels: SOURCES
    point: str  # when: POINTS
    placement: str  # where the call runs: "body", "spawn", "outside" (async); "thread" (sync)
    connect_turns: int  # point "connect": loop turns (or thread yields) between starting the call and the cancel
    body_units: int  # point "body": units the provider produced before the cancel
    timeout: float | None  # source "deadline": the scope's timeout
    fresh_client: bool  # a client made for this call (else the run's shared one, with pooled connections)

    def describe(self) -> str:
        return f"#{self.index} {self.mode} {self.shape} cancel={self.source}@{self.point} call in {self.placement}" + (
            f" timeout={self.timeout:.4f}" if self.timeout is not None else ""
        )


def _deadline_for(point: str, rng: random.Random) -> float:
    """A timeout that lands at ``point`` in the usual case (the checks do not depend on it)."""
    return {
        "before": 0.0,
        "connect": rng.uniform(0.0, 0.004),
        "headers": rng.uniform(0.05, 0.15),
        "body": rng.uniform(0.08, 0.2),
        "after": 1.0,
    }[point]


def draw_cases(seed: int, n: int, *, modes: tuple[str, ...] = ("async", "sync")) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        mode = rng.choice(modes)
        shapes = [s for s in SHAPES if (s.acall if mode == "async" else s.scall) is not None]
        shape = rng.choice(shapes)
        point = rng.choice(POINTS)
        source = rng.choice(SOURCES)
        if mode == "async":
            placements = ["spawn", "outside"] if source == "owner" else ["body", "spawn", "outside"]
        else:
            placements = ["thread"]
            if source == "owner" and point not in ("before", "after"):
                source = "task"  # a blocked sync call's own thread cannot cancel it
        cases.append(
            Case(
                index=i,
                shape=shape.name,
                mode=mode,
                source=source,
                point=point,
                placement=rng.choice(placements),
                connect_turns=rng.randrange(0, 40),
                body_units=rng.randint(1, 4),
                timeout=_deadline_for(point, rng) if source == "deadline" else None,
                fresh_client=rng.random() < 0.25,
            )
        )
    return cases


# ----------------------------------------------------------------- one iteration


@dataclass
class Result:
    """What one iteration observed, and what it violated."""

    case: Case
    main: str = "not run"  # returned / scope_cancelled / backend_cancelled / refused-before / unexpected ...
    late: str = "not run"
    t_cancel: float | None = None
    disconnect_ms: list[float] = field(default_factory=list)
    attempts: int = 0  # calls of the scope the caller made (main, tool's inner call, late)
    hook_runs: int = 0
    scope_error: BaseException | None = None
    errors: list[BaseException] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    report: Any = None
    cancel_returns: list[bool] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.violations.append(what)


class Violation(AssertionError):
    pass


@dataclass
class Checkpoint:
    tasks: int
    fds: int
    threads: int  # threads outside the worker-thread pools
    pool_threads: int
    children: int
    rss: int
    #: the names of those threads (said when their number grows)
    thread_names: tuple[str, ...] = ()


def _pool_thread(t: threading.Thread) -> bool:
    """Worker-thread pools (they grow with demand and idle out) and the library's one timer thread.

    ``uvloop_`` is uvloop's default executor (``run_in_executor(None, ...)``: asyncio's own is ``asyncio_``);
    its second thread, started when a call cancelled at connect left the first busy, was once counted
    as a thread that leaked (seed 15, iteration 59 on uvloop, about one run in fifteen)."""
    names = ("AnyIO worker thread", "Trio thread", "asyncio_", "uvloop_", "ThreadPoolExecutor", "scoped_clients-timers")
    return t.name.startswith(names)


def _count_tasks() -> int:
    if sniffio.current_async_library() == "trio":
        import trio

        def walk(task: Any) -> int:
            return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

        return walk(trio.lowlevel.current_root_task())
    import asyncio

    return len(asyncio.all_tasks())


class Engine:
    """Runs cases against one provider; keeps the shared clients and the per-checkpoint figures."""

    def __init__(self, provider: LocalProvider, seed: int) -> None:
        self.provider = provider
        self.seed = seed
        self.clients: dict[tuple[Callable[[Engine, bool], Any], bool], Any] = {}
        self.backend = "?"
        self.results: list[Result] = []
        self.tags: dict[str, int] = {}  # requests per tag, over the whole run (late arrivals included)
        self.baseline: Checkpoint | None = None
        self.checkpoints: list[Checkpoint] = []
        self.process = psutil.Process()
        # servers other tests left running for the session (redis-server): not the cases' children
        self.other_children = {child.pid for child in self.process.children(recursive=True)}
        self.bus = LocalCancelBus()

    def scope_for(self, case: Case) -> RequestScope:
        """The case's scope (joined to the engine's bus when the case cancels through it)."""
        return RequestScope("fuzz", timeout=case.timeout, bus=self.bus if case.source == "bus" else None)

    # ------------------------------------------------------------- set-up

    def prepare(self) -> None:
        """The provider's settings and the Qdrant collection (sync: call before the event loop runs)."""
        import httpx

        self.provider.token_interval = TOKEN_INTERVAL
        with httpx.Client(base_url=self.provider.url, trust_env=False) as http:
            http.put(f"/collections/{COLLECTION}", json={"vectors": {"size": DIM, "distance": "Cosine"}})
            points = [{"id": i, "vector": embed(d), "payload": {"text": d}} for i, d in enumerate(DOCS)]
            http.put(f"/collections/{COLLECTION}/points", json={"points": points}).raise_for_status()

    def client(self, shape: Shape, sync: bool, fresh: bool) -> tuple[Any, bool]:
        if fresh:
            return shape.client(self, sync), True
        key = (shape.client, sync)
        if key not in self.clients:
            self.clients[key] = shape.client(self, sync)
        return self.clients[key], False

    async def close_clients(self) -> None:
        clients, self.clients = list(self.clients.items()), {}
        for (_, sync), c in clients:
            await _close(c, sync)

    # ----------------------------------------------------------- the run

    async def run(self, cases: list[Case], *, checkpoint_every: int = 25, stop_on_violation: bool = True) -> None:
        """Run ``cases`` in order; a checkpoint every ``checkpoint_every`` cases and at the end."""
        self.backend = sniffio.current_async_library()
        try:
            for n, case in enumerate(cases, 1):
                result = await self.run_case(case)
                if n % checkpoint_every == 0 or n == len(cases):
                    await self.checkpoint(result)
                if result.violations and stop_on_violation:
                    raise Violation(self.explain(result))
        finally:
            await self.close_clients()

    def explain(self, result: Result) -> str:
        lines = [
            f"seed {self.seed}, iteration {result.case.index} on {self.backend}: {result.case.describe()}",
            f"  replay: FUZZ_SEED={self.seed} FUZZ_ITERATION={result.case.index} "
            f"pytest tests/test_fuzz.py -k {self.backend}",
            f"  main call: {result.main}; late call: {result.late}",
            *(f"  violation: {v}" for v in result.violations),
        ]
        lines += [f"  error: {type(e).__name__}: {e}" for e in result.errors]
        if result.report is not None:
            lines += [
                f"  record: {r.provider} {r.operation} {r.outcome} {r.cancel_reason}" for r in result.report.calls
            ]
        return "\n".join(lines)

    async def run_case(self, case: Case) -> Result:
        result = Result(case)
        shape = SHAPE[case.shape]
        self.provider.reset()
        self.provider.search_delay = (30.0 if self._long(case) else 0.02) if shape.search else 0.0
        client, fresh = self.client(shape, case.mode == "sync", case.fresh_client)
        try:
            with anyio.fail_after(60):
                if case.mode == "async":
                    await AsyncRun(self, case, shape, client, result).run()
                else:
                    await SyncRun(self, case, shape, client, result).run()
                await self._check_upstream(case, shape, result)
        except TimeoutError as exc:
            result.fail(f"timed out (a hang): {exc or 'the iteration took over 60 s'}")
        finally:
            if fresh:
                await _close(client, case.mode == "sync")
        self._check_report(case, shape, result)
        await self._check_children(result)
        self.results.append(result)
        return result

    @staticmethod
    def _long(case: Case) -> bool:
        return case.point != "after"

    # ------------------------------------------------------- the checks

    def _logs(self, tag: str) -> list[RequestLog]:
        return [log for log in self.provider.requests if log_tag(log) == tag]

    async def _check_upstream(self, case: Case, shape: Shape, result: Result) -> None:
        main, late = self._logs(f"{case.index}.main"), self._logs(f"{case.index}.late")
        if late:
            result.fail(f"late call: {len(late)} request(s) reached the provider after the cancel")
        if len(main) > 1:
            result.fail(f"{len(main)} requests for one call (an SDK retry)")
        if case.point == "before" and main:
            result.fail("a call made after the cancel reached the provider")
        strict = case.source != "deadline"
        if strict and case.point in ("headers", "body") and len(main) != 1:
            result.fail(f"expected the request in flight at the cancel, the provider saw {len(main)}")
        if strict and case.point == "after" and result.main != "returned":
            result.fail(f"the call did not complete before the cancel: {result.main}")
        t_cancel = result.t_cancel
        for log in main:
            await anyio.to_thread.run_sync(log.wait_done, WAIT)
            if result.main == "returned":
                if log.completed_at is None:
                    result.fail("the call returned but the provider did not complete its request")
                continue
            if t_cancel is None:
                result.fail("the call was stopped but the scope was never cancelled")
                continue
            after = log.units_after(t_cancel)
            if after > 1:
                result.fail(f"{after} units produced after the cancel")
            if log.disconnected_at is not None:
                result.disconnect_ms.append(max(0.0, log.disconnected_at - t_cancel) * 1000)
        for log in self.provider.requests:  # late arrivals of earlier iterations included
            tag = log_tag(log)
            self.tags[tag] = self.tags.get(tag, 0) + 1
            if tag.endswith(".late") and tag != f"{case.index}.late":
                result.fail(f"late call: request {tag} reached the provider")
            if self.tags[tag] > 1 and tag.endswith(".main"):
                result.fail(f"request {tag} reached the provider {self.tags[tag]} times (a retry)")

    def _check_report(self, case: Case, shape: Shape, result: Result) -> None:
        report = result.report
        if report is None:
            result.fail("the scope produced no report")
            return
        outcomes = [r.outcome for r in report.calls]
        if "failed" in outcomes:
            result.fail(f"a cancelled call reported failed: {[r.error for r in report.calls]}")
        if len(outcomes) > result.attempts:
            result.fail(f"{len(outcomes)} records for {result.attempts} calls")
        if report.outcome != "cancelled":
            result.fail(f"scope outcome {report.outcome!r}, expected cancelled")
        expected_reason = "timeout" if case.source == "deadline" else REASON
        if report.cancel_reason != expected_reason:
            result.fail(f"cancel reason {report.cancel_reason!r}, expected {expected_reason!r}")
        if result.hook_runs != 1:
            result.fail(f"the on_cancel hook ran {result.hook_runs} times")
        if result.cancel_returns and result.cancel_returns.count(True) != 1:
            result.fail(f"cancel() returned {result.cancel_returns}: exactly one should have cancelled")
        completed = outcomes.count("completed")
        if result.main == "returned" and completed != shape.wrapped_calls:
            result.fail(f"the call returned but {completed} records say completed: {outcomes}")
        if result.main != "returned" and completed and case.source != "deadline":
            result.fail(f"the call was cancelled but a record says completed: {outcomes}")
        reached = len(self._logs(f"{case.index}.main"))
        if reached and not [o for o in outcomes if o in ("completed", "aborted")]:
            result.fail(f"the request reached the provider but no record says so: {outcomes}")
        if case.point == "before" and [o for o in outcomes if o != "refused"]:
            result.fail(f"a call made after the cancel was not refused: {outcomes}")

    def children(self) -> list[psutil.Process]:
        """This process's children started since the engine was made."""
        return [c for c in self.process.children(recursive=True) if c.pid not in self.other_children]

    async def _check_children(self, result: Result) -> None:
        """No child process outlives its call (the SDKs' own short-lived ones, `uname`, get time to end)."""
        deadline = time.monotonic() + WAIT
        while children := self.children():
            if time.monotonic() > deadline:
                result.fail(f"child processes left after the call: {[c.pid for c in children]}")
                for child in children:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                return
            await anyio.sleep(0.005)

    # ------------------------------------------------------- checkpoints

    async def checkpoint(self, result: Result) -> Checkpoint:
        """Close the shared clients and measure; the first checkpoint is the baseline.

        Growth since the baseline is a violation of ``result`` (the iteration just run).
        """
        await self.close_clients()
        gc.collect()
        now = await self._measure(self.baseline)
        self.checkpoints.append(now)
        base = self.baseline
        if base is None:
            self.baseline = now
            return now
        grown = []
        if now.tasks > base.tasks:
            grown.append(f"tasks {base.tasks} -> {now.tasks}")
        if now.fds > base.fds:
            grown.append(f"descriptors {base.fds} -> {now.fds}")
        if now.threads > base.threads:
            grown.append(f"threads {base.threads} -> {now.threads} ({', '.join(now.thread_names)})")
        if now.pool_threads > base.pool_threads + 4:
            grown.append(f"worker threads {base.pool_threads} -> {now.pool_threads}")
        if now.children:
            grown.append(f"{now.children} child processes")
        if grown:
            result.fail(
                f"at the checkpoint after iteration {result.case.index}, resources grew since the first one: "
                + ", ".join(grown)
            )
        return now

    async def _measure(self, base: Checkpoint | None) -> Checkpoint:
        """Figures once the provider has closed its side of the connections we closed (bounded wait)."""
        deadline = time.monotonic() + 5.0
        while True:
            await anyio.sleep(0.01 if base is not None else 0.2)
            threads = threading.enumerate()
            now = Checkpoint(
                tasks=_count_tasks(),
                fds=self.process.num_fds(),
                threads=sum(1 for t in threads if not _pool_thread(t)),
                pool_threads=sum(1 for t in threads if _pool_thread(t)),
                children=len(self.children()),
                rss=self.process.memory_info().rss,
                thread_names=tuple(sorted(t.name for t in threads if not _pool_thread(t))),
            )
            settled = base is None or (
                now.tasks <= base.tasks and now.fds <= base.fds and now.threads <= base.threads and not now.children
            )
            if settled or time.monotonic() > deadline:
                return now


def log_tag(log: RequestLog) -> str:
    tag = log.headers.get("x-fuzz")
    if tag is None:
        body = log.json
        with contextlib.suppress(TypeError, KeyError, IndexError, AttributeError):
            tag = body["filter"]["must"][0]["match"]["value"]
    return str(tag)


async def _close(client: Any, sync: bool) -> None:
    if client is None:
        return
    names = ("close",) if sync else ("aclose", "close")
    close = next((getattr(client, n) for n in names if hasattr(client, n)), None)
    if close is None:  # cohere: the SDK's client has no close(); its HTTP client does
        http = client._client_wrapper.httpx_client.httpx_client
        close = http.close if sync else http.aclose
    result = close()
    if inspect.isawaitable(result):
        await result


# --------------------------------------------------------------- async cases


class Cancel:
    """Who cancels: fires the cancel (from the case's source) and notes when."""

    def __init__(self, case: Case, result: Result, scope: RequestScope, parent: RequestScope | None) -> None:
        self.case = case
        self.result = result
        self.scope = scope
        self.parent = parent

    def _cancel_now(self) -> bool:
        target = self.parent if self.case.source == "parent" else self.scope
        assert target is not None
        t = time.monotonic()
        done = self.case_bus_cancel(target) if self.case.source == "bus" else target.cancel(REASON)
        if done:
            self.result.t_cancel = t
        return done

    @staticmethod
    def case_bus_cancel(target: RequestScope) -> bool:
        assert target.bus is not None, "a bus case's scope joins the engine's bus"
        return target.bus.cancel_sync(target.id, REASON) == 1

    def fire_here(self) -> None:
        """Cancel from the calling task or thread ("owner", "task", "parent")."""
        self._cancel_now()

    def fire_in_threads(self) -> None:
        """Cancel from other threads: one ("thread"), or two at once ("twice"); waits for them."""
        count = 2 if self.case.source == "twice" else 1
        barrier = threading.Barrier(count)
        returns: list[bool] = []

        def canceller() -> None:
            barrier.wait()
            returns.append(self._cancel_now())

        threads = [threading.Thread(target=canceller, name="fuzz-canceller") for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.case.source == "twice":
            returns.append(self._cancel_now())  # a third, late one: must say it did nothing
            self.result.cancel_returns = returns


class AsyncRun:
    """One async case: a scope, a call placed in the body, a spawned child or an outside task."""

    def __init__(self, env: Engine, case: Case, shape: Shape, client: Any, result: Result) -> None:
        self.env, self.case, self.shape, self.client, self.result = env, case, shape, client, result
        self.cancelled = anyio.Event()
        self.call_done = anyio.Event()
        self.go = anyio.Event()  # point "before": the call starts once the scope is cancelled

    def ctx(self, role: str) -> Ctx:
        hold = self.case.point == "headers" and self.shape.holds_headers
        return Ctx(
            self.env, self.result, f"{self.case.index}.{role}", long=self.env._long(self.case), hold_headers=hold
        )

    async def caller(self) -> None:
        assert self.shape.acall is not None
        if self.case.point == "before":
            with anyio.move_on_after(WAIT, shield=True):
                await self.go.wait()
        try:
            self.result.main = await self._attempt("main")
        finally:
            self.call_done.set()
        # The next step of a pipeline, once the cancel has happened: must never reach the provider.
        with anyio.move_on_after(WAIT, shield=True):
            await self.cancelled.wait()
        self.result.late = await self._attempt("late")
        if self.result.late == "returned":
            self.result.fail("a call made after the cancel returned")

    async def _attempt(self, role: str) -> str:
        """One call (``role``: "main" or "late"): how it ended; a backend cancellation is noted, then raised."""
        self.result.attempts += 1
        try:
            await self.shape.acall(self.client, self.ctx(role))
        except ScopeCancelled:
            return "scope_cancelled"
        except anyio.get_cancelled_exc_class():
            setattr(self.result, role, "backend_cancelled")
            raise
        except BaseException as exc:
            self.result.errors.append(exc)
            self.result.fail(f"the {'call' if role == 'main' else 'late call'} raised {type(exc).__name__}: {exc}")
            return f"unexpected {type(exc).__name__}"
        return "returned"

    async def reach_point(self) -> None:
        case = self.case
        if case.point == "connect":
            for _ in range(case.connect_turns):
                await anyio.lowlevel.checkpoint()
        elif case.point in ("headers", "body"):
            log = await anyio.to_thread.run_sync(wait_request, self.env.provider, f"{case.index}.main")
            if case.point == "body":
                await anyio.to_thread.run_sync(log.wait_units, case.body_units, WAIT)
        elif case.point == "after":
            await self.call_done.wait()

    async def orchestrate(self, fire: Cancel) -> None:
        """Wait for the point, then cancel (the deadline source only waits for the deadline)."""
        if self.case.source == "deadline":
            # The deadline fires by itself, where it lands: under load the server may not have
            # reached the drawn point by then (3 of 4 units), which is no violation. The caller of
            # point "before" starts once the deadline passed.
            await self.cancelled.wait()
            return
        if self.case.point != "before":
            await self.reach_point()
        if self.case.source in ("thread", "twice", "bus"):
            await anyio.to_thread.run_sync(fire.fire_in_threads)
        else:
            fire.fire_here()
        self.go.set()
        await self.cancelled.wait()  # in the body: ends with the scope's own cancellation

    def on_cancel(self) -> None:
        self.result.hook_runs += 1
        if self.result.t_cancel is None and self.case.source == "deadline":
            reason = self.scope.cancel_reason
            self.result.t_cancel = reason.time if reason is not None else time.monotonic()
        self.cancelled.set()

    async def run(self) -> None:
        case = self.case
        parent = RequestScope("fuzz-parent") if case.source == "parent" else None
        self.scope = scope = self.env.scope_for(case)
        fire = Cancel(case, self.result, scope, parent)
        try:
            async with anyio.create_task_group() as outer, _maybe(parent), scope:
                scope.on_cancel(self.on_cancel)
                if case.source == "deadline" and case.point == "before":
                    # the deadline has passed: the call starts once the scope knows it
                    outer.start_soon(self._go_when_cancelled)
                if case.placement == "body":
                    outer.start_soon(self.orchestrate, fire)
                    await self.caller()
                else:
                    if case.point != "before":
                        self._start_call(outer, scope)
                    else:
                        outer.start_soon(self._start_after_go, outer, scope)
                    await self.orchestrate(fire)
        except BaseException as exc:
            self.result.scope_error = exc
            self.result.fail(f"the scope's block raised {type(exc).__name__}: {exc!r}")
        self.result.report = scope.report

    async def _go_when_cancelled(self) -> None:
        await self.cancelled.wait()
        self.go.set()

    async def _start_after_go(self, outer: Any, scope: RequestScope) -> None:
        with anyio.move_on_after(WAIT):
            await self.go.wait()
        self._start_call(outer, scope)

    def _start_call(self, outer: Any, scope: RequestScope) -> None:
        if self.case.placement == "spawn":
            try:
                scope.spawn(self.caller)
            except ScopeStateError as exc:  # a spawn into a scope that is exiting: refused, saying so
                self.result.main = f"spawn refused: {exc}"
                self.call_done.set()
        else:
            outer.start_soon(self.caller)


@contextlib.asynccontextmanager
async def _maybe(scope: RequestScope | None) -> AsyncIterator[None]:
    if scope is None:
        yield
    else:
        async with scope:
            yield


def wait_request(provider: LocalProvider, tag: str, timeout: float = WAIT) -> RequestLog:
    """Block until a request tagged ``tag`` has arrived."""
    deadline = time.monotonic() + timeout
    n = 1
    while True:
        logs = provider.wait_for_requests(n, max(0.0, deadline - time.monotonic()))
        for log in logs:
            if log_tag(log) == tag:
                return log
        n = len(logs) + 1


# ---------------------------------------------------------------- sync cases


class SyncRun:
    """One sync case: ``with RequestScope()`` in a thread of its own, cancelled from elsewhere."""

    def __init__(self, env: Engine, case: Case, shape: Shape, client: Any, result: Result) -> None:
        self.env, self.case, self.shape, self.client, self.result = env, case, shape, client, result
        self.entered = threading.Event()
        self.cancelled = threading.Event()
        self.call_done = threading.Event()
        self.go = threading.Event()
        self.scope: RequestScope | None = None
        self.parent: RequestScope | None = None

    def ctx(self, role: str) -> Ctx:
        hold = self.case.point == "headers" and self.shape.holds_headers
        return Ctx(
            self.env, self.result, f"{self.case.index}.{role}", long=self.env._long(self.case), hold_headers=hold
        )

    def on_cancel(self) -> None:
        self.result.hook_runs += 1
        if self.result.t_cancel is None and self.case.source == "deadline":
            reason = self.scope.cancel_reason if self.scope is not None else None
            self.result.t_cancel = reason.time if reason is not None else time.monotonic()
        self.cancelled.set()

    def call(self, role: str) -> str:
        assert self.shape.scall is not None
        self.result.attempts += 1
        try:
            self.shape.scall(self.client, self.ctx(role))
            return "returned"
        except ScopeCancelled:
            return "scope_cancelled"
        except BaseException as exc:
            self.result.errors.append(exc)
            self.result.fail(f"the {role} call raised {type(exc).__name__}: {exc}")
            return f"unexpected {type(exc).__name__}"

    def worker(self) -> None:
        case = self.case
        try:
            with contextlib.ExitStack() as stack:
                if case.source == "parent":
                    self.parent = stack.enter_context(RequestScope("fuzz-parent"))
                self.scope = scope = self.env.scope_for(case)
                fire = Cancel(case, self.result, scope, self.parent)
                with scope:
                    scope.on_cancel(self.on_cancel)
                    self.entered.set()
                    if case.point == "before":
                        if case.source == "owner":
                            fire.fire_here()
                        self.cancelled.wait(WAIT)
                    self.result.main = self.call("main")
                    self.call_done.set()
                    if case.source == "owner":  # point "after"
                        fire.fire_here()
                    self.cancelled.wait(WAIT)
                    self.result.late = self.call("late")
                    if self.result.late == "returned":
                        self.result.fail("a call made after the cancel returned")
        except BaseException as exc:
            self.result.scope_error = exc
            self.result.fail(f"the scope's block raised {type(exc).__name__}: {exc!r}")
        finally:
            self.entered.set()
            self.call_done.set()
        self.result.report = self.scope.report if self.scope is not None else None

    def reach_point(self) -> None:
        case = self.case
        if case.point == "connect":
            for _ in range(case.connect_turns):
                os.sched_yield()
        elif case.point in ("headers", "body"):
            log = wait_request(self.env.provider, f"{case.index}.main")
            if case.point == "body":
                log.wait_units(case.body_units, WAIT)
        elif case.point == "after":
            self.call_done.wait(WAIT)

    async def run(self) -> None:
        case = self.case
        thread = threading.Thread(target=self.worker, name="fuzz-sync-call")
        thread.start()
        try:
            await anyio.to_thread.run_sync(self.entered.wait, WAIT)
            if case.source not in ("owner", "deadline"):
                assert self.scope is not None
                fire = Cancel(case, self.result, self.scope, self.parent)
                if case.point != "before":
                    await anyio.to_thread.run_sync(self.reach_point)
                if case.source in ("thread", "twice", "bus"):
                    await anyio.to_thread.run_sync(fire.fire_in_threads)
                else:  # "task", "parent": from the event loop's task
                    fire.fire_here()
        finally:
            await anyio.to_thread.run_sync(thread.join, WAIT + 20)
        if thread.is_alive():
            self.result.fail("the sync call's thread did not finish")


# ------------------------------------------------------------------- summary


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@contextlib.contextmanager
def running_provider() -> Iterator[LocalProvider]:
    with LocalProvider(token_interval=TOKEN_INTERVAL, default_tokens=50) as provider:
        yield provider


def seed_from_env(default: int) -> tuple[int, int | None]:
    """``FUZZ_SEED`` (else ``default``) and ``FUZZ_ITERATION`` (one case only), from the environment."""
    seed = int(os.environ.get("FUZZ_SEED", default))
    only = os.environ.get("FUZZ_ITERATION")
    return seed, int(only) if only else None
