"""OpenAI: chat completions (chunks) and the Responses API (typed events)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from ._wire import JSONBodyMeter, SSEMeter, call_info, event_data, provider_usage, request_json


class ChatStreamMeter(SSEMeter):
    """``chat.completion.chunk`` events: one token per non-empty content delta."""

    __slots__ = ()

    def on_event(self, event: bytes) -> None:
        # Searched from the end, where a chunk keeps its delta, finish reason and usage;
        # a quote inside a JSON string is escaped, so these keys cannot be forged by content.
        content = event.rfind(b'"content":"')
        if content >= 0 and event[content + 11 : content + 12] != b'"' and self.output_source == "estimated":
            self.tokens_out += 1
        finish = event.rfind(b'"finish_reason":')
        if finish >= 0:
            parse = event[finish + 16 : finish + 17] == b'"' or event.find(b'"usage":{', finish) >= 0
        else:  # the usage-only chunk has no choices
            parse = b'"usage":{' in event
        if parse:
            data = event_data(event)
            if not isinstance(data, dict):
                return
            for choice in data.get("choices") or []:
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])
            usage = data.get("usage")
            if isinstance(usage, dict):
                _chat_usage(self, usage)


class ChatBodyMeter(JSONBodyMeter):
    __slots__ = ()

    def on_body(self, body: dict[str, Any]) -> None:
        for choice in body.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        if isinstance(body.get("usage"), dict):
            _chat_usage(self, body["usage"])


def _chat_usage(meter: Meter, usage: dict[str, Any]) -> None:
    provider_usage(meter, usage, "completion_tokens", "prompt_tokens")


class ResponsesStreamMeter(SSEMeter):
    """Responses API events: one token per ``response.output_text.delta``."""

    __slots__ = ()

    def on_event(self, event: bytes) -> None:
        if b"response.output_text.delta" in event:
            self.tokens_out += 1
        elif b"response.completed" in event or b"response.incomplete" in event or b"response.failed" in event:
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
        if info.operation == "chat.completions":
            return ChatStreamMeter() if streamed else ChatBodyMeter()
        if info.operation == "responses":
            return ResponsesStreamMeter() if streamed else ResponsesBodyMeter()
        return Meter()
