"""OpenAI (and OpenAI-compatible servers): everything scoped_clients knows about them.

Chat completions (``chat.completion.chunk`` events) and the Responses API (typed
events): how a call is named, its meters, its ``always_stream`` plan and
assemblers with the error table, and the drop-in names ``OpenAI`` /
``AsyncOpenAI`` and the SDK's own HTTP client classes (for ``http_client()``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._calls import CallInfo, Meter
from . import DropInName, Vendor
from ._assemble import Assembler, StreamPlan, final, merge, stream_plan
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
    run_length,
    value_at,
)

PROVIDER = "openai"


def _operation(path: str) -> str:
    """The operation a request path is: the one place OpenAI's endpoints are matched."""
    path = path.rstrip("/")
    if path.endswith("/chat/completions"):
        return "chat.completions"
    if path.endswith("/responses"):
        return "responses"
    return path.rsplit("/v1/", 1)[-1].replace("/", ".") or path


def plain_deltas(buffer: bytes, start: int, end: int) -> int:
    """How many events ``buffer[start:end]`` holds if they are a run of plain chat text deltas, else 0.

    A run of plain text deltas: every event starts with the first one's bytes up to its content
    (the same id, model, choice index...), ends with "}", has that content key alone, non-empty,
    no finish reason and no usage. Each then counts one token, as ``on_event`` would count it
    (its non-empty content decides before a tool-call delta or a refusal is looked at); anything
    else (a role or tool-call delta, a finish, the usage, [DONE], a spaced server's JSON) fails
    one of the counts below and goes event by event.
    """
    first = buffer.find(b"\n\n", start, end)
    key = buffer.find(b'"content":"', start, first)
    if key < 0:
        return 0
    head = buffer[start : key + 11]
    events = run_length(buffer, start, end, head)
    if (
        not events
        or buffer.count(b'"content"', start, end) != events
        or buffer.find(head + b'"', start, end) >= 0  # an empty content
        or buffer.count(b'"finish_reason"', start, end) != buffer.count(b'"finish_reason":null', start, end)
    ):
        return 0
    if buffer.find(b'"usage"', start, end) >= 0 and buffer.count(b'"usage"', start, end) != buffer.count(
        b'"usage":null', start, end
    ):
        return 0
    return events


class ChatStreamMeter(SSEMeter):
    """``chat.completion.chunk`` events: one token per chunk that carries generated output.

    Output is a non-empty ``content`` (or ``refusal``, or the ``reasoning_content`` some
    OpenAI-compatible servers stream) or a non-empty ``tool_calls`` delta (a call's name,
    then its arguments piece by piece).  Keys are found whatever the server's whitespace.
    """

    __slots__ = ()

    counts_blocks = True

    def count_block(self, buffer: bytes, start: int, end: int) -> bool:
        events = plain_deltas(buffer, start, end)
        if not events:
            return False
        if self.output_source == "estimated":
            self.tokens_out += events
        return True

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

    counts_blocks = True

    def count_block(self, buffer: bytes, start: int, end: int) -> bool:
        # A run of output deltas of one name (OpenAI's text deltas: their data differ from the
        # sequence number on): every event's first line is the first one's, "event: <a delta's
        # name>", and ``on_event`` classifies a named event by that line alone.
        if not buffer.startswith(b"event:", start):
            return False
        # (a first event of that line alone ends with no "}": ``run_length`` turns it down)
        line = buffer.find(b"\n", start, end)
        kind = buffer[start + 6 : line].strip()
        if kind not in _RESPONSES_OUTPUT:
            return False
        events = run_length(buffer, start, end, buffer[start : line + 1])
        if not events:
            return False
        self.tokens_out += events
        self.tool_calls = self.tool_calls or kind in _RESPONSES_TOOL
        return True

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
    provider = PROVIDER

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        operation = _operation(urlsplit(url).path)
        data = request_json(body)
        if operation == "chat.completions":
            return call_info(self.provider, operation, data, "max_completion_tokens", "max_tokens")
        if operation == "responses":
            return call_info(self.provider, operation, data, "max_output_tokens")
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


# ------------------------------------------------------------- always_stream


def plan_stream(request: Any) -> StreamPlan | None:
    """A non-streamed chat completion or Responses request, in its streamed form."""
    operation = _operation(request.url.path)
    if operation == "chat.completions":
        return stream_plan(request, ChatAssembler(), _include_usage)
    if operation == "responses":
        return stream_plan(request, ResponsesAssembler())
    return None


def _include_usage(body: dict[str, Any]) -> None:
    # Without it a chat stream carries no usage, which the non-streamed body always has.
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}


#: how the OpenAI error ``type`` / ``code`` of a mid-stream error maps to the HTTP status
#: the same failure gets without streaming (OpenAI and llama.cpp names; default 500)
_OPENAI_STATUS = {
    "invalid_request_error": 400,
    "exceed_context_size_error": 400,
    "context_length_exceeded": 400,
    "invalid_prompt": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "tokens": 429,
    "requests": 429,
    "not_supported_error": 501,
    "unavailable_error": 503,
    "server_is_overloaded": 503,
    "service_unavailable": 503,
}


def openai_error(error: Any) -> tuple[int, Any]:
    """The HTTP status and body of the non-streamed error matching a mid-stream OpenAI error."""
    if not isinstance(error, dict):
        error = {"message": str(error), "type": "server_error", "param": None, "code": None}
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        status = code  # llama.cpp puts the HTTP status there
    else:
        status = _OPENAI_STATUS.get(str(code), _OPENAI_STATUS.get(str(error.get("type")), 500))
    return status, {"error": error}


class ChatAssembler(Assembler):
    """``chat.completion.chunk`` events -> one ``chat.completion``."""

    def __init__(self) -> None:
        super().__init__()
        self._top: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: Any = None

    def on_done(self) -> None:
        self.complete = True

    def on_data(self, data: dict[str, Any]) -> None:
        if data.get("error"):
            self.error = openai_error(data["error"])
            return
        for key, value in data.items():
            if key == "usage":
                if value is not None:
                    self._usage = value
            elif key not in ("choices", "object", "obfuscation") and (value is not None or key not in self._top):
                self._top[key] = value
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                self._choice(choice)

    def _choice(self, chunk: dict[str, Any]) -> None:
        index = chunk.get("index", 0)
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = {"index": index, "message": {}, "finish_reason": None, "logprobs": None}
        for key, value in chunk.items():
            if key == "delta":
                if isinstance(value, dict):
                    merge(state["message"], value)
            elif key == "logprobs":
                if isinstance(value, dict):
                    if state["logprobs"] is None:
                        state["logprobs"] = {}
                    merge(state["logprobs"], value)
            elif key != "index" and (value is not None or key not in state):
                state[key] = value

    def body(self) -> Any:
        choices = []
        for index in sorted(self._choices):
            choice = final(self._choices[index])
            message = choice["message"]
            message.setdefault("role", "assistant")
            message.setdefault("content", None)
            if "refusal" in message:
                # OpenAI's own deltas carry "refusal" and never "annotations", while its
                # non-streamed messages always carry "annotations": [] (other servers send neither).
                message.setdefault("annotations", [])
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    call.pop("index", None)  # the stream's merge key: no part of a non-streamed tool call
            choices.append(choice)
        return {**self._top, "object": "chat.completion", "choices": choices, "usage": self._usage}

    @property
    def _finished(self) -> bool:
        return bool(self._choices) and all(c.get("finish_reason") for c in self._choices.values())

    def close(self) -> None:
        super().close()
        # A server that ends the stream without "[DONE]" after every choice finished (and, when
        # asked for, the usage arrived) still gave the whole answer.
        if not self.complete and self._finished and self._usage is not None:
            self.complete = True


class ResponsesAssembler(Assembler):
    """Responses API events: the terminal event carries the whole ``Response``."""

    def __init__(self) -> None:
        super().__init__()
        self._response: Any = None

    def on_data(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind in ("response.completed", "response.incomplete"):
            self._response = data.get("response")
            self.complete = True
        elif kind == "response.failed":
            response = data.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            error = dict(error) if isinstance(error, dict) else {"message": "the response failed", "code": None}
            error.setdefault("type", "server_error")
            error.setdefault("param", None)
            self.error = openai_error(error)
        elif kind == "error":
            error = {k: v for k, v in data.items() if k not in ("type", "sequence_number")}
            if isinstance(error.get("error"), dict):  # some servers nest it
                error = error["error"]
            self.error = openai_error(error)

    def body(self) -> Any:
        return self._response


# ------------------------------------------------------------------ drop-ins

_HTTP: dict[str, Any] = {"http_path": ("_client",), "http_arg": "http_client"}
DROPINS = (
    DropInName("AsyncOpenAI", "``openai.AsyncOpenAI`` with a scoped HTTP layer.", **_HTTP),
    DropInName(
        "OpenAI",
        "``openai.OpenAI`` with a scoped HTTP layer; ``cancel()`` from another thread unblocks its reads.",
        **_HTTP,
    ),
)


VENDOR = Vendor(
    provider=PROVIDER,
    profile=OpenAIProfile,
    sdk="openai",
    generative=frozenset({"chat.completions", "responses"}),
    gen_ai_operations={
        "chat.completions": "chat",
        "responses": "chat",
        "completions": "text_completion",
        "embeddings": "embeddings",
    },
    plan_stream=plan_stream,
    shim="scoped_clients.openai",
    dropins=DROPINS,
    # openai 3.x: httpx2; openai 2.x: httpx
    http_clients={
        "async": ("DefaultAsyncHttpx2Client", "DefaultAsyncHttpxClient"),
        "sync": ("DefaultHttpx2Client", "DefaultHttpxClient"),
    },
)
