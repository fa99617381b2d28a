"""Anthropic: everything scoped_clients knows about it.

Messages (``message_start`` / ``content_block_delta`` / ``message_delta``
events): how a call is named, its meters, its ``always_stream`` plan and
assembler with the error table, and the drop-in names ``Anthropic`` /
``AsyncAnthropic`` and the SDK's own HTTP client classes (for ``http_client()``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from . import DropInName, Vendor
from ._assemble import Assembler, StreamPlan, final, fresh, merge, stream_plan
from ._wire import (
    JSONBodyMeter,
    SSEMeter,
    call_info,
    event_data,
    json_content_type,
    provider_usage,
    request_json,
    run_length,
)

PROVIDER = "anthropic"
#: the deltas that carry output: one token each
_DELTAS = (b'"text_delta"', b'"input_json_delta"', b'"thinking_delta"')


def _operation(path: str) -> str:
    """The operation a request path is: the one place Anthropic's endpoints are matched."""
    path = path.rstrip("/")
    if path.endswith("/v1/messages"):
        return "messages"
    return path.rsplit("/v1/", 1)[-1].replace("/", ".") or path


class MessagesStreamMeter(SSEMeter):
    """One token per ``content_block_delta`` of text, tool input (``input_json_delta``) or thinking."""

    __slots__ = ()

    counts_blocks = True

    def count_block(self, buffer: bytes, start: int, end: int) -> bool:
        # A run of deltas of one block: every event starts with the first one's bytes up to its
        # delta's type (the same event name, index...). ``on_event`` tests substrings only: an
        # event holding "content_block_delta" and a delta type counts one token, and is a tool's
        # if "input_json_delta" is anywhere in it.
        first = buffer.find(b"\n\n", start, end)
        for kind in _DELTAS:
            key = buffer.find(kind, start, first)
            if key >= 0:
                break
        else:
            return False
        head = buffer[start : key + len(kind)]
        if b"content_block_delta" not in head:
            return False
        events = run_length(buffer, start, end, head)
        if not events:
            return False
        self.tool_calls = self.tool_calls or buffer.find(b'"input_json_delta"', start, end) >= 0
        if self.output_source == "estimated":
            self.tokens_out += events
        return True

    def on_event(self, event: bytes) -> None:
        if b"content_block_delta" in event:
            tool = b'"input_json_delta"' in event
            self.tool_calls = self.tool_calls or tool
            if self.output_source == "estimated" and (tool or b'"text_delta"' in event or b'"thinking_delta"' in event):
                self.tokens_out += 1
        elif b"content_block_start" in event:  # a tool_use block opens before its first delta
            self.tool_calls = self.tool_calls or b'"tool_use"' in event
        elif b"message_start" in event:
            data = event_data(event)
            message = data.get("message") if isinstance(data, dict) else None
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):  # its output_tokens is a placeholder: the deltas are counted
                provider_usage(self, usage, output_key=None)
        elif b"message_delta" in event:
            data = event_data(event)
            if not isinstance(data, dict):
                return
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.finish_reason = str(delta["stop_reason"])
            usage = data.get("usage")
            if isinstance(usage, dict):
                provider_usage(self, usage)


class MessagesBodyMeter(JSONBodyMeter):
    __slots__ = ()

    def on_body(self, body: dict[str, Any]) -> None:
        content = body.get("content")
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
            self.tool_calls = True
        if body.get("stop_reason"):
            self.finish_reason = str(body["stop_reason"])
        usage = body.get("usage")
        if isinstance(usage, dict):
            provider_usage(self, usage)


class AnthropicProfile:
    provider = PROVIDER

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        operation = _operation(urlsplit(url).path)
        data = request_json(body)
        if operation == "messages":
            return call_info(self.provider, operation, data, "max_tokens")
        return call_info(self.provider, operation, data)

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        if status_code >= 400 or info.operation != "messages":
            return Meter()
        if content_type.startswith("text/event-stream"):
            return MessagesStreamMeter()
        return MessagesBodyMeter(strict=json_content_type(content_type))


# ------------------------------------------------------------- always_stream


def plan_stream(request: Any) -> StreamPlan | None:
    """A non-streamed messages request, in its streamed form."""
    if _operation(request.url.path) == "messages":
        return stream_plan(request, MessagesAssembler())
    return None


#: Anthropic's documented error types and their HTTP statuses
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class MessagesAssembler(Assembler):
    """Anthropic ``message_start`` / ``content_block_*`` / ``message_delta`` events -> one ``Message``."""

    def __init__(self) -> None:
        super().__init__()
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}

    def on_data(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "content_block_delta":
            self._delta(data.get("index", 0), data.get("delta") or {})
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict):
                self._blocks[data.get("index", 0)] = fresh(block)
        elif kind == "content_block_stop":
            self._stop(data.get("index", 0))
        elif kind == "message_start":
            message = data.get("message")
            self._message = dict(message) if isinstance(message, dict) else {}
        elif kind == "message_delta":
            self._message_delta(data)
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            error = data.get("error")
            error_type = error.get("type") if isinstance(error, dict) else None
            self.error = (_ERROR_STATUS.get(str(error_type), 500), data)

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        block = self._blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "input_json_delta":
            self._json.setdefault(index, []).append(str(delta.get("partial_json", "")))
        elif kind == "citations_delta":
            block.setdefault("citations", None)
            if block["citations"] is None:
                block["citations"] = []
            block["citations"].append(delta.get("citation"))
        else:  # text_delta, thinking_delta, signature_delta, and any later kind of the same form
            merge(block, {k: v for k, v in delta.items() if k != "type"})

    def _stop(self, index: int) -> None:
        parts = self._json.pop(index, None)
        block = self._blocks.get(index)
        if parts is not None and block is not None:
            text = "".join(parts)
            try:
                block["input"] = json.loads(text) if text.strip() else {}
            except ValueError:
                self.broken = True

    def _message_delta(self, data: dict[str, Any]) -> None:
        delta = data.get("delta")
        if isinstance(delta, dict):
            self._message.update(delta)
        usage = data.get("usage")
        if isinstance(usage, dict):  # cumulative counts: they replace message_start's placeholders
            current = self._message.get("usage")
            merged = dict(current) if isinstance(current, dict) else {}
            merged.update({k: v for k, v in usage.items() if v is not None})
            self._message["usage"] = merged

    def close(self) -> None:
        super().close()
        for index in list(self._json):  # a tool input whose block never stopped
            self._stop(index)

    def body(self) -> Any:
        content = [final(self._blocks[i]) for i in sorted(self._blocks)]
        return {**self._message, "content": content}


# ------------------------------------------------------------------ drop-ins

_HTTP: dict[str, Any] = {"http_path": ("_client",), "http_arg": "http_client"}
DROPINS = (
    DropInName("AsyncAnthropic", "``anthropic.AsyncAnthropic`` with a scoped HTTP layer.", **_HTTP),
    DropInName(
        "Anthropic",
        "``anthropic.Anthropic`` with a scoped HTTP layer; ``cancel()`` from another thread unblocks its reads.",
        **_HTTP,
    ),
)


VENDOR = Vendor(
    provider=PROVIDER,
    profile=AnthropicProfile,
    sdk="anthropic",
    generative=frozenset({"messages"}),
    gen_ai_operations={"messages": "chat"},
    plan_stream=plan_stream,
    shim="scoped_clients.anthropic",
    dropins=DROPINS,
    http_clients={"async": ("DefaultAsyncHttpxClient",), "sync": ("DefaultHttpxClient",)},
)
