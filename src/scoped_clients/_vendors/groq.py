"""Groq: everything scoped_clients knows about it.

Groq serves OpenAI's chat completions under ``/openai/v1`` with its own additions:
``x_groq`` (the request id in a stream's first and last chunk, and **the usage in
the last one**, ``x_groq.usage``, with Groq's timing fields), ``reasoning`` deltas,
and no ``stream_options`` parameter in the SDK.  Non-streamed answers carry OpenAI's
``usage``.  How a call is named, its meters, its ``always_stream`` plan and
assembler (OpenAI's, with the usage taken out of ``x_groq``), and the drop-in names
``Groq`` / ``AsyncGroq``.

The groq SDK (Stainless, on httpx 0.28) retries any ``Exception`` raised while
sending (``DEFAULT_MAX_RETRIES = 2``); ``ScopeCancelled`` is a ``BaseException``
and so is never retried nor wrapped in ``APIConnectionError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from . import DropInName, Vendor
from ._assemble import StreamPlan, stream_plan
from ._wire import call_info, event_data, has_text, json_content_type, request_json, value_at
from .openai import ChatAssembler, ChatBodyMeter, ChatStreamMeter, _chat_usage

PROVIDER = "groq"
#: where Groq serves chat completions (``https://api.groq.com`` + this)
_CHAT_PATH = "/openai/v1/chat/completions"


def _operation(path: str) -> str:
    """The operation a request path is: the one place Groq's endpoints are matched."""
    path = path.rstrip("/")
    if path.endswith("/chat/completions"):
        return "chat.completions"
    return path.rsplit("/v1/", 1)[-1].replace("/", ".") or path


class GroqChatStreamMeter(ChatStreamMeter):
    """OpenAI's chunks, one token per chunk with output (Groq's ``reasoning`` deltas too); the
    usage is in the last chunk's ``x_groq.usage`` (or OpenAI's top-level ``usage``).

    OpenAI's ``count_block`` holds here too: a run it counts has a non-empty content in every
    event (which decides before ``reasoning`` is looked at) and no usage object anywhere, so no
    ``x_groq.usage`` either (test_meters feeds this meter OpenAI's runs)."""

    __slots__ = ()

    def on_event(self, event: bytes) -> None:
        if self.output_source == "estimated" and (
            has_text(event, b'"content"') or self._tool_delta(event) or has_text(event, b'"reasoning"')
        ):
            self.tokens_out += 1
        finish = value_at(event, b'"finish_reason"')
        if finish >= 0 and event[finish] == 34:  # a finish reason (a string, not null): Groq's last chunk
            parse = True
        else:  # a usage object anywhere (x_groq's, or a separate OpenAI-style usage chunk)
            usage = value_at(event, b'"usage"')
            parse = usage >= 0 and event[usage] == 123
        if not parse:
            return
        data = event_data(event)
        if not isinstance(data, dict):
            return
        for choice in data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        usage_data = _usage_of(data)
        if usage_data is not None:
            _chat_usage(self, usage_data)


def _usage_of(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A chunk's usage: OpenAI's top-level ``usage``, else Groq's ``x_groq.usage``."""
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        return usage
    x_groq = chunk.get("x_groq")
    usage = x_groq.get("usage") if isinstance(x_groq, dict) else None
    return usage if isinstance(usage, dict) else None


class GroqProfile:
    provider = PROVIDER

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        operation = _operation(urlsplit(url).path)
        data = request_json(body)
        if operation == "chat.completions":
            return call_info(self.provider, operation, data, "max_completion_tokens", "max_tokens")
        return call_info(self.provider, operation, data)

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        if status_code >= 400 or info.operation != "chat.completions":
            return Meter()
        if content_type.startswith("text/event-stream"):
            return GroqChatStreamMeter()
        return ChatBodyMeter(strict=json_content_type(content_type))


# ------------------------------------------------------------- always_stream


def plan_stream(request: Any) -> StreamPlan | None:
    """A non-streamed Groq chat completion in its streamed form.

    Only Groq's own path: the registry asks every vendor in turn (this module before
    ``openai``), and OpenAI's plan adds ``stream_options``, which the groq SDK does not
    have.  Groq sends the usage in every stream's last chunk without being asked.
    """
    if not request.url.path.rstrip("/").endswith(_CHAT_PATH):
        return None
    return stream_plan(request, GroqChatAssembler())


class GroqChatAssembler(ChatAssembler):
    """Groq's chunks -> Groq's non-streamed ``chat.completion``: OpenAI's assembly, with the
    usage (and ``usage_breakdown``) the last chunk carries in ``x_groq`` moved to the top level,
    where the non-streamed body has them; ``x_groq`` keeps the request id."""

    def on_data(self, data: dict[str, Any]) -> None:
        x_groq = data.get("x_groq")
        if isinstance(x_groq, dict):
            x_groq = dict(x_groq)
            usage = x_groq.pop("usage", None)
            breakdown = x_groq.pop("usage_breakdown", None)
            data = {**data, "x_groq": x_groq}
            if isinstance(usage, dict) and data.get("usage") is None:
                data["usage"] = usage
            if breakdown is not None:
                data["usage_breakdown"] = breakdown
        super().on_data(data)


# ------------------------------------------------------------------ drop-ins

_HTTP: dict[str, Any] = {"http_path": ("_client",), "http_arg": "http_client"}
DROPINS = (
    DropInName("AsyncGroq", "``groq.AsyncGroq`` with a scoped HTTP layer.", **_HTTP),
    DropInName(
        "Groq",
        "``groq.Groq`` with a scoped HTTP layer; ``cancel()`` from another thread unblocks its reads.",
        **_HTTP,
    ),
)


VENDOR = Vendor(
    provider=PROVIDER,
    profile=GroqProfile,
    sdk="groq",
    generative=frozenset({"chat.completions"}),
    gen_ai_operations={"chat.completions": "chat", "embeddings": "embeddings"},
    plan_stream=plan_stream,
    shim="scoped_clients.groq",
    dropins=DROPINS,
)
