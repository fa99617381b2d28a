"""The wire meters read the same figures whatever the chunking and line endings of the stream.

Networks and proxies split a stream anywhere (inside an event, inside a
``\\r\\n``); each stream below is fed whole, byte by byte, and in every split
size up to 64, with LF and with CRLF line ends, and must give the same result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from scoped_clients._calls import Meter
from scoped_clients._profiles.anthropic import MessagesStreamMeter
from scoped_clients._profiles.openai import ChatStreamMeter, ResponsesStreamMeter


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, data in events:
        if name is not None:
            out += f"event: {name}\n".encode()
        out += b"data: " + (data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode())
        out += b"\n\n"
    return out


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> tuple[None, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return None, {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], "usage": usage}


CHAT = _sse(
    [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": 'say "content":"x" twice'}),  # a quoted key inside content is escaped: one token
        _chunk({"content": "b"}),
        _chunk({"content": None, "tool_calls": []}),
        _chunk({}, finish="stop"),
        (None, {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": None}),
    ]
)
CHAT_WITH_USAGE = CHAT + _sse(
    [(None, {"id": "c1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}), (None, b"[DONE]")]
)
RESPONSES = _sse(
    [
        ("response.created", {"type": "response.created", "response": {"status": "in_progress"}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "a"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "b"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "c"}),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": {"status": "completed", "usage": {"input_tokens": 4, "output_tokens": 3}},
            },
        ),
    ]
)
ANTHROPIC = _sse(
    [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "a"}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "b"}}),
        ("ping", {"type": "ping"}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
        ),
    ]
)


def _figures(meter: Meter) -> tuple[object, ...]:
    return (
        meter.tokens_out,
        meter.output_source,
        meter.tokens_in,
        meter.input_source,
        meter.finish_reason,
        meter.error,
    )


def _splits(data: bytes) -> list[list[bytes]]:
    ways = [[data]]
    for size in range(1, 65):
        ways.append([data[i : i + size] for i in range(0, len(data), size)])
    return ways


@pytest.mark.parametrize(
    ("make", "stream", "expected"),
    [
        (ChatStreamMeter, CHAT, (2, "estimated", None, "estimated", "stop", None)),
        (ChatStreamMeter, CHAT_WITH_USAGE, (2, "provider", 7, "provider", "stop", None)),
        (ResponsesStreamMeter, RESPONSES, (3, "provider", 4, "provider", "completed", None)),
        (MessagesStreamMeter, ANTHROPIC, (2, "provider", 9, "provider", "end_turn", None)),
    ],
    ids=["openai-chat", "openai-chat-usage", "openai-responses", "anthropic"],
)
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_meter_figures_do_not_depend_on_chunking(
    make: Callable[[], Meter], stream: bytes, expected: tuple[object, ...], line_end: str
) -> None:
    if line_end == "crlf":
        stream = stream.replace(b"\n", b"\r\n")
    for chunks in _splits(stream):
        meter = make()
        for chunk in chunks:
            meter.feed(chunk)
        meter.close()
        assert _figures(meter) == expected, f"split into {len(chunks)} chunks"


def test_chat_meter_counts_tokens_before_the_stream_ends() -> None:
    meter = ChatStreamMeter()
    meter.feed(CHAT[: CHAT.index(b'"b"') + 10])  # up to the middle of the third event
    assert meter.tokens_out == 1 and meter.finish_reason is None


def test_a_malformed_event_is_recorded_as_an_error() -> None:
    meter = ChatStreamMeter()
    meter.feed(b'data: {"choices": [\n\n')
    meter.close()
    assert meter.error == "malformed event in the response stream"
