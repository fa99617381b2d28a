"""The SSE meters alone, per event, fed as the body reader feeds them (issue 23, round 4).

Each vendor's stream of ``--tokens`` text deltas is recorded from the embedded provider
(``LocalProvider``, as fast as the client reads); every meter is then fed the recorded chunks
in joined batches of ``BATCH`` (the body reader's), and the median time per event is printed.
``--check`` also feeds each meter one event at a time and compares every figure.

    PYTHONPATH=src python benchmarks/meter_blocks.py [--tokens 2000] [--reps 30] [--check]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import httpx

from scoped_clients._calls import Meter
from scoped_clients._transport._call import BATCH
from scoped_clients._vendors.anthropic import MessagesStreamMeter
from scoped_clients._vendors.cohere import ChatV2StreamMeter
from scoped_clients._vendors.google_genai import GenerateStreamMeter
from scoped_clients._vendors.groq import GroqChatStreamMeter
from scoped_clients._vendors.mistralai import CompletionStreamMeter
from scoped_clients._vendors.openai import ChatStreamMeter, ResponsesStreamMeter
from scoped_clients.provider import LocalProvider


def _streams(url: str, tokens: int) -> dict[str, tuple[Callable[[], Meter], list[bytes]]]:
    model = f"local-{tokens}"
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    wires: dict[str, tuple[Callable[[], Meter], str, dict[str, object]]] = {
        "openai chat": (ChatStreamMeter, "/v1/chat/completions", chat),
        "openai responses": (ResponsesStreamMeter, "/v1/responses", {"model": model, "input": "hi", "stream": True}),
        "anthropic messages": (
            MessagesStreamMeter,
            "/v1/messages",
            {"model": model, "max_tokens": tokens + 10, "messages": chat["messages"], "stream": True},
        ),
        "gemini": (
            GenerateStreamMeter,
            f"/v1beta/models/{model}:streamGenerateContent?alt=sse",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        ),
        "mistral": (CompletionStreamMeter, "/mistral/v1/chat/completions", chat),
        "cohere v2": (ChatV2StreamMeter, "/v2/chat", chat),
        "groq": (GroqChatStreamMeter, "/openai/v1/chat/completions", chat),
    }
    out = {}
    with httpx.Client(timeout=60) as client:
        for name, (make, path, body) in wires.items():
            with client.stream("POST", url + path, json=body) as response:
                response.raise_for_status()
                out[name] = (make, list(response.iter_raw()))
    return out


def _figures(meter: Meter) -> tuple[object, ...]:
    return (
        meter.tokens_out,
        meter.output_source,
        meter.tokens_in,
        meter.input_source,
        meter.finish_reason,
        meter.error,
        meter.tool_calls,
        dict(meter.units),
    )


def _feed(make: Callable[[], Meter], pieces: list[bytes]) -> Meter:
    meter = make()
    for piece in pieces:
        meter.feed(piece)
    meter.close()
    return meter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with LocalProvider(token_interval=0.0) as provider:
        streams = _streams(provider.url, args.tokens)
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f}, BATCH {BATCH}")
    for name, (make, chunks) in streams.items():
        whole = b"".join(chunks)
        events = whole.replace(b"\r\n", b"\n").count(b"\n\n")
        batches = [b"".join(chunks[i : i + BATCH]) for i in range(0, len(chunks), BATCH)]
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            meter = _feed(make, batches)
            times.append(time.perf_counter() - t)
        per_event = statistics.median(times) / events * 1e6
        line = f"{name:20} {len(chunks):5} chunks {events:5} events  {per_event:6.3f} us/event"
        if args.check:
            sep = b"\r\n\r\n" if b"\r\n" in whole else b"\n\n"
            one = _feed(make, [part + sep for part in whole.split(sep) if part])
            line += f"  same figures as one by one: {_figures(meter) == _figures(one)} {_figures(meter)[:5]}"
        print(line)


if __name__ == "__main__":
    main()
