"""An in-process wire for per-event figures: the whole client stack, no network, no provider.

The loopback SSE figure (client CPU per event against the provider in its own process)
depends on who is faster: the OpenAI SDK spends ~105 us of CPU on an event and the
provider about as long to send one, so the client sometimes finds the next event
already there and sometimes waits for it, and 1 us of added work per event can vanish
or double in the figure (measured: a busy-wait of 1 us per chunk did not show in the
median).  Here every layer above the socket runs for real (the SDK, httpx2, httpcore2,
h11 and, for the scoped client, our transport, body reader and meter), but the network
stream is ``WireStream``: its reads hand out a recorded response one SSE event at a time,
each after a checkpoint (as anyio's socket ``receive`` does), so the client never waits
and its CPU per event adds up exactly.  It reports a real socket (one end of a socket
pair that carries nothing) so that a scoped call takes the same path as on the network.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

import anyio.lowlevel
import httpcore2
import httpx2

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chat_stream(tokens: int) -> list[bytes]:
    """An OpenAI chat stream of ``tokens`` content deltas, a finish and ``[DONE]``: one chunked-encoding
    chunk per event, as a server that flushes each event sends it."""
    events = []
    for i in range(tokens):
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "logprobs": None, "finish_reason": None}
        events.append(_chunk([choice]))
    events.append(_chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    events.append(b"data: [DONE]\n\n")
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


def _chunk(choices: list[dict[str, Any]]) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "local", "choices": choices}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class WireStream(httpcore2.AsyncNetworkStream):
    """One connection: each request written is answered with the recorded response, an event a read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._queue: list[bytes] = []
        self._next = 0
        self._pair = socket.socketpair()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore2's signature)
        await anyio.lowlevel.checkpoint()
        if self._next < len(self._queue):
            self._next += 1
            return self._queue[self._next - 1]
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore2's signature)
        if buffer[:5] in (b"POST ", b"GET /"):  # a new request on this connection (its body follows)
            self._queue, self._next = [_HEAD, *self._chunks], 0

    async def aclose(self) -> None:
        for end in self._pair:
            end.close()

    def get_extra_info(self, info: str) -> Any:
        return self._pair[0] if info == "socket" else None


class WireBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> WireStream:
        return WireStream(self._chunks)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def wire_client(chunks: list[bytes]) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` (the SDK's own transport class) whose connections are ``WireStream``s."""
    transport = httpx2.AsyncHTTPTransport()
    transport._pool._network_backend = WireBackend(chunks)
    return httpx2.AsyncClient(transport=transport)
