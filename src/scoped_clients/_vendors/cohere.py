"""Cohere: everything scoped_clients knows about it.

v2 chat (SSE), v1 chat (JSON lines), rerank and embed (billed units in
``meta``): how a call is named, its meters, and the drop-in names
``ClientV2`` / ``AsyncClientV2`` / ``Client`` / ``AsyncClient``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from . import DropInName, Vendor
from ._wire import JSONBodyMeter, SSEMeter, call_info, event_data, provider_usage, request_json, run_length

PROVIDER = "cohere"
_OPERATIONS = {"chat": "chat", "rerank": "rerank", "embed": "embed", "classify": "classify", "tokenize": "tokenize"}


def _billed(meter: Meter, billed: Any, tokens: Any = None) -> None:
    if isinstance(billed, dict):
        for key in ("search_units", "input_tokens", "output_tokens", "classifications", "images"):
            value = billed.get(key)
            if isinstance(value, (int, float)):
                meter.units[key if key == "search_units" else f"billed_{key}"] = float(value)
    source = tokens if isinstance(tokens, dict) else billed if isinstance(billed, dict) else None
    if source is None:
        return
    provider_usage(meter, source)


class ChatV2StreamMeter(SSEMeter):
    """One token per ``content-delta``, ``tool-plan-delta`` or ``tool-call-delta`` event."""

    __slots__ = ()
    malformed_fails = False  # the SDK logs a warning and skips the event: the caller sees no error
    counts_blocks = True

    def count_block(self, buffer: bytes, start: int, end: int) -> bool:
        # A run of text deltas: every event starts with the first one's bytes up to its last
        # "content-delta" (its type, after the event's name). ``on_event`` tests substrings only:
        # each counts one token, and none is a tool's.
        at = buffer.rfind(b"content-delta", start, buffer.find(b"\n\n", start, end))
        if at < 0:
            return False
        events = run_length(buffer, start, end, buffer[start : at + 13])
        if not events:
            return False
        if self.output_source == "estimated":
            self.tokens_out += events
        return True

    def on_event(self, event: bytes) -> None:
        if b"content-delta" in event or b"tool-call-delta" in event or b"tool-plan-delta" in event:
            # a tool plan is what the model writes before its tool calls
            self.tool_calls = self.tool_calls or b"content-delta" not in event
            if self.output_source == "estimated":
                self.tokens_out += 1
        elif b"tool-call-start" in event:
            self.tool_calls = True
        elif b"message-end" in event:
            data = event_data(event)
            delta = data.get("delta") if isinstance(data, dict) else None
            if isinstance(delta, dict):
                if delta.get("finish_reason"):
                    self.finish_reason = str(delta["finish_reason"])
                usage = delta.get("usage")
                if isinstance(usage, dict):
                    _billed(self, usage.get("billed_units"), usage.get("tokens"))


class ChatV1StreamMeter(Meter):
    """v1 chat streams newline-delimited JSON objects."""

    __slots__ = ("_buffer",)

    streamed = True

    def __init__(self) -> None:
        super().__init__()
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        *lines, self._buffer = buffer.split(b"\n")
        for line in lines:
            if b'"text-generation"' in line or b'"tool-calls-chunk"' in line:
                self.tokens_out += 1 if self.output_source == "estimated" else 0
                self.tool_calls = self.tool_calls or b'"tool-calls-chunk"' in line
            elif b'"stream-end"' in line:
                self._end(line)

    def close(self) -> None:
        rest, self._buffer = self._buffer.strip(), b""
        if b'"stream-end"' in rest:
            self._end(rest)

    def _end(self, line: bytes) -> None:
        try:
            data = json.loads(line)
        except ValueError:  # the SDK skips a line it cannot parse: the caller sees no error
            return
        if not isinstance(data, dict):
            return
        if data.get("finish_reason"):
            self.finish_reason = str(data["finish_reason"])
        response = data.get("response")
        meta = response.get("meta") if isinstance(response, dict) else None
        if isinstance(meta, dict):
            _billed(self, meta.get("billed_units"), meta.get("tokens"))


class CohereBodyMeter(JSONBodyMeter):
    __slots__ = ()

    def on_body(self, body: dict[str, Any]) -> None:
        if body.get("finish_reason"):
            self.finish_reason = str(body["finish_reason"])
        message = body.get("message")
        if body.get("tool_calls") or (isinstance(message, dict) and message.get("tool_calls")):  # v1, v2
            self.tool_calls = True
        usage = body.get("usage")
        if isinstance(usage, dict):  # v2 chat
            _billed(self, usage.get("billed_units"), usage.get("tokens"))
        meta = body.get("meta")
        if isinstance(meta, dict):  # rerank, embed, v1 chat
            _billed(self, meta.get("billed_units"), meta.get("tokens"))


class CohereProfile:
    provider = PROVIDER

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        path = urlsplit(url).path.rstrip("/")
        data = request_json(body)
        name = path.rsplit("/", 1)[-1]
        operation = _OPERATIONS.get(name, name or path)
        if operation == "chat" and data.get("stream"):
            operation = "chat_stream"
        info = call_info(self.provider, operation, data, "max_tokens")
        info.extra["api"] = "v1" if "/v1/" in path else "v2"
        return info

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        if status_code >= 400:
            return Meter()
        if info.operation == "chat_stream":
            return ChatV1StreamMeter() if info.extra.get("api") == "v1" else ChatV2StreamMeter()
        return CohereBodyMeter()


# ------------------------------------------------------------------ drop-ins

_HTTP: dict[str, Any] = {
    "http_path": ("_client_wrapper", "httpx_client", "httpx_client"),
    "http_arg": "httpx_client",
    "options": ("finish_policy",),
}
DROPINS = (
    DropInName("AsyncClientV2", "``cohere.AsyncClientV2`` with a scoped HTTP layer.", **_HTTP),
    DropInName("ClientV2", "``cohere.ClientV2`` with a scoped HTTP layer.", **_HTTP),
    DropInName("AsyncClient", "``cohere.AsyncClient`` (v1 API) with a scoped HTTP layer.", **_HTTP),
    DropInName("Client", "``cohere.Client`` (v1 API) with a scoped HTTP layer.", **_HTTP),
)


VENDOR = Vendor(
    provider=PROVIDER,
    profile=CohereProfile,
    sdk="cohere",
    generative=frozenset({"chat", "chat_stream"}),
    gen_ai_operations={"chat": "chat", "chat_stream": "chat", "embed": "embeddings", "rerank": "rerank"},
    shim="scoped_clients.cohere",
    dropins=DROPINS,
)
