"""Anthropic messages: ``message_start`` / ``content_block_delta`` / ``message_delta`` events."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from ._wire import (
    JSONBodyMeter,
    SSEMeter,
    call_info,
    event_data,
    json_content_type,
    provider_usage,
    request_json,
)


class MessagesStreamMeter(SSEMeter):
    """One token per ``content_block_delta`` of text, tool input (``input_json_delta``) or thinking."""

    __slots__ = ()

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
    provider = "anthropic"

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        path = urlsplit(url).path.rstrip("/")
        data = request_json(body)
        if path.endswith("/messages"):
            return call_info(self.provider, "messages", data, "max_tokens")
        operation = path.rsplit("/v1/", 1)[-1].replace("/", ".") or path
        return call_info(self.provider, operation, data)

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        if status_code >= 400 or info.operation != "messages":
            return Meter()
        if content_type.startswith("text/event-stream"):
            return MessagesStreamMeter()
        return MessagesBodyMeter(strict=json_content_type(content_type))
