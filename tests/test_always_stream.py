"""``always_stream=True``: a non-streamed call is sent as a stream and reassembled.

Three servers, all real and on 127.0.0.1:

* a scripted vendor server (Starlette under uvicorn) that answers each response
  shape twice, in the vendors' real wire formats: as the non-streamed JSON and
  as the matching event stream.  Each shape is called once without and once
  with ``always_stream`` and the SDK's objects (or exceptions) must be equal;
* the embedded ``LocalProvider``: a cancel mid-call stops it at the next token;
* a llama.cpp-like server that notices a client leaving only when it is about
  to write to it, as llama.cpp's server does (a non-streamed client: only when
  the answer is written), which is why the option exists.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import scoped_clients.anthropic as scoped_anthropic
import scoped_clients.openai as scoped_openai
from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients._vendors import plan_stream
from scoped_clients.httpx2 import AsyncScopedTransport
from scoped_clients.provider import LocalProvider, Reply, ToolCall
from scoped_clients.testing import serve

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


# ------------------------------------------------------------------ OpenAI chat

CHAT_BASE = {
    "id": "chatcmpl-BzQ3x9",
    "created": 1754000000,
    "model": "gpt-4.1-mini-2025-04-14",
    "service_tier": "default",
    "system_fingerprint": "fp_6f2eabb9a5",
}
CHAT_USAGE = {
    "prompt_tokens": 14,
    "completion_tokens": 9,
    "total_tokens": 23,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def chat_body(choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {**CHAT_BASE, "object": "chat.completion", "choices": choices, "usage": CHAT_USAGE}


def chat_chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    return sse({**CHAT_BASE, "object": "chat.completion.chunk", "choices": choices, "usage": usage})


def delta(index: int, d: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": index, "delta": d, "logprobs": logprobs, "finish_reason": finish}


def chat_stream(*chunks: bytes) -> list[bytes]:
    return [*chunks, chat_chunk([], CHAT_USAGE), sse("[DONE]")]


def message(**fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "refusal": None, "annotations": [], **fields}


CHAT_TEXT = (
    chat_body(
        [{"index": 0, "message": message(content="It is sunny in Paris."), "logprobs": None, "finish_reason": "stop"}]
    ),
    chat_stream(
        chat_chunk([delta(0, {"role": "assistant", "content": "", "refusal": None})]),
        *(chat_chunk([delta(0, {"content": t})]) for t in ("It", " is", " sunny", " in", " Paris", ".")),
        chat_chunk([delta(0, {}, "stop")]),
    ),
)

CHAT_N2 = (
    chat_body(
        [
            {"index": 0, "message": message(content="Sunny."), "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "message": message(content="Warm and sunny."), "logprobs": None, "finish_reason": "stop"},
        ]
    ),
    chat_stream(
        chat_chunk([delta(0, {"role": "assistant", "content": "", "refusal": None})]),
        chat_chunk([delta(1, {"role": "assistant", "content": "", "refusal": None})]),
        chat_chunk([delta(0, {"content": "Sunny"})]),
        chat_chunk([delta(1, {"content": "Warm"})]),
        chat_chunk([delta(1, {"content": " and"})]),
        chat_chunk([delta(0, {"content": "."})]),
        chat_chunk([delta(1, {"content": " sunny."})]),
        chat_chunk([delta(0, {}, "stop")]),
        chat_chunk([delta(1, {}, "stop")]),
    ),
)

ARGS_PARIS = '{"location":"Paris, France","unit":"celsius"}'
ARGS_LYON = '{"location":"Lyon, France"}'
CHAT_TOOLS = (
    chat_body(
        [
            {
                "index": 0,
                "message": message(
                    tool_calls=[
                        {
                            "id": "call_P1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ARGS_PARIS},
                        },
                        {
                            "id": "call_L2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ARGS_LYON},
                        },
                    ]
                ),
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ]
    ),
    chat_stream(
        chat_chunk(
            [
                delta(
                    0,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_P1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ],
                        "refusal": None,
                    },
                )
            ]
        ),
        *(
            chat_chunk([delta(0, {"tool_calls": [{"index": 0, "function": {"arguments": part}}]})])
            for part in ('{"loc', 'ation":"Paris', ', France","unit":"celsius"}')
        ),
        chat_chunk(
            [
                delta(
                    0,
                    {
                        "tool_calls": [
                            {
                                "index": 1,
                                "id": "call_L2",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    },
                )
            ]
        ),
        *(
            chat_chunk([delta(0, {"tool_calls": [{"index": 1, "function": {"arguments": part}}]})])
            for part in ('{"location"', ':"Lyon, France"}')
        ),
        chat_chunk([delta(0, {}, "tool_calls")]),
    ),
)

CHAT_REFUSAL = (
    chat_body(
        [
            {
                "index": 0,
                "message": message(refusal="I'm sorry, I can't help with that."),
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
    ),
    chat_stream(
        chat_chunk([delta(0, {"role": "assistant", "content": None, "refusal": ""})]),
        *(chat_chunk([delta(0, {"refusal": t})]) for t in ("I'm sorry,", " I can't", " help with that.")),
        chat_chunk([delta(0, {}, "stop")]),
    ),
)


def logprob(token: str, lp: float) -> dict[str, Any]:
    alt = {"token": token.upper(), "logprob": lp - 2.5, "bytes": list(token.upper().encode())}
    return {
        "token": token,
        "logprob": lp,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": token, "logprob": lp, "bytes": list(token.encode())}, alt],
    }


LOGPROB_TOKENS = [("Sun", -0.01), ("ny", -0.2), (".", -0.003)]
CHAT_LOGPROBS = (
    chat_body(
        [
            {
                "index": 0,
                "message": message(content="Sunny."),
                "logprobs": {"content": [logprob(t, lp) for t, lp in LOGPROB_TOKENS], "refusal": None},
                "finish_reason": "stop",
            }
        ]
    ),
    chat_stream(
        chat_chunk(
            [
                delta(
                    0,
                    {"role": "assistant", "content": "", "refusal": None},
                    logprobs={"content": [], "refusal": None},
                )
            ]
        ),
        *(
            chat_chunk([delta(0, {"content": t}, logprobs={"content": [logprob(t, lp)], "refusal": None})])
            for t, lp in LOGPROB_TOKENS
        ),
        chat_chunk([delta(0, {}, "stop")]),
    ),
)

CHAT_LENGTH = (
    chat_body([{"index": 0, "message": message(content="It is"), "logprobs": None, "finish_reason": "length"}]),
    chat_stream(
        chat_chunk([delta(0, {"role": "assistant", "content": "", "refusal": None})]),
        chat_chunk([delta(0, {"content": "It"})]),
        chat_chunk([delta(0, {"content": " is"})]),
        chat_chunk([delta(0, {}, "length")]),
    ),
)

# llama.cpp's server: no refusal/annotations, reasoning_content, timings, an int error code.
LLAMA_BASE = {"id": "chatcmpl-Ll4m4", "created": 1754000001, "model": "smollm2-135m", "system_fingerprint": "b6400-abc"}
LLAMA_TEXT = (
    {
        **LLAMA_BASE,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check the sky."},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
        "timings": {"prompt_n": 9, "predicted_n": 6},
    },
    [
        sse(
            {
                **LLAMA_BASE,
                "object": "chat.completion.chunk",
                "choices": [delta(0, {"role": "assistant", "content": None})],
            }
        ),
        *(
            sse({**LLAMA_BASE, "object": "chat.completion.chunk", "choices": [delta(0, d)]})
            for d in (
                {"reasoning_content": "Check"},
                {"reasoning_content": " the sky."},
                {"content": "Sun"},
                {"content": "ny."},
            )
        ),
        sse({**LLAMA_BASE, "object": "chat.completion.chunk", "choices": [delta(0, {}, "stop")]}),
        sse(
            {
                **LLAMA_BASE,
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
                "timings": {"prompt_n": 9, "predicted_n": 6},
            }
        ),
        sse("[DONE]"),
    ],
)

OPENAI_SERVER_ERROR = {
    "message": "The server had an error while processing your request. Sorry about that!",
    "type": "server_error",
    "param": None,
    "code": None,
}
CHAT_ERROR_MID_STREAM = (
    (500, {"error": OPENAI_SERVER_ERROR}),
    [
        chat_chunk([delta(0, {"role": "assistant", "content": "", "refusal": None})]),
        chat_chunk([delta(0, {"content": "It"})]),
        sse({"error": OPENAI_SERVER_ERROR}),
    ],
)
LLAMA_ERROR = {
    "code": 400,
    "message": "the request exceeds the available context size",
    "type": "exceed_context_size_error",
}
LLAMA_ERROR_MID_STREAM = (
    (400, {"error": LLAMA_ERROR}),
    [
        sse({**LLAMA_BASE, "object": "chat.completion.chunk", "choices": [delta(0, {"content": "It"})]}),
        sse({"error": LLAMA_ERROR}),
    ],
)

# -------------------------------------------------------------- OpenAI Responses


def response_obj(status: str, output: list[Any], usage: Any, **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_68a1b2",
        "object": "response",
        "created_at": 1754000002,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-4.1-mini-2025-04-14",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
        **extra,
    }


RESP_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 19,
}


def text_item(text: str, status: str = "completed") -> dict[str, Any]:
    content = (
        [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}] if status == "completed" else []
    )
    return {"id": "msg_68a1", "type": "message", "status": status, "content": content, "role": "assistant"}


def responses_stream(final_kind: str, final: dict[str, Any], body: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
    start = {**final, "status": "in_progress", "output": [], "usage": None, "error": None, "incomplete_details": None}
    events = [("response.created", {"response": start}), ("response.in_progress", {"response": start}), *body]
    events.append((final_kind, {"response": final}))
    return [sse({"type": kind, "sequence_number": i, **data}, kind) for i, (kind, data) in enumerate(events)]


def text_events(text_parts: list[str]) -> list[tuple[str, dict[str, Any]]]:
    ids = {"item_id": "msg_68a1", "output_index": 0, "content_index": 0}
    text = "".join(text_parts)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return [
        ("response.output_item.added", {"output_index": 0, "item": text_item("", "in_progress")}),
        ("response.content_part.added", {**ids, "part": {**part, "text": ""}}),
        *(
            ("response.output_text.delta", {**ids, "delta": p, "logprobs": [], "obfuscation": "xK3"})
            for p in text_parts
        ),
        ("response.output_text.done", {**ids, "text": text, "logprobs": []}),
        ("response.content_part.done", {**ids, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": text_item(text)}),
    ]


RESP_TEXT_FINAL = response_obj("completed", [text_item("It is sunny in Paris.")], RESP_USAGE)
RESP_TEXT = (
    RESP_TEXT_FINAL,
    responses_stream("response.completed", RESP_TEXT_FINAL, text_events(["It is", " sunny in Paris."])),
)

FUNCTION_ITEM = {
    "id": "fc_68a1",
    "type": "function_call",
    "status": "completed",
    "arguments": ARGS_PARIS,
    "call_id": "call_R1",
    "name": "get_weather",
}
REASONING_ITEM = {"id": "rs_68a1", "type": "reasoning", "summary": [], "encrypted_content": None}
RESP_TOOL_FINAL = response_obj(
    "completed",
    [REASONING_ITEM, FUNCTION_ITEM],
    RESP_USAGE,
    tools=[
        {
            "type": "function",
            "name": "get_weather",
            "description": None,
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
            "strict": True,
        }
    ],
)
RESP_TOOL = (
    RESP_TOOL_FINAL,
    responses_stream(
        "response.completed",
        RESP_TOOL_FINAL,
        [
            ("response.output_item.added", {"output_index": 0, "item": REASONING_ITEM}),
            ("response.output_item.done", {"output_index": 0, "item": REASONING_ITEM}),
            (
                "response.output_item.added",
                {"output_index": 1, "item": {**FUNCTION_ITEM, "arguments": "", "status": "in_progress"}},
            ),
            (
                "response.function_call_arguments.delta",
                {"item_id": "fc_68a1", "output_index": 1, "delta": ARGS_PARIS[:15]},
            ),
            (
                "response.function_call_arguments.delta",
                {"item_id": "fc_68a1", "output_index": 1, "delta": ARGS_PARIS[15:]},
            ),
            (
                "response.function_call_arguments.done",
                {"item_id": "fc_68a1", "output_index": 1, "arguments": ARGS_PARIS},
            ),
            ("response.output_item.done", {"output_index": 1, "item": FUNCTION_ITEM}),
        ],
    ),
)
RESP_INCOMPLETE_FINAL = response_obj(
    "incomplete",
    [text_item("It is")],
    {**RESP_USAGE, "output_tokens": 2, "total_tokens": 14},
    incomplete_details={"reason": "max_output_tokens"},
    max_output_tokens=16,
)
RESP_INCOMPLETE = (
    RESP_INCOMPLETE_FINAL,
    responses_stream("response.incomplete", RESP_INCOMPLETE_FINAL, text_events(["It", " is"])),
)
RESP_FAILED_ERROR = {"code": "server_error", "message": "An error occurred while processing your request."}
RESP_FAILED = (
    (500, {"error": {**RESP_FAILED_ERROR, "type": "server_error", "param": None}}),
    responses_stream(
        "response.failed",
        response_obj("failed", [], None, error=RESP_FAILED_ERROR),
        text_events(["It is"])[:3],
    ),
)
RESP_ERROR_EVENT = (
    (429, {"error": {"code": "rate_limit_exceeded", "message": "Rate limit reached for requests", "param": None}}),
    [
        sse(
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**RESP_TEXT_FINAL, "status": "in_progress", "output": []},
            },
            "response.created",
        ),
        sse(
            {
                "type": "error",
                "sequence_number": 1,
                "code": "rate_limit_exceeded",
                "message": "Rate limit reached for requests",
                "param": None,
            },
            "error",
        ),
    ],
)

# -------------------------------------------------------------------- Anthropic

MSG_START = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1,
        "service_tier": "standard",
    },
}


def msg_body(content: list[Any], stop: str, output_tokens: int, stop_sequence: str | None = None) -> dict[str, Any]:
    usage = {**MSG_START["usage"], "output_tokens": output_tokens}
    return {**MSG_START, "content": content, "stop_reason": stop, "stop_sequence": stop_sequence, "usage": usage}


def ev(kind: str, **data: Any) -> bytes:
    return sse({"type": kind, **data}, kind)


def msg_stream(
    blocks: list[list[bytes]], stop: str, output_tokens: int, stop_sequence: str | None = None
) -> list[bytes]:
    events = [ev("message_start", message=MSG_START), ev("ping")]
    for block in blocks:
        events.extend(block)
    events.append(
        ev(
            "message_delta",
            delta={"stop_reason": stop, "stop_sequence": stop_sequence},
            usage={"output_tokens": output_tokens},
        )
    )
    events.append(ev("message_stop"))
    return events


def text_block(index: int, parts: list[str]) -> list[bytes]:
    return [
        ev("content_block_start", index=index, content_block={"type": "text", "text": ""}),
        *(ev("content_block_delta", index=index, delta={"type": "text_delta", "text": p}) for p in parts),
        ev("content_block_stop", index=index),
    ]


MSG_TEXT = (
    msg_body([{"type": "text", "text": "It is sunny in Paris."}], "end_turn", 8),
    msg_stream([text_block(0, ["It is", " sunny", " in Paris."])], "end_turn", 8),
)
TOOL_INPUT = {"location": "Paris, France", "unit": "celsius"}
MSG_TOOL = (
    msg_body(
        [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": TOOL_INPUT},
        ],
        "tool_use",
        42,
    ),
    msg_stream(
        [
            text_block(0, ["Let me", " check."]),
            [
                ev(
                    "content_block_start",
                    index=1,
                    content_block={
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": {},
                    },
                ),
                *(
                    ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": p})
                    for p in ("", '{"location": "Par', 'is, France", "u', 'nit": "celsius"}')
                ),
                ev("content_block_stop", index=1),
            ],
        ],
        "tool_use",
        42,
    ),
)
MSG_TOOL_NO_INPUT = (
    msg_body([{"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}], "tool_use", 12),
    msg_stream(
        [
            [
                ev(
                    "content_block_start",
                    index=0,
                    content_block={"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
                ),
                ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": ""}),
                ev("content_block_stop", index=0),
            ]
        ],
        "tool_use",
        12,
    ),
)
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
MSG_THINKING = (
    msg_body(
        [
            {"type": "thinking", "thinking": "The user asks about Paris. It is sunny.", "signature": SIGNATURE},
            {"type": "text", "text": "Sunny."},
        ],
        "end_turn",
        30,
    ),
    msg_stream(
        [
            [
                ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""}),
                ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "The user asks"}),
                ev(
                    "content_block_delta",
                    index=0,
                    delta={"type": "thinking_delta", "thinking": " about Paris. It is sunny."},
                ),
                ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": SIGNATURE}),
                ev("content_block_stop", index=0),
            ],
            text_block(1, ["Sunny."]),
        ],
        "end_turn",
        30,
    ),
)
MSG_STOP_SEQUENCE = (
    msg_body([{"type": "text", "text": "It is sunny"}], "stop_sequence", 4, "\n\nHuman:"),
    msg_stream([text_block(0, ["It is", " sunny"])], "stop_sequence", 4, "\n\nHuman:"),
)
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
MSG_OVERLOADED = (
    (529, OVERLOADED),
    [ev("message_start", message=MSG_START), *text_block(0, ["It is"])[:2], sse(OVERLOADED, "error")],
)

# Every shape: model name -> (non-streamed answer, streamed answer).  An answer is a body
# (status 200), a (status, body) error, or a list of SSE events.
SHAPES: dict[str, tuple[Any, Any]] = {
    "chat-text": CHAT_TEXT,
    "chat-n2": CHAT_N2,
    "chat-tools": CHAT_TOOLS,
    "chat-refusal": CHAT_REFUSAL,
    "chat-logprobs": CHAT_LOGPROBS,
    "chat-length": CHAT_LENGTH,
    "chat-llamacpp": LLAMA_TEXT,
    "chat-error-mid-stream": CHAT_ERROR_MID_STREAM,
    "chat-llamacpp-error-mid-stream": LLAMA_ERROR_MID_STREAM,
    "chat-error-before-stream": ((429, {"error": {**OPENAI_SERVER_ERROR, "type": "requests"}}),) * 2,
    "resp-text": RESP_TEXT,
    "resp-tool": RESP_TOOL,
    "resp-incomplete": RESP_INCOMPLETE,
    "resp-failed": RESP_FAILED,
    "resp-error-event": RESP_ERROR_EVENT,
    "msg-text": MSG_TEXT,
    "msg-tool": MSG_TOOL,
    "msg-tool-no-input": MSG_TOOL_NO_INPUT,
    "msg-thinking": MSG_THINKING,
    "msg-stop-sequence": MSG_STOP_SEQUENCE,
    "msg-overloaded-mid-stream": MSG_OVERLOADED,
    "msg-error-before-stream": ((400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}),)
    * 2,
}
#: shapes whose stream ends early, without its final event (no non-streamed twin)
TRUNCATED = {
    "chat-truncated": CHAT_TEXT[1][:3],
    "resp-truncated": RESP_TEXT[1][:-1],
    "msg-truncated": MSG_TEXT[1][:-2],
    "msg-bad-tool-json": [
        *MSG_TOOL[1][:2],  # message_start, ping
        ev(
            "content_block_start",
            index=0,
            content_block={"type": "tool_use", "id": "toolu_03", "name": "f", "input": {}},
        ),
        ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": '{"location": "Par'}),
        ev("content_block_stop", index=0),
        *MSG_TOOL[1][-2:],  # message_delta, message_stop
    ],
}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = field(default=None)


class ShapeServer:
    """Starlette app: answers each scripted shape, records every request it received."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        routes = [
            Route(path, self.handle, methods=["POST"])
            for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings")
        ]
        self.app = Starlette(routes=routes)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        data = json.loads(body)
        self.seen.append(Seen(request.url.path, dict(request.headers), body, data))
        if request.url.path == "/v1/embeddings":
            vector = {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}
            usage = {"prompt_tokens": 1, "total_tokens": 1}
            return JSONResponse({"object": "list", "data": [vector], "model": data["model"], "usage": usage})
        model = data["model"]
        if model in TRUNCATED:
            answer = TRUNCATED[model] if data.get("stream") else None
        elif model == "json-anyway":  # a server that ignores "stream": true
            answer = CHAT_TEXT[0]
        elif model == "chat-gzip" and data.get("stream"):  # compressed although we asked for identity
            headers = {"content-encoding": "gzip", "x-request-id": "req_123"}
            return Response(gzip.compress(b"".join(CHAT_TEXT[1])), media_type="text/event-stream", headers=headers)
        elif model == "chat-gzip":
            answer = CHAT_TEXT[0]
        else:
            answer = SHAPES[model][1 if data.get("stream") else 0]
        if isinstance(answer, list):
            events = answer

            async def stream() -> AsyncIterator[bytes]:
                for event in events:
                    yield event

            return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-request-id": "req_123"})
        status, payload = answer if isinstance(answer, tuple) else (200, answer)
        return JSONResponse(payload, status_code=status, headers={"x-request-id": "req_123"})


@pytest.fixture(scope="module")
def shape_server() -> Iterator[tuple[ShapeServer, str]]:
    server = ShapeServer()
    with serve(server.app) as port:
        yield server, f"http://127.0.0.1:{port}"


@pytest.fixture
def shapes(shape_server: tuple[ShapeServer, str]) -> tuple[ShapeServer, str]:
    shape_server[0].seen.clear()
    return shape_server


# ------------------------------------------------------------------ calling


def _kind(model: str) -> str:
    return model.split("-", 1)[0]


async def call_async(url: str, model: str, always_stream: bool) -> Any:
    """One non-streamed call, as the SDK returns it (or the exception it raises)."""
    if _kind(model) == "msg":
        client: Any = scoped_anthropic.AsyncAnthropic(
            base_url=url, api_key="k", max_retries=0, always_stream=always_stream
        )
    else:
        client = scoped_openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="k", max_retries=0, always_stream=always_stream
        )
    async with client:
        try:
            return await _create_async(client, model)
        except (openai.APIError, anthropic.APIError) as exc:
            return exc


async def _create_async(client: Any, model: str) -> Any:
    kind = _kind(model)
    if kind == "chat":
        n = 2 if model in ("chat-n2", "chat-scripted") else 1
        return await client.chat.completions.create(model=model, messages=MESSAGES, n=n)
    if kind == "resp":
        return await client.responses.create(model=model, input="What is the weather in Paris?")
    return await client.messages.create(model=model, max_tokens=1024, messages=MESSAGES)


def call_sync(url: str, model: str, always_stream: bool) -> Any:
    if _kind(model) == "msg":
        client: Any = scoped_anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, always_stream=always_stream)
    else:
        client = scoped_openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, always_stream=always_stream)
    with client:
        try:
            kind = _kind(model)
            if kind == "chat":
                n = 2 if model == "chat-n2" else 1
                return client.chat.completions.create(model=model, messages=MESSAGES, n=n)
            if kind == "resp":
                return client.responses.create(model=model, input="What is the weather in Paris?")
            return client.messages.create(model=model, max_tokens=1024, messages=MESSAGES)
        except (openai.APIError, anthropic.APIError) as exc:
            return exc


def describe(result: Any) -> Any:
    """What the caller can observe: the object's fields, or the exception's type, status, message and body."""
    if isinstance(result, BaseException):
        status = getattr(result, "status_code", None)
        return (type(result), status, str(result), getattr(result, "body", None))
    return (type(result), result.model_dump(), result._request_id)


def check_requests(seen: list[Seen], model: str) -> None:
    plain, streamed = seen
    assert "stream" not in plain.json
    assert streamed.json == {
        **plain.json,
        "stream": True,
        **({"stream_options": {"include_usage": True}} if _kind(model) == "chat" else {}),
    }
    for request in (plain, streamed):  # every header right: the server read exactly the body it was told of
        assert int(request.headers["content-length"]) == len(request.body)
    assert streamed.headers["accept-encoding"] == "identity"
    same = {
        k: v
        for k, v in plain.headers.items()
        if k not in ("content-length", "accept-encoding", "x-stainless-retry-count")
    }
    assert {k: streamed.headers.get(k) for k in same} == same


@pytest.mark.anyio
@pytest.mark.parametrize("model", SHAPES)
async def test_reassembled_equals_non_streamed(model: str, shapes: tuple[ShapeServer, str]) -> None:
    server, url = shapes
    async with RequestScope() as scope:
        expected = await call_async(url, model, always_stream=False)
        got = await call_async(url, model, always_stream=True)
    assert describe(got) == describe(expected)
    check_requests(server.seen, model)
    plain, streamed = scope.report.calls  # type: ignore[union-attr]
    assert streamed.outcome == plain.outcome
    assert streamed.detail["always_stream"] is True
    if not isinstance(expected, BaseException):
        assert streamed.outcome == "completed" and streamed.finish_reason is not None
        assert (streamed.tokens_in, streamed.tokens_out) == (plain.tokens_in, plain.tokens_out)
    else:
        assert streamed.outcome == "failed"


@pytest.mark.parametrize("model", SHAPES)
def test_reassembled_equals_non_streamed_sync(model: str, shapes: tuple[ShapeServer, str]) -> None:
    server, url = shapes
    with RequestScope() as scope:
        expected = call_sync(url, model, always_stream=False)
        got = call_sync(url, model, always_stream=True)
    assert describe(got) == describe(expected)
    check_requests(server.seen, model)
    assert [c.outcome for c in scope.report.calls][1] == (
        "failed" if isinstance(expected, BaseException) else "completed"
    )  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_without_a_scope_too(shapes: tuple[ShapeServer, str]) -> None:
    """The option is the client's: a call made outside any scope is streamed and reassembled as well."""
    server, url = shapes
    expected = await call_async(url, "chat-tools", always_stream=False)
    got = await call_async(url, "msg-overloaded-mid-stream", always_stream=True)
    assert describe(await call_async(url, "chat-tools", always_stream=True)) == describe(expected)
    assert isinstance(got, anthropic.OverloadedError) and got.status_code == 529
    assert [s.json.get("stream") for s in server.seen] == [None, True, True]


@pytest.mark.anyio
@pytest.mark.parametrize("model", TRUNCATED)
async def test_stream_ending_before_its_final_event_fails_like_a_cut_body(
    model: str, shapes: tuple[ShapeServer, str]
) -> None:
    _, url = shapes
    async with RequestScope() as scope:
        got = await call_async(url, model, always_stream=True)
    assert isinstance(got, (openai.APIConnectionError, anthropic.APIConnectionError))
    assert isinstance(got.__cause__, httpx2.RemoteProtocolError)
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "failed" and "RemoteProtocolError" in (record.error or "")


@pytest.mark.anyio
async def test_other_requests_pass_through_untouched(shapes: tuple[ShapeServer, str]) -> None:
    server, url = shapes
    client = scoped_openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, always_stream=True)
    async with client, RequestScope():
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="hi")
        stream = await client.chat.completions.create(model="chat-text", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        anyway = await client.chat.completions.create(model="json-anyway", messages=MESSAGES)
        raw = await client.with_raw_response.chat.completions.create(model="chat-text", messages=MESSAGES)
    assert embedding.data[0].embedding == [0.1, 0.2]
    assert text == "It is sunny in Paris."
    assert anyway.choices[0].message.content == "It is sunny in Paris."  # the server answered JSON: kept
    assert raw.headers["content-type"] == "application/json" and raw.headers["x-request-id"] == "req_123"
    assert json.loads(raw.content) == CHAT_TEXT[0]
    embed, streamed, json_anyway, _ = server.seen
    assert embed.json == {"model": "text-embedding-3-small", "input": "hi", "encoding_format": "base64"}
    assert "stream_options" not in streamed.json  # a caller's own stream is sent as it was
    assert embed.headers["accept-encoding"] != "identity" and streamed.headers["accept-encoding"] != "identity"
    assert json_anyway.json["stream"] is True


@pytest.mark.anyio
async def test_a_compressed_stream_is_decoded(shapes: tuple[ShapeServer, str]) -> None:
    _, url = shapes
    expected = await call_async(url, "chat-gzip", always_stream=False)
    assert describe(await call_async(url, "chat-gzip", always_stream=True)) == describe(expected)


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("model", [m for m, (_, s) in SHAPES.items() if isinstance(s, list)])
def test_any_chunking_gives_the_same_answer(model: str, crlf: bool) -> None:
    """The assembler, fed the same stream cut at every size (and with CRLF line ends), rebuilds one answer."""
    path = {"chat": "/v1/chat/completions", "resp": "/v1/responses", "msg": "/v1/messages"}[_kind(model)]
    wire = b"".join(SHAPES[model][1])
    if crlf:
        wire = wire.replace(b"\n", b"\r\n")
    results = set()
    for size in (1, 2, 3, 7, 64, len(wire)):
        plan = plan_stream(httpx2.Request("POST", "http://h" + path, json={"model": model}))
        assert plan is not None
        for start in range(0, len(wire), size):
            plan.assembler.feed(wire[start : start + size])
        plan.assembler.close()
        assert plan.assembler.complete or plan.assembler.error is not None
        results.add(plan.assembler.result())
    assert len(results) == 1


@pytest.mark.anyio
async def test_transport_level_option(shapes: tuple[ShapeServer, str]) -> None:
    """Independent of how the clients are built: any httpx2 client with the scoped transport's option set."""
    server, url = shapes
    transport = AsyncScopedTransport()
    transport.always_stream = True
    async with httpx2.AsyncClient(transport=transport) as http, RequestScope():
        response = await http.post(
            f"{url}/v1/messages", json={"model": "msg-tool", "max_tokens": 9, "messages": MESSAGES}
        )
    assert response.status_code == 200 and response.json() == MSG_TOOL[0]
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers
    assert server.seen[0].json["stream"] is True


# ------------------------------------------- against the provider's scripts

WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_w1")
TIME = ToolCall("get_time", {"tz": "Europe/Paris"}, id="call_t2")
PROVIDER_SCRIPTS = {
    "chat": [Reply(text="Let me check.", tool_calls=[WEATHER, TIME]), Reply(text="Sunny today.")],
    "resp": Reply(text="Checking.", tool_calls=[WEATHER]),
    "msg": Reply(text="Let me look.", tool_calls=[WEATHER, TIME]),
}


def _without_clock(dump: dict[str, Any]) -> dict[str, Any]:
    """The provider stamps each answer with the current second: not something to compare."""
    return {k: v for k, v in dump.items() if k not in ("created", "created_at")}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", PROVIDER_SCRIPTS)
async def test_provider_scripted_tool_calls(kind: str, provider: LocalProvider) -> None:
    """The provider's own wire formats (written independently of the assembler) give equal objects too."""
    provider.token_interval = 0.0
    provider.script(PROVIDER_SCRIPTS[kind], PROVIDER_SCRIPTS[kind])
    results = []
    for always_stream in (False, True):
        if kind == "msg":
            client: Any = scoped_anthropic.AsyncAnthropic(
                base_url=provider.url, api_key="k", max_retries=0, always_stream=always_stream
            )
        else:
            client = scoped_openai.AsyncOpenAI(
                base_url=provider.url + "/v1", api_key="k", max_retries=0, always_stream=always_stream
            )
        async with client, RequestScope() as scope:
            results.append(await _create_async(client, f"{kind}-scripted"))
        (record,) = scope.report.calls  # type: ignore[union-attr]
        assert record.outcome == "completed" and record.tokens_out_source == "provider"
    plain, streamed = results
    assert _without_clock(streamed.model_dump()) == _without_clock(plain.model_dump())
    assert [log.json.get("stream") for log in provider.requests] == [None, True]


# ----------------------------------------------------------- cancellation


def openai_provider(p: LocalProvider) -> scoped_openai.AsyncOpenAI:
    return scoped_openai.AsyncOpenAI(base_url=p.url + "/v1", api_key="k", max_retries=0, always_stream=True)


def anthropic_provider(p: LocalProvider) -> scoped_anthropic.AsyncAnthropic:
    return scoped_anthropic.AsyncAnthropic(base_url=p.url, api_key="k", max_retries=0, always_stream=True)


async def _chat(p: LocalProvider) -> object:
    async with openai_provider(p) as client:
        return await client.chat.completions.create(model="local-1000", messages=MESSAGES, max_tokens=150)  # type: ignore[arg-type]


async def _responses(p: LocalProvider) -> object:
    async with openai_provider(p) as client:
        return await client.responses.create(model="local-1000", input="hi", max_output_tokens=150)


async def _messages(p: LocalProvider) -> object:
    async with anthropic_provider(p) as client:
        return await client.messages.create(model="local-1000", max_tokens=150, messages=MESSAGES)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("call", [_chat, _responses, _messages], ids=["chat", "responses", "messages"])
async def test_cancel_stops_the_provider_at_the_next_token(call: Callable[..., Any], provider: LocalProvider) -> None:
    errors: list[BaseException] = []
    scope = RequestScope("always-stream")
    # Tokens 30 ms apart: the tokens sent before the 10th unit have long reached the
    # client when it cancels, so the live count is at least 9.
    provider.token_interval = 0.03

    async def run() -> None:
        try:
            await call(provider)
        except ScopeCancelled as exc:
            errors.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(run)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 10)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert len(provider.requests) == 1 and log.json["stream"] is True
    assert [type(e) for e in errors] == [ScopeCancelled]
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.detail["always_stream"] is True
    # Counted live, as the tokens arrived: a non-streamed call aborted here has received nothing.
    produced = len(log.units) - log.units_after(t_cancel)
    assert 9 <= record.tokens_out <= produced
    assert record.tokens_saved_max == 150 - record.tokens_out


def test_sync_cancel_from_another_thread(provider: LocalProvider) -> None:
    client = scoped_openai.OpenAI(base_url=provider.url + "/v1", api_key="k", max_retries=0, always_stream=True)
    provider.token_interval = 0.03  # see the async test
    with client:
        result = cancel_sync_call(
            provider,
            lambda: client.chat.completions.create(model="local-1000", messages=MESSAGES),  # type: ignore[arg-type]
            units=10,
        )
    assert not result.thread_alive
    assert result.seen >= result.t_cancel and result.log.units_after(result.t_cancel) <= 1
    assert [type(e) for e in result.errors] == [ScopeCancelled]
    assert len(provider.requests) == 1 and result.log.json["stream"] is True
    (record,) = result.scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.tokens_out >= 9


# ----------------------------------------------- a server like llama.cpp's


class WriteOnlyServer:
    """An OpenAI chat server that, like llama.cpp's, looks for a departed client only when it
    is about to write: before each token of a stream, and for a non-streamed answer only
    when the answer is written.  Blocking sockets, one thread per connection."""

    def __init__(self, tokens: int = 200, interval: float = 0.002) -> None:
        self.tokens, self.interval = tokens, interval
        self.units: list[float] = []
        self.streamed: list[bool] = []
        self.noticed_at: float | None = None
        self.ended = threading.Event()
        self._cond = threading.Condition()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        self._sock.close()

    def wait_units(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.units) >= n, 10), "the server produced too few units"

    def units_after(self, t: float) -> int:
        with self._cond:
            return sum(1 for u in self.units if u > t)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            streamed = bool(json.loads(body).get("stream"))
            self.streamed.append(streamed)
            try:
                self._stream(conn) if streamed else self._plain(conn)
            except OSError:
                self.noticed_at = time.monotonic()
            finally:
                self.ended.set()

    def _unit(self) -> None:
        time.sleep(self.interval)
        with self._cond:
            self.units.append(time.monotonic())
            self._cond.notify_all()

    def _alive(self, conn: socket.socket) -> None:
        """cpp-httplib's check before a write: a peek that reads EOF means the client is gone."""
        conn.setblocking(False)
        try:
            if conn.recv(1, socket.MSG_PEEK) == b"":
                raise ConnectionResetError("client gone")
        except BlockingIOError:
            pass
        finally:
            conn.setblocking(True)

    def _plain(self, conn: socket.socket) -> None:
        for _ in range(self.tokens):
            self._unit()
        self._alive(conn)
        body = json.dumps(
            chat_body([{"index": 0, "message": message(content="x"), "logprobs": None, "finish_reason": "stop"}])
        )
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body.encode())
        )

    def _stream(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        chunks = [chat_chunk([delta(0, {"role": "assistant", "content": ""})])]
        for _ in range(self.tokens):
            self._alive(conn)
            self._unit()
            chunks.append(chat_chunk([delta(0, {"content": "x"})]))
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunks[-1]), chunks[-1]))
        for event in chat_stream(chat_chunk([delta(0, {}, "stop")])):
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        conn.sendall(b"0\r\n\r\n")


@pytest.mark.anyio
@pytest.mark.parametrize("always_stream", [True, False], ids=["always_stream", "plain"])
async def test_a_server_that_only_notices_at_a_write(always_stream: bool) -> None:
    server = WriteOnlyServer()
    client = scoped_openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0, always_stream=always_stream)
    try:
        with anyio.fail_after(20):
            async with client, anyio.create_task_group() as tg, RequestScope() as scope:

                async def run() -> None:
                    with pytest.raises(ScopeCancelled):
                        await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

                tg.start_soon(run)
                await wait(server.wait_units, 10)
                t_cancel = time.monotonic()
                scope.cancel("client_disconnected")
            await wait(server.ended.wait)
    finally:
        server.close()
    assert server.streamed == [always_stream] and server.noticed_at is not None
    if always_stream:
        assert server.units_after(t_cancel) <= 1  # noticed at its next token
    else:  # the reason for the option: it generated the whole answer for nobody
        assert len(server.units) == server.tokens and server.units_after(t_cancel) > 1
        assert server.noticed_at > server.units[-1]
