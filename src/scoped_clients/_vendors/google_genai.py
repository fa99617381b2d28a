"""Google Gemini (``google-genai``): everything scoped_clients knows about it.

Calls are ``POST {base}/{version}/models/{model}:{method}`` (also ``tunedModels/`` and
Vertex's ``projects/.../publishers/google/models/``): ``generateContent`` and
``streamGenerateContent`` (server-sent events, ``?alt=sse``), ``countTokens``,
``embedContent`` / ``batchEmbedContents``.  Usage is in ``usageMetadata``
(``promptTokenCount``, ``candidatesTokenCount``); in a stream the output count arrives
with the finish reason, in the last chunk.  Here: how a call is named, its meters, its
``always_stream`` plan and assembler, and the drop-in name ``Client``.

The drop-in (see ``scope_genai``) builds the vendor's client and scopes both HTTP clients
its API client holds: the sync one and the async one ``client.aio`` uses.  google-genai
sends async requests through aiohttp whenever aiohttp imports, unless it was given an
async httpx client or transport: the drop-in turns it to its own (scoped) async client
instead, and refuses a caller's ``aiohttp_client``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import sniffio

from .._calls import CallInfo, Meter
from .._exceptions import HTTP2_UNSUPPORTED, UnsupportedError
from . import DropInName, Vendor
from ._assemble import Assembler, StreamPlan, final, fresh
from ._wire import (
    JSONBodyMeter,
    SSEMeter,
    as_int,
    event_data,
    has_text,
    json_content_type,
    request_json,
    run_length,
    value_at,
)

PROVIDER = "gcp.gemini"  # OpenTelemetry's gen_ai.provider.name for the Gemini API (as mistral_ai for Mistral)

_PATH = re.compile(r"/(?:models|tunedModels)/([^/:]+):(\w+)$")
#: the streamed method is the same operation as the non-streamed one (one savings history)
_STREAMED = {"streamGenerateContent": "generateContent"}


def _call(path: str) -> tuple[str, str | None, bool]:
    """(operation, model, streamed) of a request path: the one place Gemini's endpoints are matched."""
    match = _PATH.search(path.rstrip("/"))
    if match is None:
        return path.rsplit("/", 1)[-1] or path, None, False
    model, method = match.groups()
    return _STREAMED.get(method, method), model, method in _STREAMED


def _shape(body: dict[str, Any]) -> str | None:
    """What the request asks for: ``text`` without tools (or with calling off), ``tool_call`` when forced."""
    if not body:
        return None
    if not body.get("tools"):
        return "text"
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = str(config.get("mode", "")).upper() if isinstance(config, dict) else ""
    return {"NONE": "text", "ANY": "tool_call"}.get(mode)


def _usage(meter: Meter, usage: Any) -> None:
    """``usageMetadata``: the prompt's count always, the output's once the service reports it."""
    if not isinstance(usage, dict):
        return
    prompt = as_int(usage.get("promptTokenCount"))
    if prompt is not None:
        meter.tokens_in, meter.input_source = prompt, "provider"
    out = as_int(usage.get("candidatesTokenCount"))
    if out is not None:  # thinking tokens are generated and billed as output too
        meter.tokens_out, meter.output_source = out + (as_int(usage.get("thoughtsTokenCount")) or 0), "provider"


def _candidates(meter: Meter, data: dict[str, Any]) -> None:
    for candidate in data.get("candidates") or []:
        if not isinstance(candidate, dict):
            continue
        if candidate.get("finishReason"):
            meter.finish_reason = str(candidate["finishReason"])
        parts = (candidate.get("content") or {}).get("parts") or []
        if any(isinstance(p, dict) and "functionCall" in p for p in parts):
            meter.tool_calls = True


class GenerateStreamMeter(SSEMeter):
    """``streamGenerateContent`` chunks: one token per chunk with generated text or a function call.

    Every chunk carries ``usageMetadata`` (the prompt's count): only the first chunk and those
    with a finish reason or an output count are parsed.
    """

    __slots__ = ("_seen",)

    counts_blocks = True

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def count_block(self, buffer: bytes, start: int, end: int) -> bool:
        # A run of text chunks after the first: every event starts with the first one's bytes up to
        # its text (the same candidate, the same parts before it), holds that "text" key alone,
        # non-empty, and no finish reason or output count (what ``on_event`` would parse).
        if not self._seen:
            return False
        first = buffer.find(b"\n\n", start, end)
        text = value_at(buffer[start:first], b'"text"')
        if text < 0 or buffer[start + text] != 34:  # '"'
            return False
        head = buffer[start : start + text + 1]
        events = run_length(buffer, start, end, head)
        if (
            not events
            or buffer.count(b'"text"', start, end) != events
            or buffer.find(head + b'"', start, end) >= 0  # an empty text
            or buffer.find(b'"finishReason"', start, end) >= 0
            or buffer.find(b'"candidatesTokenCount"', start, end) >= 0
        ):
            return False
        self.tool_calls = self.tool_calls or buffer.find(b'"functionCall"', start, end) >= 0
        if self.output_source == "estimated":
            self.tokens_out += events
        return True

    def on_event(self, event: bytes) -> None:
        tool = b'"functionCall"' in event
        self.tool_calls = self.tool_calls or tool
        if self.output_source == "estimated" and (tool or has_text(event, b'"text"')):
            self.tokens_out += 1
        if self._seen and b'"finishReason"' not in event and b'"candidatesTokenCount"' not in event:
            return
        self._seen = True
        data = event_data(event)
        if isinstance(data, dict):
            _candidates(self, data)
            _usage(self, data.get("usageMetadata"))


class GenerateBodyMeter(JSONBodyMeter):
    __slots__ = ()

    def on_body(self, body: dict[str, Any]) -> None:
        _candidates(self, body)
        _usage(self, body.get("usageMetadata"))


class GeminiProfile:
    provider = PROVIDER

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        operation, model, streamed = _call(urlsplit(url).path)
        data = request_json(body)
        config = data.get("generationConfig")
        config = config if isinstance(config, dict) else {}
        bound = as_int(config.get("maxOutputTokens")) if operation == "generateContent" else None
        extra: dict[str, object] = {"shape": _shape(data)}
        count = as_int(config.get("candidateCount"))
        if count is not None and count > 1:  # the bound is per candidate, one finish reason is not the end
            extra["choices"] = count
        return CallInfo(
            provider=self.provider, operation=operation, model=model, max_tokens=bound, streaming=streamed, extra=extra
        )

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        if status_code >= 400 or info.operation != "generateContent":
            return Meter()
        if content_type.startswith("text/event-stream"):
            return GenerateStreamMeter()
        return GenerateBodyMeter(strict=json_content_type(content_type))


# ------------------------------------------------------------- always_stream


def plan_stream(request: Any) -> StreamPlan | None:
    """A ``generateContent`` request, sent to ``streamGenerateContent?alt=sse`` (the body is the same)."""
    url = request.url
    operation, _, streamed = _call(url.path)
    if operation != "generateContent" or streamed:
        return None
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        content = request.content
    except Exception:  # a streamed upload: not something we can resend
        return None
    path = url.path[: -len("generateContent")] + "streamGenerateContent"
    streamed_url = url.copy_with(path=path).copy_merge_params({"alt": "sse"})
    headers = [(k, b"identity" if k.lower() == b"accept-encoding" else v) for k, v in request.headers.raw]
    sent = type(request)(request.method, streamed_url, headers=headers, content=content, extensions=request.extensions)
    return StreamPlan(sent, GenerateAssembler())


#: google.rpc status names and the HTTP status the service gives them (an error event carries both)
_ERROR_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class GenerateAssembler(Assembler):
    """``streamGenerateContent`` chunks -> the one ``GenerateContentResponse`` ``generateContent`` returns.

    Each chunk is a response of its own: candidates' text parts are joined (a thought's
    apart from the answer's), other parts (function calls, inline data) kept in order; the
    last value of every other field wins (finish reason, usage, safety ratings).  A stream
    ends complete with a finish reason, or with a prompt blocked by ``promptFeedback``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._response: dict[str, Any] = {}
        self._candidates: dict[int, dict[str, Any]] = {}

    def on_data(self, data: dict[str, Any]) -> None:
        error = data.get("error")
        if isinstance(error, dict):
            code = as_int(error.get("code"))
            self.error = (code if code and code >= 400 else _ERROR_STATUS.get(str(error.get("status")), 500), data)
            return
        for key, value in data.items():
            if key != "candidates":
                self._response[key] = value
        feedback = data.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.complete = True
        for candidate in data.get("candidates") or []:
            self._candidate(candidate)

    def _candidate(self, delta: dict[str, Any]) -> None:
        index = delta.get("index", 0)
        candidate = self._candidates.setdefault(index if isinstance(index, int) else 0, {})
        for key, value in delta.items():
            if key == "content" and isinstance(value, dict):
                content = candidate.setdefault("content", {})
                for part in value.get("parts") or []:
                    _add_part(content.setdefault("parts", []), part)
                content.update({k: v for k, v in value.items() if k != "parts"})
            else:
                candidate[key] = value
        if delta.get("finishReason"):
            self.complete = True

    def body(self) -> Any:
        candidates = [final(self._candidates[i]) for i in sorted(self._candidates)]
        return {**({"candidates": candidates} if candidates else {}), **self._response}


def _add_part(parts: list[Any], part: Any) -> None:
    """A streamed part: text continues the previous text part of the same kind (thought or answer)."""
    if not isinstance(part, dict):
        return
    last = parts[-1] if parts else None
    if (
        isinstance(part.get("text"), str)
        and isinstance(last, dict)
        and "text" in last
        and bool(part.get("thought")) == bool(last.get("thought"))
    ):
        last["text"].parts.append(part["text"])
        last.update({k: v for k, v in part.items() if k not in ("text", "thought")})
        return
    if part == {"text": ""}:  # the empty part the service sends with the finish reason
        return
    parts.append(fresh(part) if "text" in part else dict(part))


# ------------------------------------------------------------------ drop-ins

AIOHTTP_UNSUPPORTED = (
    "scoped_clients.google_genai.Client cannot scope HttpOptions(aiohttp_client=...): google-genai sends those "
    "requests through aiohttp, which no scope can abort. Leave it out (the drop-in sends client.aio's requests "
    "through google-genai's own httpx2 client, scoped), or pass HttpOptions(httpx_async_client=httpx2.AsyncClient())"
)


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = kwargs.get("http_options")
    if options is None:
        return {}
    if isinstance(options, dict):
        return options
    names = ("httpx_async_client", "aiohttp_client", "client_args", "async_client_args")
    return {name: getattr(options, name, None) for name in names}


def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse what a scope cannot abort: a caller's aiohttp session (when it would be used), HTTP/2."""
    options = _options(kwargs)
    async_args = options.get("async_client_args") or {}
    # with an async httpx client or transport google-genai does not use the aiohttp session
    uses_aiohttp = options.get("httpx_async_client") is None and async_args.get("transport") is None
    if options.get("aiohttp_client") is not None and uses_aiohttp:
        raise UnsupportedError(AIOHTTP_UNSUPPORTED)
    if (options.get("client_args") or {}).get("http2") or async_args.get("http2"):
        raise UnsupportedError(HTTP2_UNSUPPORTED)


def scope_genai(client: Any, scoped: Callable[[Any, bool], Any]) -> None:
    """Scope the HTTP clients of a ``google.genai.Client`` (``scoped(http, built_by_sdk)`` scopes one).

    * sync: ``_api_client._httpx_client``, the SDK's own (scoped in place) or the caller's
      ``httpx_client`` (left as given: the SDK gets a scoped view of it).
    * async: ``_api_client._async_httpx_client`` likewise.  The SDK's own keeps one inner client
      per asyncio loop (connections are bound to their loop): each is scoped as it is built
      (``_scope_per_loop``).  With aiohttp importable google-genai would send through aiohttp
      instead: the options its API client reads then name the scoped transport, as a caller's
      ``async_client_args={"transport": ...}`` would, so it sends through the scoped client.
    """
    api: Any = getattr(client, "_api_client", None)
    options = getattr(api, "_http_options", None)
    if options is None:
        return
    sync = getattr(api, "_httpx_client", None)
    if sync is not None:
        api._httpx_client = scoped(sync, options.httpx_client is None)
    http = getattr(api, "_async_httpx_client", None)
    if http is None:  # google-auth's aiohttp session (Vertex with a client certificate): ours instead
        http = _sdk_async_client(api, sync)
        if http is None:
            return
        built = True
    else:
        built = options.httpx_async_client is None
    http = scoped(http, built)
    if getattr(http, "_per_loop", False):
        if built:
            _scope_per_loop(http, scoped)
        else:  # a caller's per-loop client: its inner clients are its own, the view uses its outer pool
            http._per_loop = False
    elif hasattr(http, "_client_for_running_loop") and not hasattr(http, "_per_loop"):
        raise UnsupportedError(
            f"google-genai's async client ({type(http).__qualname__}) changed how it pools connections; "
            "scoped_clients cannot scope it: pass HttpOptions(httpx_async_client=httpx2.AsyncClient())"
        )
    api._async_httpx_client = http
    async_args = options.async_client_args or {}
    if options.httpx_async_client is None and async_args.get("transport") is None:
        # google-genai reads this at every async request: a transport means "not aiohttp"
        options.async_client_args = {**async_args, "transport": http._transport}


def _scope_per_loop(http: Any, scoped: Callable[[Any, bool], Any]) -> None:
    """google-genai's own async client sends through one inner client per asyncio loop, built on
    first use: each is scoped as it is built.  Outside asyncio (Trio), where google-genai's lookup
    of the running loop fails, requests go through the outer client's own pool, scoped."""
    inner_cls = http._inner_client_cls
    lookup = http._client_for_running_loop
    outer = _OuterPool(http)

    def inner(**kwargs: Any) -> Any:
        return scoped(inner_cls(**kwargs), True)

    def for_running_loop() -> Any:
        return lookup() if sniffio.current_async_library() == "asyncio" else outer

    http._inner_client_cls = inner
    http._client_for_running_loop = for_running_loop


class _OuterPool:
    """Sends through an httpx(2) client's own pool, past google-genai's per-loop ``send``."""

    __slots__ = ("_client", "_send")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._send = next(
            getattr(c, "send")  # noqa: B009  (the HTTP library's own AsyncClient.send)
            for c in type(client).__mro__
            if c.__name__ == "AsyncClient" and c.__module__.split(".", 1)[0] in ("httpx", "httpx2")
        )

    async def send(self, request: Any, **kwargs: Any) -> Any:
        return await self._send(self._client, request, **kwargs)


def _sdk_async_client(api: Any, sync: Any) -> Any:
    """The async client google-genai builds when it does not use aiohttp (its class, its arguments)."""
    import importlib

    module = importlib.import_module("google.genai._api_client")
    name = "AsyncHttpx2Client" if type(sync).__name__.endswith("Httpx2Client") else "AsyncHttpxClient"
    cls = getattr(module, name, None)
    if cls is None:
        return None
    return cls(**getattr(api, "_async_httpx_client_args", {}))


DROPINS = (
    DropInName(
        "Client",
        "``google.genai.Client`` with scoped HTTP clients (sync, and ``client.aio`` on httpx2 or httpx, never "
        "aiohttp); ``cancel()`` from another thread unblocks its sync reads.",
        http_path=("_api_client", "_httpx_client"),
        check=check,
        scope=scope_genai,
    ),
)


VENDOR = Vendor(
    provider=PROVIDER,
    profile=GeminiProfile,
    sdk="google.genai",
    generative=frozenset({"generateContent"}),
    gen_ai_operations={
        "generateContent": "generate_content",
        "embedContent": "embeddings",
        "batchEmbedContents": "embeddings",
    },
    plan_stream=plan_stream,
    shim="scoped_clients.google_genai",
    dropins=DROPINS,
)
