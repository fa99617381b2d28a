"""OpenAI: chat completions (chunks) and the Responses API (typed events)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from ._wire import (
    JSONBodyMeter,
    SSEMeter,
    call_info,
    event_data,
    has_items,
    has_text,
    json_content_type,
    provider_usage,
    request_json,
    value_at,
)


class ChatStreamMeter(SSEMeter):
    """``chat.completion.chunk`` events: one token per chunk that carries generated output.

    Output is a non-empty ``content`` (or ``refusal``, or the ``reasoning_content`` some
    OpenAI-compatible servers stream) or a non-empty ``tool_calls`` delta (a call's name,
    then its arguments piece by piece).  Keys are found whatever the server's whitespace.
    """

    __slots__ = ()

    def on_event(self, event: bytes) -> None:
        if self.output_source == "estimated" and (
            has_text(event, b'"content"')
            or self._tool_delta(event)
            or has_text(event, b'"refusal"')
            or has_text(event, b'"reasoning_content"')
        ):
            self.tokens_out += 1
        finish = value_at(event, b'"finish_reason"')
        if finish >= 0 and event[finish] == 34:  # a finish reason (a string, not null)
            parse = True
        else:  # usage: in the last chunk (with or without choices), wherever the server puts the key
            usage = value_at(event, b'"usage"')
            parse = usage >= 0 and event[usage] == 123  # "{", not null
        if parse:
            data = event_data(event)
            if not isinstance(data, dict):
                return
            for choice in data.get("choices") or []:
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])
            usage_data = data.get("usage")
            if isinstance(usage_data, dict):
                _chat_usage(self, usage_data)

    def _tool_delta(self, event: bytes) -> bool:
        if has_items(event, b'"tool_calls"'):
            self.tool_calls = True
            return True
        return False


class ChatBodyMeter(JSONBodyMeter):
    __slots__ = ()

    def on_body(self, body: dict[str, Any]) -> None:
        for choice in body.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and message.get("tool_calls"):
                self.tool_calls = True
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        if isinstance(body.get("usage"), dict):
            _chat_usage(self, body["usage"])


def _chat_usage(meter: Meter, usage: dict[str, Any]) -> None:
    provider_usage(meter, usage, "completion_tokens", "prompt_tokens")


#: Responses events that carry generated output: one token each
_RESPONSES_OUTPUT = (
    b"response.output_text.delta",
    b"response.function_call_arguments.delta",
    b"response.custom_tool_call_input.delta",
    b"response.refusal.delta",
)
_RESPONSES_FINAL = (b"response.completed", b"response.incomplete", b"response.failed")
#: of those, the deltas of a tool call, and the output items that are tool calls
_RESPONSES_TOOL = (b"response.function_call_arguments.delta", b"response.custom_tool_call_input.delta")
_RESPONSES_TOOL_ITEMS = frozenset({"function_call", "custom_tool_call"})


class ResponsesStreamMeter(SSEMeter):
    """Responses API events: one token per output delta (text, refusal, a tool call's arguments)."""

    __slots__ = ()

    def on_event(self, event: bytes) -> None:
        if event.startswith(b"event:"):  # OpenAI names each event: classify by its name alone
            end = event.find(b"\n")
            kind = event[6:end].strip() if end > 0 else b""
            if kind in _RESPONSES_OUTPUT:
                self.tokens_out += 1
                self.tool_calls = self.tool_calls or kind in _RESPONSES_TOOL
            elif kind in _RESPONSES_FINAL:
                self._final(event)
            return
        # servers that send no event names: the type is in the data (a delta is tested
        # first, so that text quoting a final event's name cannot pass for one)
        if any(name in event for name in _RESPONSES_OUTPUT):
            self.tokens_out += 1
            self.tool_calls = self.tool_calls or any(name in event for name in _RESPONSES_TOOL)
        elif any(name in event for name in _RESPONSES_FINAL):
            self._final(event)

    def _final(self, event: bytes) -> None:
        data = event_data(event)
        if isinstance(data, dict) and isinstance(data.get("response"), dict):
            _responses_final(self, data["response"])


class ResponsesBodyMeter(JSONBodyMeter):
    __slots__ = ()

    def on_body(self, body: dict[str, Any]) -> None:
        _responses_final(self, body)


def _responses_final(meter: Meter, response: dict[str, Any]) -> None:
    status = response.get("status")
    if isinstance(status, str):
        meter.finish_reason = status
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") in _RESPONSES_TOOL_ITEMS:
            meter.tool_calls = True
    usage = response.get("usage")
    if isinstance(usage, dict):
        provider_usage(meter, usage)


class OpenAIProfile:
    provider = "openai"

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        path = urlsplit(url).path.rstrip("/")
        data = request_json(body)
        if path.endswith("/chat/completions"):
            return call_info(self.provider, "chat.completions", data, "max_completion_tokens", "max_tokens")
        if path.endswith("/responses"):
            return call_info(self.provider, "responses", data, "max_output_tokens")
        operation = path.rsplit("/v1/", 1)[-1].replace("/", ".") or path
        return call_info(self.provider, operation, data)

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        if status_code >= 400:
            return Meter()
        streamed = content_type.startswith("text/event-stream")
        strict = json_content_type(content_type)
        if info.operation == "chat.completions":
            return ChatStreamMeter() if streamed else ChatBodyMeter(strict=strict)
        if info.operation == "responses":
            return ResponsesStreamMeter() if streamed else ResponsesBodyMeter(strict=strict)
        return Meter()
