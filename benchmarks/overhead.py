"""What the scope costs a streaming client: throughput, client CPU per chunk, latency per call.

    python benchmarks/overhead.py [--reps 5] [--only instrumentation]

Raw and scoped clients run interleaved in the same process against the local
provider in its own process (token interval 0: it streams as fast as it can).
Targets: >= 97 % of the raw throughput, < 50 us added per call.

The instrumentation rows (``scoped_clients.otel`` with the OpenTelemetry SDK,
a batch span processor and an in-memory metric reader; ``scoped_clients.prometheus``
with its own registry) compare, in the same run, the raw SDK, the scoped client
with no instrumentation and with each one, per call (a scope per call: the
instrumentation runs when the scope ends) and per chunk of a stream; and the
report sink alone, timed on a fixed report (no network noise).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import httpx2
import openai
from _common import machine, median, table, verdict
from _remote import RemoteProvider

import scoped_clients.httpx
import scoped_clients.httpx2
import scoped_clients.openai
from scoped_clients import CallRecord, RequestScope, ScopeReport
from scoped_clients._report import emit

CHUNKS = 20_000
TOKENS = 3_000
CALLS = 300
REPORTS = 20_000


async def stream_units(client: Any, url: str) -> int:
    n = 0
    async with client.stream("GET", f"{url}/units?n={CHUNKS}&interval=0") as response:
        async for chunk in response.aiter_raw():
            n += chunk.count(b"\n")
    return n


async def stream_chat(client: Any, url: str) -> int:
    stream = await client.chat.completions.create(
        model=f"local-{TOKENS}", messages=[{"role": "user", "content": "go"}], stream=True
    )
    n = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
    return n


async def measure(work: Callable[[], Awaitable[int]], scoped: bool) -> tuple[float, float]:
    """Units per second (wall) and client CPU microseconds per unit."""
    wall, cpu = time.perf_counter(), time.process_time()
    if scoped:
        async with RequestScope():
            units = await work()
    else:
        units = await work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return units / wall, cpu / units * 1e6


async def throughput(provider: RemoteProvider, reps: int) -> list[list[object]]:
    rows: list[list[object]] = []
    cases: list[tuple[str, Any, Any, Callable[[Any, str], Awaitable[int]]]] = [
        ("httpx stream", httpx.AsyncClient(), scoped_clients.httpx.AsyncClient(), stream_units),
        ("httpx2 stream", httpx2.AsyncClient(), scoped_clients.httpx2.AsyncClient(), stream_units),
        (
            "openai chat stream",
            openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x"),
            scoped_clients.openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x"),
            stream_chat,
        ),
    ]
    for name, raw, scoped, fn in cases:
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(reps):
            for is_scoped, client in ((False, raw), (True, scoped)):
                work = functools.partial(fn, client, provider.url)
                results[is_scoped].append(await measure(work, is_scoped))
        raw_rate = median(r for r, _ in results[False])
        scoped_rate = median(r for r, _ in results[True])
        rows.append(
            [
                name,
                f"{raw_rate:,.0f}",
                f"{scoped_rate:,.0f}",
                f"{min(r for r, _ in results[True]):,.0f} / {max(r for r, _ in results[True]):,.0f}",
                f"{scoped_rate / raw_rate:.1%}",
                f"{median(c for _, c in results[False]):.1f} -> {median(c for _, c in results[True]):.1f}",
                verdict(scoped_rate / raw_rate >= 0.97),
            ]
        )
        for client in (raw, scoped):
            await (client.aclose() if hasattr(client, "aclose") else client.close())
    return rows


async def per_call(provider: RemoteProvider, reps: int) -> list[list[object]]:
    url = f"{provider.url}/units?n=1&interval=0"
    raw, scoped = httpx2.AsyncClient(), scoped_clients.httpx2.AsyncClient()
    samples: dict[str, list[float]] = {"raw": [], "scoped": [], "scope per call": []}
    async with raw, scoped:
        for client in (raw, scoped):  # warm the pools
            await client.get(url)
        for _ in range(reps):
            for _ in range(CALLS):
                t = time.perf_counter()
                await raw.get(url)
                samples["raw"].append(time.perf_counter() - t)
                async with RequestScope():
                    t = time.perf_counter()
                    await scoped.get(url)
                    samples["scoped"].append(time.perf_counter() - t)
                t = time.perf_counter()
                async with RequestScope():
                    await scoped.get(url)
                samples["scope per call"].append(time.perf_counter() - t)
    base = median(samples["raw"]) * 1e6
    rows: list[list[object]] = []
    for name, values in samples.items():
        us = median(values) * 1e6
        added = us - base
        rows.append(
            [
                name,
                f"{us:.0f}",
                f"{min(values) * 1e6:.0f} / {max(values) * 1e6:.0f}",
                f"{added:+.0f}",
                "-" if name == "raw" else verdict(added < 50),
            ]
        )
    return rows


# ------------------------------------------------------------------ instrumentation cost


class _Instrumented:
    """Turns one variant's instrumentation on and off (``None``: off)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._off: Callable[[], None] | None = None
        self._providers: list[Any] = []

    def __enter__(self) -> None:
        if self.name in ("otel", "otel + prometheus"):
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

            import scoped_clients.otel

            class Drop(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
            meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
            self._providers = [tracer_provider, meter_provider]
            off_otel = scoped_clients.otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        else:
            off_otel = None
        if self.name in ("prometheus", "otel + prometheus"):
            import prometheus_client

            import scoped_clients.prometheus

            off_prom = scoped_clients.prometheus.instrument(prometheus_client.CollectorRegistry())
        else:
            off_prom = None

        def off() -> None:
            for fn in (off_otel, off_prom):
                if fn is not None:
                    fn()

        self._off = off

    def __exit__(self, *exc: object) -> None:
        assert self._off is not None
        self._off()
        for provider in self._providers:
            provider.shutdown()
        self._providers = []


VARIANTS = ("off", "otel", "prometheus", "otel + prometheus")


async def instrumentation(provider: RemoteProvider, reps: int) -> tuple[list[list[object]], list[list[object]]]:
    """Per call and per chunk: raw SDK vs scoped with the instrumentation off / on, interleaved by block."""
    messages: Any = [{"role": "user", "content": "go"}]
    raw = openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
    scoped = scoped_clients.openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
    calls: dict[str, list[float]] = {"raw SDK": [], **{v: [] for v in VARIANTS}}
    call_cpu: dict[str, list[float]] = {"raw SDK": [], **{v: [] for v in VARIANTS}}  # per block of CALLS
    chunks: dict[str, list[tuple[float, float]]] = {"raw SDK": [], **{v: [] for v in VARIANTS}}

    async def one_call(client: Any) -> int:
        await client.chat.completions.create(model="local-2", messages=messages, max_tokens=16)
        return 1

    for client in (raw, scoped):  # warm the pools
        await one_call(client)
    names = ["raw SDK", *VARIANTS]
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotated: no variant always first
            is_raw = name == "raw SDK"
            client = raw if is_raw else scoped
            with _Instrumented("off" if is_raw else name):
                cpu_start = time.process_time()
                for _ in range(CALLS):
                    t = time.perf_counter()
                    if is_raw:
                        await one_call(raw)
                    else:
                        async with RequestScope():
                            await one_call(scoped)
                    calls[name].append(time.perf_counter() - t)
                call_cpu[name].append((time.process_time() - cpu_start) / CALLS)
                work = functools.partial(stream_chat, client, provider.url)
                chunks[name].append(await measure(work, not is_raw))
    await raw.close()
    await scoped.close()
    # CPU, not wall time, is compared: the sinks are CPU work, and on a loaded machine wall time is mostly noise.
    cpu_us = {name: median(values) * 1e6 for name, values in call_cpu.items()}
    per_call = _compared(cpu_us, lambda name: [f"{median(calls[name]) * 1e6:.0f}", f"{cpu_us[name]:.0f}"], "+.0f")
    cpu = {name: median(c for _, c in values) for name, values in chunks.items()}
    per_chunk = _compared(cpu, lambda name: [f"{median(r for r, _ in chunks[name]):,.0f}", f"{cpu[name]:.1f}"], "+.1f")
    return per_call, per_chunk


def _compared(medians: dict[str, float], cells: Callable[[str], list[str]], added: str) -> list[list[object]]:
    """One row per variant: its cells, what it adds to the uninstrumented scoped client, its share of the raw SDK."""
    return [
        [
            "scoped, " + name if name in VARIANTS else name,
            *cells(name),
            "-" if name in ("raw SDK", "off") else format(value - medians["off"], added),
            f"{value / medians['raw SDK']:.1%}",
        ]
        for name, value in medians.items()
    ]


def sink_cost(reps: int) -> list[list[object]]:
    """The report sinks alone: ``emit()`` of a fixed report (one completed, one aborted call), on vs off."""
    now = time.monotonic()
    completed = CallRecord(
        "openai", "chat.completions", "gpt-4o-mini", "completed", now, 0.5, 12, 80, "provider", "provider"
    )
    aborted = CallRecord(
        "openai", "chat.completions", "gpt-4o-mini", "aborted", now, 0.3, None, 20,
        tokens_saved=180, tokens_saved_max=380, tokens_saved_source="estimate",
        tokens_saved_max_source="upper_bound", cancel_reason="client_disconnected", cancelled_at=now + 0.299,
    )  # fmt: skip
    report = ScopeReport("chat", "id", "cancelled", "client_disconnected", None, now, 0.6, (completed, aborted))
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(reps):
        for variant in VARIANTS:
            with _Instrumented(variant):
                t = time.perf_counter()
                for _ in range(REPORTS):
                    emit(report)
                results[variant].append((time.perf_counter() - t) / REPORTS)
    off = median(results["off"]) * 1e6
    return [
        [
            name,
            f"{median(values) * 1e6:.1f}",
            f"{min(values) * 1e6:.1f} / {max(values) * 1e6:.1f}",
            "-" if name == "off" else f"{median(values) * 1e6 - off:+.1f}",
            "-" if name == "off" else f"{(median(values) * 1e6 - off) / 2:+.1f}",
        ]
        for name, values in results.items()
    ]


def print_instrumentation(provider: RemoteProvider, backend: str, reps: int) -> None:
    per_call, per_chunk = anyio.run(instrumentation, provider, reps, backend=backend)
    print(f"\n### Instrumentation per call ({backend}, {reps} x {CALLS} calls, a scope per call, medians)\n")
    print(
        table(
            ["client", "wall us per call", "client CPU us per call", "added CPU vs off", "CPU of the raw SDK"], per_call
        )
    )
    print(f"\n### Instrumentation per chunk ({backend}, OpenAI chat stream of {TOKENS} chunks, {reps} runs)\n")
    print(table(["client", "chunks/s", "client CPU us/chunk", "added vs off", "CPU of the raw SDK"], per_chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=["instrumentation"], help="run only the instrumentation rows")
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    with RemoteProvider(token_interval=0.0) as provider:
        if args.only == "instrumentation":
            for backend in ("asyncio", "trio"):
                print_instrumentation(provider, backend, args.reps)
            print(f"\n### Report sinks alone ({args.reps} x {REPORTS:,} reports of 2 calls, medians)\n")
            print(
                table(
                    ["instrumentation", "us per report", "min / max", "added us", "added us per call"],
                    sink_cost(args.reps),
                )
            )
            return
        for backend in ("asyncio", "trio"):
            rows = anyio.run(throughput, provider, args.reps, backend=backend)
            print(f"### Streaming throughput ({backend}, {args.reps} interleaved runs each)\n")
            print(
                table(
                    [
                        "stream",
                        "raw units/s",
                        "scoped units/s",
                        "scoped min / max",
                        "ratio",
                        "client CPU us/unit raw -> scoped",
                        ">= 97 %",
                    ],
                    rows,
                )
            )
            rows = anyio.run(per_call, provider, args.reps, backend=backend)
            print(f"\n### Latency per small call ({backend}, {args.reps} x {CALLS} calls, medians)\n")
            print(table(["client", "us per call", "min / max", "added us", "< 50 us added"], rows))
            print_instrumentation(provider, backend, args.reps)
            print()
        print(f"### Report sinks alone ({args.reps} x {REPORTS:,} reports of 2 calls, medians)\n")
        print(
            table(
                ["instrumentation", "us per report", "min / max", "added us", "added us per call"], sink_cost(args.reps)
            )
        )


if __name__ == "__main__":
    main()
