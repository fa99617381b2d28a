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
from scoped_clients._vendors._wire import SSEMeter
from scoped_clients._vendors.anthropic import MessagesBodyMeter, MessagesStreamMeter
from scoped_clients._vendors.cohere import ChatV1StreamMeter, ChatV2StreamMeter, CohereBodyMeter
from scoped_clients._vendors.google_genai import GenerateStreamMeter
from scoped_clients._vendors.groq import GroqChatStreamMeter
from scoped_clients._vendors.mistralai import CompletionStreamMeter
from scoped_clients._vendors.openai import ChatBodyMeter, ChatStreamMeter, ResponsesBodyMeter, ResponsesStreamMeter


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


# Tool-calling turns, cut before the provider's final usage (an aborted call): the tool
# call's deltas are the output.
_CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
CHAT_TOOLS = _sse(
    [
        _chunk({"role": "assistant", "content": None}),
        _chunk({"tool_calls": [_CALL]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '": "content\\"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"}'}}]}),
        _chunk({}, finish="tool_calls"),
    ]
)
_ARGS = {"item_id": "fc_1", "output_index": 0}
RESPONSES_TOOLS = _sse(
    [
        ("response.created", {"type": "response.created", "response": {"status": "in_progress"}}),
        (
            "response.output_item.added",
            {"type": "response.output_item.added", "item": {"type": "function_call", "arguments": ""}},
        ),
        ("response.function_call_arguments.delta", {"type": "response.function_call_arguments.delta", "delta": "{"}),
        ("response.function_call_arguments.delta", {"type": "response.function_call_arguments.delta", "delta": "}"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "a"}),
    ]
)
RESPONSES_TOOLS_UNNAMED = RESPONSES_TOOLS.replace(b"event: ", b"x-ignored: ")
ANTHROPIC_TOOLS = _sse(
    [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "input": {}}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": '{"a'}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": '": 1}'}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
)
COHERE_TOOLS = _sse(
    [
        ("message-start", {"type": "message-start", "delta": {"message": {"role": "assistant"}}}),
        ("tool-plan-delta", {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will"}}}),
        ("tool-call-start", {"type": "tool-call-start", "delta": {"message": {"tool_calls": {"id": "c1"}}}}),
        ("tool-call-delta", {"type": "tool-call-delta", "delta": {"message": {"tool_calls": {"function": {}}}}}),
        ("tool-call-delta", {"type": "tool-call-delta", "delta": {"message": {"tool_calls": {"function": {}}}}}),
        ("content-delta", {"type": "content-delta", "delta": {"message": {"content": {"text": "x"}}}}),
        ("broken", b"{not json"),  # the SDK skips it with a warning: no error
        ("message-end", {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL"}}),
    ]
)


def _respace(stream: bytes, style: str) -> bytes:
    """The same events as another OpenAI-compatible server may write them: spaces, or one key per line."""
    if style == "compact":
        return stream
    out = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {") and line.endswith(b"}"):
            value = json.loads(line[6:])
            if style == "spaced":
                line = b"data: " + json.dumps(value).encode()
            else:
                line = b"\n".join(b"data: " + part for part in json.dumps(value, indent=1).encode().split(b"\n"))
        out.append(line)
    return b"\n".join(out)


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
        (ChatStreamMeter, CHAT_TOOLS, (4, "estimated", None, "estimated", "tool_calls", None)),
        (ResponsesStreamMeter, RESPONSES_TOOLS, (3, "estimated", None, "estimated", None, None)),
        (ResponsesStreamMeter, RESPONSES_TOOLS_UNNAMED, (3, "estimated", None, "estimated", None, None)),
        (MessagesStreamMeter, ANTHROPIC_TOOLS, (2, "estimated", 9, "provider", None, None)),
        (ChatV2StreamMeter, COHERE_TOOLS, (4, "estimated", None, "estimated", "TOOL_CALL", None)),
    ],
    ids=[
        "openai-chat",
        "openai-chat-usage",
        "openai-responses",
        "anthropic",
        "openai-chat-tools",
        "openai-responses-tools",
        "openai-responses-tools-unnamed",
        "anthropic-tools",
        "cohere-tools",
    ],
)
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
@pytest.mark.parametrize("style", ["compact", "spaced", "multiline"])
def test_meter_figures_do_not_depend_on_chunking(
    make: Callable[[], Meter], stream: bytes, expected: tuple[object, ...], line_end: str, style: str
) -> None:
    stream = _respace(stream, style)
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


def test_cohere_streams_skip_a_malformed_event_as_the_sdk_does() -> None:
    v2 = ChatV2StreamMeter()
    v2.feed(b"event: content-delta\ndata: {broken\n\n")
    v1 = ChatV1StreamMeter()
    v1.feed(b'{"event_type":"text-generation","text":"a"}\n{"event_type":"stream-end", broken\n')
    v1.close()
    assert v2.error is None and v1.error is None and v1.tokens_out == 1


@pytest.mark.parametrize(
    ("meter", "error"),
    [
        (ChatBodyMeter(strict=True), "the response body is not JSON"),  # a JSON content type: the SDK raises
        (ChatBodyMeter(strict=False), None),  # text/plain: the OpenAI SDK hands back the text
        (CohereBodyMeter(), "the response body is not JSON"),  # Cohere raises ApiError for any 2xx
    ],
)
def test_a_body_that_is_not_json(meter: Meter, error: str | None) -> None:
    meter.feed(b"<html>upstream proxy error</html>")
    meter.close()
    meter.close()  # idempotent
    assert meter.error == error


def test_a_spaced_json_body_is_read() -> None:
    meter = ChatBodyMeter()
    meter.feed(json.dumps({"choices": [{"finish_reason": "tool_calls"}], "usage": {"completion_tokens": 4}}).encode())
    meter.close()
    assert (meter.finish_reason, meter.tokens_out, meter.output_source, meter.error) == (
        "tool_calls",
        4,
        "provider",
        None,
    )


COHERE_V1_TOOLS = (
    b'{"is_finished":false,"event_type":"stream-start"}\n'
    b'{"is_finished":false,"event_type":"tool-calls-chunk","tool_call_delta":{"name":"f"}}\n'
)
_TOOL_BLOCK_OPENED = ANTHROPIC_TOOLS[: ANTHROPIC_TOOLS.index(b"event: content_block_delta")]


@pytest.mark.parametrize(
    ("make", "stream", "tool_calls"),
    [
        (ChatStreamMeter, CHAT, False),
        (ChatStreamMeter, CHAT_TOOLS, True),
        (ChatStreamMeter, CHAT_TOOLS[: CHAT_TOOLS.index(b"get_weather") + 200], True),  # cut after the call opened
        (ResponsesStreamMeter, RESPONSES, False),
        (ResponsesStreamMeter, RESPONSES_TOOLS, True),
        (ResponsesStreamMeter, RESPONSES_TOOLS_UNNAMED, True),
        (MessagesStreamMeter, ANTHROPIC, False),
        (MessagesStreamMeter, ANTHROPIC_TOOLS, True),
        (MessagesStreamMeter, _TOOL_BLOCK_OPENED, True),  # a tool_use block opened, no delta yet
        (ChatV2StreamMeter, COHERE_TOOLS, True),
        (ChatV1StreamMeter, COHERE_V1_TOOLS, True),
    ],
)
def test_stream_meters_see_a_tool_call_before_the_stream_ends(
    make: Callable[[], Meter], stream: bytes, tool_calls: bool
) -> None:
    """What tells a cut turn's shape (the savings estimator learns tool-call turns apart from answers)."""
    for chunks in (_splits(stream)[0], _splits(stream)[1]):  # whole, and byte by byte
        meter = make()
        for chunk in chunks:
            meter.feed(chunk)
        assert meter.tool_calls is tool_calls


_CALL_MESSAGE = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}


@pytest.mark.parametrize(
    ("make", "body", "tool_calls"),
    [
        (ChatBodyMeter, {"choices": [{"message": _CALL_MESSAGE, "finish_reason": "stop"}]}, True),  # a forced tool
        (ChatBodyMeter, {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}, False),
        (ResponsesBodyMeter, {"status": "completed", "output": [{"type": "function_call", "name": "f"}]}, True),
        (ResponsesBodyMeter, {"status": "completed", "output": [{"type": "message", "content": []}]}, False),
        (MessagesBodyMeter, {"stop_reason": "max_tokens", "content": [{"type": "tool_use", "input": {}}]}, True),
        (MessagesBodyMeter, {"stop_reason": "end_turn", "content": [{"type": "text", "text": "hi"}]}, False),
        (CohereBodyMeter, {"finish_reason": "TOOL_CALL", "message": {"tool_calls": [{"id": "c"}]}}, True),
        (CohereBodyMeter, {"text": "", "tool_calls": [{"name": "f"}]}, True),  # v1
        (CohereBodyMeter, {"finish_reason": "COMPLETE", "message": {"content": []}}, False),
    ],
)
def test_body_meters_see_tool_calls(make: Callable[[], Meter], body: dict[str, Any], tool_calls: bool) -> None:
    meter = make()
    meter.feed(json.dumps(body).encode())
    meter.close()
    assert meter.tool_calls is tool_calls


def test_one_sse_splitter_strips_one_optional_space() -> None:
    """Meters and always_stream's assemblers split events with the same code, as the SSE spec says."""
    from scoped_clients._vendors._assemble import Assembler
    from scoped_clients._vendors._wire import SSESplitter, data_of, event_data

    assert issubclass(SSEMeter, SSESplitter) and issubclass(Assembler, SSESplitter)
    assert data_of(b"data:x") == b"x"
    assert data_of(b"data: x") == b"x"
    assert data_of(b"data:  x") == b" x"  # only one space is the separator
    assert data_of(b"event: e\ndata: [1,\ndata:  2]") == b"[1,\n 2]"
    assert data_of(b"event: e") is None
    assert event_data(b"data: [1,\ndata:  2]") == [1, 2]


# ---------------------------------------------------------------- runs of events counted at once
# The body reader feeds a meter a batch of chunks at a time; ``ChatStreamMeter`` then counts a run
# of plain text deltas with byte counts over the whole run (``count_block``) and reads anything else
# event by event. Either way the figures must be those of a meter fed one event at a time.


_TOP = {"id": "c1", "object": "chat.completion.chunk", "created": 7}


def _ev(
    content: Any = "x",
    *,
    choice: dict[str, Any] | None = None,
    more: tuple[dict[str, Any], ...] = (),
    after: dict[str, Any] | None = None,
    **top: Any,
) -> bytes:
    """One chat chunk event; unless told otherwise it starts with the same bytes as every other
    (up to its content), so that it falls inside a run the meter counts at once."""
    first = {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None, **(choice or {})}
    return _sse([(None, {**_TOP, **top, "choices": [first, *more], **(after or {})})])


def _long_chat(middle: tuple[bytes, ...] = (), *, usage: bool = False, end: bool = True) -> list[bytes]:
    """The events of a long chat stream (one bytes each, blank line included), ``middle`` in its middle."""
    after = {"usage": None} if usage else None
    events = [_ev("", choice={"delta": {"role": "assistant", "content": "", "refusal": None}}, after=after)]
    events += [_ev(f"tok{i} ", after=after) for i in range(100)]
    events += middle
    events += [_ev(f"more{i} ", after=after) for i in range(100)]
    if end:
        events.append(_ev(choice={"delta": {}, "finish_reason": "length"}, after=after))
        if usage:
            events.append(
                _sse([(None, {**_TOP, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 201}})])
            )
        events.append(b"data: [DONE]\n\n")
    return events


_CUT = _ev("cut").split(b'"cut"')[0] + b'"cut"\n\n'  # an event cut short: not JSON
_RUNS = {
    "plain": _long_chat(),
    "usage-null-in-every-chunk": _long_chat(usage=True),
    "an-empty-content": _long_chat((_ev(""),)),
    "a-finish-reason-mid-run": _long_chat((_ev("a", choice={"finish_reason": "stop"}),), end=False),
    "two-choices-in-one-chunk": _long_chat((_ev("a", more=({"index": 1, "delta": {"content": ""}},)),)),
    "logprobs": _long_chat((_ev("a", choice={"logprobs": {"content": [{"token": "a"}]}}),)),
    "usage-mid-run": _long_chat((_ev("a", after={"usage": {"completion_tokens": 5}}),)),
    "a-keep-alive-comment": _long_chat((b": ping\n\n",)),
    "a-refusal-event": _long_chat((b'data: {"refusal":"no"}\n\n',)),
    "an-extra-blank-line": _long_chat((b"\n\n",)),
    "three-newlines": _long_chat((_ev("a") + b"\n",)),
    "a-blank-line-inside-an-event": _long_chat((_ev("a").replace(b'"a"}', b'"a"\n\n}'),)),
    "a-malformed-event": _long_chat((_CUT,)),
    "ends-with-a-malformed-event": _long_chat((_CUT,), end=False)[:102],
    "created-changes": _long_chat(tuple(_ev(f"t{i}", created=8) for i in range(40))),
    "a-spaced-event": [_ev().replace(b'":"', b'": "'), *_long_chat()],
    "quoted-key-in-content": _long_chat((_ev('say "content":"x" and "finish_reason":"stop"'),)),
    "tool-calls": _long_chat((_sse([(None, {**_TOP, "choices": [{"delta": {"tool_calls": [_CALL]}}]})]),) * 40),
}


_RUNS["content-and-tool-calls"] = _long_chat(
    tuple(_ev("a", choice={"delta": {"content": "a", "tool_calls": [_CALL]}}) for _ in range(40))
)  # Mistral's meter sees the tool call, OpenAI's counts the content and looks no further
_RUNS["x-groq-usage-mid-run"] = _long_chat((_ev("a", x_groq={"usage": {"completion_tokens": 5}}),))  # Groq's usage
_RUNS["content-as-a-list"] = _long_chat((_ev([{"type": "text", "text": "a"}]),) * 40)  # Mistral's chunks


def _spied(make: type[SSEMeter], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the runs ``make``'s meters count at once (``count_block`` saying yes)."""
    runs = [0]
    count_block = make.count_block

    def spy(self: SSEMeter, buffer: bytes, start: int, end: int) -> bool:
        counted = count_block(self, buffer, start, end)
        runs[0] += counted
        return counted

    monkeypatch.setattr(make, "count_block", spy)
    return runs


def _check_runs(
    make: type[SSEMeter], events: list[bytes], line_end: str, monkeypatch: pytest.MonkeyPatch, *, plain: bool
) -> None:
    """``events`` (one bytes each, blank line included) fed whole, in batches of 32 and in uneven
    pieces give the figures of the same events fed one at a time; ``plain``: some run was counted at once."""
    if line_end == "crlf":
        events = [event.replace(b"\n", b"\r\n") for event in events]
    one_by_one = make()
    for event in events:  # each under the size a run needs: read event by event, as before runs were counted
        one_by_one.feed(event)
    one_by_one.close()
    expected = (*_figures(one_by_one), one_by_one.tool_calls)
    stream = b"".join(events)
    runs = _spied(make, monkeypatch)
    # whole; batches of 32 events (what the body reader feeds); pieces that split events anywhere,
    # so that a run ends inside an event and the next feed starts with its rest
    for chunks in ([stream], [b"".join(events[i : i + 32]) for i in range(0, len(events), 32)], _pieces(stream)):
        runs[0] = 0
        meter = make()
        for chunk in chunks:
            meter.feed(chunk)
        meter.close()
        assert (*_figures(meter), meter.tool_calls) == expected, f"fed in {len(chunks)} chunks"
        if plain:
            assert runs[0] > 0  # the runs were counted at once


@pytest.mark.parametrize("make", [ChatStreamMeter, GroqChatStreamMeter, CompletionStreamMeter])
@pytest.mark.parametrize("name", list(_RUNS))
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_a_run_of_events_counted_at_once_gives_the_figures_of_one_by_one(
    make: type[SSEMeter], name: str, line_end: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_runs(make, _RUNS[name], line_end, monkeypatch, plain=name == "plain")


# The other vendors' meters: a long stream of each, with odd events in the middle of a run. Each
# check of a ``count_block`` is needed by one of these (the comment after it names which). A
# stream's odd run starts at its 33rd event: fed in batches of 32 events, it is a batch of its own,
# counted at once or not at all (whole or in pieces, a run's edges are read event by event). Most
# are cut before the provider's own count, which would stand over the meter's.


def _long(
    first: list[bytes], plain: Callable[[str], bytes], middle: tuple[bytes, ...], last: list[bytes]
) -> list[bytes]:
    """``first``, plain events up to the 32nd, ``middle``, 100 more plain events, ``last``."""
    events = [*first, *(plain(f"tok{i} ") for i in range(32 - len(first)))]
    return [*events, *middle, *(plain(f"more{i} ") for i in range(100)), *last]


def _anthropic_delta(text: str = "x", *, kind: str = "text_delta", key: str = "text", index: int = 0) -> bytes:
    event = "content_block_delta"
    return _sse([(event, {"type": event, "index": index, "delta": {"type": kind, key: text}})])


_ANTHROPIC_START = _sse(
    [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
    ]
)
_ANTHROPIC_END = _sse(
    [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
)


def _long_anthropic(
    middle: tuple[bytes, ...] = (), *, kind: str = "text_delta", key: str = "text", end: bool = False
) -> list[bytes]:
    def plain(text: str) -> bytes:
        return _anthropic_delta(text, kind=kind, key=key)

    return _long([_ANTHROPIC_START], plain, middle, [_ANTHROPIC_END] if end else [])


def _anthropic_run(kind: str, key: str, text: str = "x", index: int = 0) -> tuple[bytes, ...]:
    return (_anthropic_delta(text, kind=kind, key=key, index=index),) * 64


_ANTHROPIC_USAGE = _sse([("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}})])
_BLOCK_START = _sse([("content_block_start", {"type": "content_block_start", "content_block": {"type": "text_delta"}})])
_ANTHROPIC_RUNS = {
    "plain": _long_anthropic(end=True),
    "thinking": _long_anthropic(kind="thinking_delta", key="thinking", end=True),
    "tool-input": _long_anthropic(_anthropic_run("input_json_delta", "partial_json", index=1)),  # the tool flag
    "a-ping": _long_anthropic((_sse([("ping", {"type": "ping"})]),)),
    "a-second-block": _long_anthropic((_anthropic_delta("b", index=1),)),  # the line count
    "quoted-names-in-text": _long_anthropic(
        (_anthropic_delta('"input_json_delta" message_delta content_block_delta'),)
    ),
    # a delta that carries no output: a delta type that counts
    "a-run-of-signature-deltas": _long_anthropic(_anthropic_run("signature_delta", "signature")),
    "a-run-of-block-starts-naming-a-delta-type": _long_anthropic((_BLOCK_START,) * 64),  # "content_block_delta"
    "usage-then-more-deltas": _long_anthropic((_ANTHROPIC_USAGE,)),  # the provider's count stands: "estimated"
    "ends-with-a-malformed-event": _long_anthropic((_anthropic_delta("cut")[:-6] + b"\n\n",))[:33],  # "}"
}


@pytest.mark.parametrize("name", list(_ANTHROPIC_RUNS))
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_anthropic_runs_counted_at_once_give_the_figures_of_one_by_one(
    name: str, line_end: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = name in ("plain", "thinking", "tool-input")
    _check_runs(MessagesStreamMeter, _ANTHROPIC_RUNS[name], line_end, monkeypatch, plain=plain)


_TEXT_DELTA = "response.output_text.delta"
_ARGS_DELTA = "response.function_call_arguments.delta"
_DELTA_IDS = {"item_id": "msg_1", "output_index": 0, "content_index": 0}


def _responses_event(kind: str, seq: int = 150, *, named: str = "event:", **data: Any) -> bytes:
    event = _sse([(kind, {"type": kind, "sequence_number": seq, **data})])
    return event.replace(b"event:", named.encode(), 1)


def _long_responses(middle: tuple[bytes, ...] = (), *, end: bool = False, named: str = "event:") -> list[bytes]:
    first = _responses_event("response.created", 0, named=named, response={"status": "in_progress", "usage": None})
    seq = iter(range(1, 1000))

    def plain(text: str) -> bytes:
        return _responses_event(_TEXT_DELTA, next(seq), named=named, **_DELTA_IDS, delta=text, logprobs=[])

    usage = {"input_tokens": 5, "output_tokens": 200}
    last = _responses_event("response.completed", 999, response={"status": "completed", "usage": usage})
    return _long([first], plain, middle, [last] if end else [])


def _responses_run(kind: str, named: str = "event:", **data: Any) -> tuple[bytes, ...]:
    return tuple(_responses_event(kind, 200 + i, named=named, **_DELTA_IDS, **data) for i in range(64))


_RESPONSES_RUNS = {
    "plain": _long_responses(end=True),
    "tool-arguments": _long_responses(_responses_run(_ARGS_DELTA, delta="{")),  # the tool flag
    "a-refusal-delta": _long_responses((_responses_event("response.refusal.delta", delta="no"),)),  # the line count
    "a-run-of-other-events": _long_responses(_responses_run("response.output_text.annotation.added")),  # an output
    # another line than "event:" (as long): the type in the data decides, and the text quotes
    # a tool delta's name: "event:"
    "unnamed": _long_responses(_responses_run(_TEXT_DELTA, named="x-evt:", delta=_ARGS_DELTA), named="x-evt:"),
    "ends-with-a-malformed-event": _long_responses((_responses_event(_TEXT_DELTA, delta="cut")[:-6] + b"\n\n",))[:33],
}


@pytest.mark.parametrize("name", list(_RESPONSES_RUNS))
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_responses_runs_counted_at_once_give_the_figures_of_one_by_one(
    name: str, line_end: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = name in ("plain", "tool-arguments")
    _check_runs(ResponsesStreamMeter, _RESPONSES_RUNS[name], line_end, monkeypatch, plain=plain)


def _gemini_chunk(*parts: dict[str, Any], finish: str | None = None, output: int | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    usage: dict[str, Any] = {"promptTokenCount": 4, "totalTokenCount": 4}
    if output is not None:
        usage["candidatesTokenCount"] = output
    return _sse([(None, {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "m", "responseId": "r"})])


def _gemini_text(text: str) -> bytes:
    return _gemini_chunk({"text": text})


def _long_gemini(middle: tuple[bytes, ...] = (), *, end: bool = False) -> list[bytes]:
    return _long([], _gemini_text, middle, [_gemini_chunk({"text": ""}, finish="STOP", output=201)] if end else [])


_CALL_PART = {"functionCall": {"name": "f", "args": {"a": 1}}}
_GEMINI_RUNS = {
    "plain": _long_gemini(end=True),
    "cut": _long_gemini(),  # the first chunk's prompt count: read only once one is parsed
    # as Google's service writes its JSON: a space after each colon
    "spaced": [event.replace(b'":', b'": ') for event in _long_gemini(end=True)],
    "a-call-chunk": _long_gemini((_gemini_chunk(_CALL_PART),)),  # the line count
    "text-and-calls": _long_gemini((_gemini_chunk({"text": "a"}, _CALL_PART),) * 64),  # the tool flag
    "two-text-parts": _long_gemini((_gemini_chunk({"text": "a"}, {"text": ""}),)),  # one "text" each
    "an-empty-text": _long_gemini((_gemini_text(""),)),
    "text-not-a-string": _long_gemini((_gemini_chunk({"text": None}),) * 64),  # a string's quote
    "a-finish-reason-mid-run": _long_gemini((_gemini_chunk({"text": "a"}, finish="SAFETY"),)),
    "an-output-count-mid-run": _long_gemini((_gemini_chunk({"text": "a"}, output=50),)),  # and "estimated"
    "ends-with-a-malformed-event": _long_gemini((_gemini_text("cut")[:-6] + b"\n\n",))[:33],  # "}"
}


@pytest.mark.parametrize("name", list(_GEMINI_RUNS))
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_gemini_runs_counted_at_once_give_the_figures_of_one_by_one(
    name: str, line_end: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = name in ("plain", "cut", "spaced", "text-and-calls")
    _check_runs(GenerateStreamMeter, _GEMINI_RUNS[name], line_end, monkeypatch, plain=plain)


def _cohere_event(kind: str, delta: dict[str, Any], named: bool = True) -> bytes:
    return _sse([(kind if named else None, {"type": kind, "index": 0, "delta": delta})])


def _cohere_text(text: str) -> bytes:
    return _cohere_event("content-delta", {"message": {"content": {"text": text}}})


def _long_cohere(middle: tuple[bytes, ...] = (), end: bool = False) -> list[bytes]:
    usage = {"billed_units": {"input_tokens": 3, "output_tokens": 200}, "tokens": {"input_tokens": 9}}
    last = _cohere_event("message-end", {"finish_reason": "COMPLETE", "usage": usage})
    start = _cohere_event("message-start", {"message": {"role": "assistant"}})
    return _long([start], _cohere_text, middle, [last] if end else [])


def _tool_delta(named: bool = True) -> bytes:
    return _cohere_event("tool-call-delta", {"message": {"tool_calls": {"function": {"arguments": "{"}}}}, named)


_COHERE_RUNS = {
    "plain": _long_cohere(end=True),
    "a-tool-plan-delta": _long_cohere((_cohere_event("tool-plan-delta", {"message": {"tool_plan": "I"}}),)),  # lines
    "a-run-of-tool-call-deltas": _long_cohere((_tool_delta(),) * 64),
    "a-run-of-unnamed-tool-call-deltas": _long_cohere((_tool_delta(named=False),) * 64),  # "content-delta"
    "usage-then-more-deltas": _long_cohere(
        (_cohere_event("message-end", {"usage": {"tokens": {"output_tokens": 5}}}),)
    ),  # the provider's count stands: "estimated"
    "a-malformed-event": _long_cohere((b"event: content-delta\ndata: {broken\n\n",)),  # the SDK skips it
}


@pytest.mark.parametrize("name", list(_COHERE_RUNS))
@pytest.mark.parametrize("line_end", ["lf", "crlf"])
def test_cohere_runs_counted_at_once_give_the_figures_of_one_by_one(
    name: str, line_end: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_runs(ChatV2StreamMeter, _COHERE_RUNS[name], line_end, monkeypatch, plain=name == "plain")


def _pieces(stream: bytes) -> list[bytes]:
    sizes, out, at = [5000, 1, 3001, 17, 2048, 999], [], 0
    while at < len(stream):
        size = sizes[len(out) % len(sizes)]
        out.append(stream[at : at + size])
        at += size
    return out


def test_a_run_counted_at_once_reads_the_finish_reason_and_usage_of_its_last_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch that ends the stream: its plain events counted, the finish and usage read."""
    events = _long_chat(usage=True)
    runs = _spied(ChatStreamMeter, monkeypatch)
    meter = ChatStreamMeter()
    meter.feed(b"".join(events[:-3]))
    assert (meter.tokens_out, meter.finish_reason) == (200, None)
    meter.feed(b"".join(events[-3:]))
    figures = (meter.tokens_out, meter.output_source, meter.tokens_in, meter.finish_reason)
    assert figures == (201, "provider", 3, "length")
    assert runs[0] > 0


def test_a_long_stream_keeps_no_more_than_an_unfinished_event() -> None:
    meter = ChatStreamMeter()
    batch = b"".join(_long_chat()[1:101])
    for _ in range(1000):  # 100,000 events, ~12 MB
        meter.feed(batch + batch[:57])  # each feed leaves part of an event for the next
        meter.feed(batch[57:])
        assert len(meter._buffer) < 200
    meter.close()
    assert meter.tokens_out == 200_000 and meter.error is None
