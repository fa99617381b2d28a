"""The body readers meter a response in batches (``HttpCall.settle``): per chunk they only keep it, and
the meter counts every ``BATCH`` chunks, at the end, and whenever a figure is asked for first (the
``finish_if_done`` check at a cancel). The call's figures are those of a meter fed chunk by chunk,
whatever the chunking, and a long stream is metered in bounded memory.

An in-process transport serves the stream: its response carries a real (unused) socket as httpcore's
do, so the scoped body takes the path of a network one.
"""

from __future__ import annotations

import json
import socket
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest

import scoped_clients.httpx2
from scoped_clients import RequestScope
from scoped_clients._report import CallRecord
from scoped_clients._transport._base import vendor_http_client
from scoped_clients._transport._call import BATCH
from scoped_clients._vendors.openai import ChatStreamMeter, OpenAIProfile

URL = "http://in-process.test/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [choice]})


def chat_events(tokens: int) -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": f"tok{i} "}) for i in range(tokens)]
    events.append(_chunk({}, finish="stop"))
    events.append(_event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": tokens}}))
    events.append(b"data: [DONE]\n\n")
    return events


def pieces(stream: bytes, sizes: list[int]) -> list[bytes]:
    out: list[bytes] = []
    at = 0
    while at < len(stream):
        size = sizes[len(out) % len(sizes)]
        out.append(stream[at : at + size])
        at += size
    return out


class _NetworkStream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class _AsyncBody(httpx2.AsyncByteStream):
    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk


class _AsyncTransport(httpx2.AsyncBaseTransport):
    def __init__(self, chunks: Any, sock: socket.socket) -> None:
        self.chunks = chunks
        self.sock = sock

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_AsyncBody(self.chunks()),
            extensions={"network_stream": _NetworkStream(self.sock)},
        )


class _SyncBody(httpx2.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


class _SyncTransport(httpx2.BaseTransport):
    def __init__(self, chunks: Any, sock: socket.socket) -> None:
        self.chunks = chunks
        self.sock = sock

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_SyncBody(self.chunks()),
            extensions={"network_stream": _NetworkStream(self.sock)},
        )


def _figures(record: CallRecord) -> tuple[object, ...]:
    return (record.tokens_out, record.tokens_out_source, record.tokens_in, record.finish_reason, record.outcome)


def _one_by_one(chunks: list[bytes]) -> tuple[object, ...]:
    meter = ChatStreamMeter()
    for chunk in chunks:
        meter.feed(chunk)
    meter.close()
    return (meter.tokens_out, meter.output_source, meter.tokens_in, meter.finish_reason, "completed")


STREAM = b"".join(chat_events(300))
CHUNKINGS = {
    "an-event-a-chunk": chat_events(300),
    # events split across chunks, and so across the batches of 32 chunks
    "small-pieces": pieces(STREAM, [7, 50, 1, 300]),
    "large-pieces": pieces(STREAM, [1000, 4096, 333]),
}


@pytest.mark.anyio
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
async def test_the_record_has_the_figures_of_a_meter_fed_chunk_by_chunk(chunking: str) -> None:
    chunks = CHUNKINGS[chunking]

    async def serve() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    with socket.socket() as sock:
        transport = _AsyncTransport(serve, sock)
        async with (
            scoped_clients.httpx2.AsyncClient(transport=transport, profile=OpenAIProfile()) as client,
            RequestScope() as scope,
            client.stream("POST", URL, json=BODY) as response,
        ):
            received = [chunk async for chunk in response.aiter_raw()]
    assert received == chunks
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert _figures(record) == _one_by_one(chunks) == (300, "provider", 4, "stop", "completed")


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_the_sync_record_has_the_figures_of_a_meter_fed_chunk_by_chunk(chunking: str) -> None:
    chunks = CHUNKINGS[chunking]
    with socket.socket() as sock:
        transport = _SyncTransport(lambda: iter(chunks), sock)
        with (
            scoped_clients.httpx2.Client(transport=transport, profile=OpenAIProfile()) as client,
            RequestScope() as scope,
            client.stream("POST", URL, json=BODY) as response,
        ):
            received = list(response.iter_raw())
    assert received == chunks
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert _figures(record) == _one_by_one(chunks) == (300, "provider", 4, "stop", "completed")


@pytest.mark.anyio
async def test_finish_if_done_sees_a_finish_reason_not_yet_metered() -> None:
    """The finish reason arrived in the last few chunks, fewer than a batch: the cancel's check counts
    them first, so the stream is let finish (the abort would end it ``aborted``)."""
    events = chat_events(5)
    assert len(events) < BATCH
    release = anyio.Event()

    async def serve() -> AsyncIterator[bytes]:
        for event in events[:-2]:  # up to the finish reason
            yield event
        await release.wait()
        for event in events[-2:]:  # the usage, [DONE]
            yield event

    finished = anyio.Event()
    with socket.socket() as sock, anyio.fail_after(10):
        transport = _AsyncTransport(serve, sock)
        client = vendor_http_client(
            httpx2.AsyncClient, OpenAIProfile(), {"transport": transport}, finish_policy="finish_if_done"
        )

        async def consume() -> None:
            async with client.stream("POST", URL, json=BODY) as response:
                async for chunk in response.aiter_raw():
                    if b'"finish_reason":"stop"' in chunk:
                        finished.set()
            done.set()

        done = anyio.Event()
        async with client, anyio.create_task_group() as tg, RequestScope() as scope:
            tg.start_soon(consume)
            await finished.wait()
            scope.cancel("client_disconnected")
            release.set()
            with scope.shield():
                await done.wait()  # the stream read to its end inside the scope
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert _figures(record) == (5, "provider", 4, "stop", "completed")
    assert record.detail["finished_after_cancel"] is True


@pytest.mark.anyio
async def test_a_long_stream_is_metered_in_bounded_memory() -> None:
    """40,000 events (~6 MB) through the reader: what it keeps is a batch, not the stream."""
    head = _chunk({"role": "assistant", "content": ""})
    tokens = 40_000

    async def serve() -> AsyncIterator[bytes]:
        yield head
        for i in range(tokens):
            yield _chunk({"content": f"tok{i} "})
        yield _chunk({}, finish="stop")

    size = 0
    with socket.socket() as sock:
        transport = _AsyncTransport(serve, sock)
        async with (
            scoped_clients.httpx2.AsyncClient(transport=transport, profile=OpenAIProfile()) as client,
            RequestScope() as scope,
            client.stream("POST", URL, json=BODY) as response,
        ):
            tracemalloc.start()
            try:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert _figures(record) == (tokens, "estimated", None, "stop", "completed")
    assert size > 5_000_000 and peak < 500_000, f"peak {peak} B while reading {size} B"
