"""What ``always_stream=True`` costs a non-streamed call.

    python benchmarks/always_stream.py [--reps 5] [--calls 40]

The same non-streamed call (OpenAI chat completion, Anthropic message) through
a scoped client without and with ``always_stream``, interleaved, one
``RequestScope`` per call, against the local provider in its own process:
first answering as fast as it can (the client's own cost per call and per
token shows), then at one token every 10 ms (a real model's pace).  Wall time
and client CPU per call, medians; the SDK's own ``stream=True`` for the same
answer is measured beside them, for reference.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
from _common import machine, median, table
from _remote import RemoteProvider

import scoped_clients.anthropic
import scoped_clients.openai
from scoped_clients import RequestScope

MESSAGES = [{"role": "user", "content": "go"}]
TOKENS = (1, 50, 500)


#: the three ways of asking for one answer: plain, plain with always_stream, and the SDK's own stream=True
MODES = ("plain", "always_stream", "stream")


async def one_call(client: Any, kind: str, tokens: int, mode: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    stream = mode == "stream"
    async with RequestScope():
        if kind == "openai":
            answer = await client.chat.completions.create(model=f"local-{tokens}", messages=MESSAGES, stream=stream)
        else:
            answer = await client.messages.create(
                model=f"local-{tokens}", max_tokens=tokens, messages=MESSAGES, stream=stream
            )
        if stream:
            async for _ in answer:
                pass
    return time.perf_counter() - wall, time.process_time() - cpu


def make_client(kind: str, url: str, mode: str) -> Any:
    always = mode == "always_stream"
    if kind == "openai":
        return scoped_clients.openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", always_stream=always)
    return scoped_clients.anthropic.AsyncAnthropic(base_url=url, api_key="x", always_stream=always)


async def cost(provider: RemoteProvider, reps: int, calls: int, tokens_list: tuple[int, ...]) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind in ("openai", "anthropic"):
        clients = {mode: make_client(kind, provider.url, mode) for mode in MODES}
        for tokens in tokens_list:
            samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
            for mode in MODES:  # warm the pools
                await one_call(clients[mode], kind, tokens, mode)
            for _ in range(reps):
                for _ in range(calls):
                    for mode in MODES:
                        samples[mode].append(await one_call(clients[mode], kind, tokens, mode))
            wall = {m: median(w for w, _ in s) * 1e6 for m, s in samples.items()}
            cpu = {m: median(c for _, c in s) * 1e6 for m, s in samples.items()}
            added = cpu["always_stream"] - cpu["plain"]
            rows.append(
                [
                    "OpenAI chat" if kind == "openai" else "Anthropic messages",
                    tokens,
                    f"{wall['plain']:,.0f} -> {wall['always_stream']:,.0f}",
                    f"{wall['always_stream'] - wall['plain']:+,.0f}",
                    f"{cpu['plain']:,.0f} -> {cpu['always_stream']:,.0f}",
                    f"{added:+,.0f} ({added / tokens:+.1f} per token)",
                    f"{wall['stream']:,.0f} / {cpu['stream']:,.0f}",
                ]
            )
        for client in clients.values():
            await client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    headers = [
        "call",
        "tokens",
        "wall us: plain -> always_stream",
        "added wall us",
        "client CPU us: plain -> always_stream",
        "added CPU us",
        "for reference, the SDK's own stream=True: wall us / client CPU us",
    ]
    # As fast as the provider can answer (the client's cost shows), then at 100 tokens/s (a real model's pace).
    for interval, calls, tokens_list in ((0.0, args.calls, TOKENS), (0.01, max(2, args.calls // 8), (50,))):
        with RemoteProvider(token_interval=interval) as provider:
            for backend in ("asyncio", "trio"):
                rows = anyio.run(cost, provider, args.reps, calls, tokens_list, backend=backend)
                pace = "provider as fast as it can" if interval == 0 else f"one token every {interval * 1000:.0f} ms"
                print(f"### Cost per non-streamed call ({backend}, {pace}, {args.reps} x {calls} calls, medians)\n")
                print(table(headers, rows))
                print()


if __name__ == "__main__":
    main()
