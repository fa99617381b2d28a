"""``always_stream``: send a non-streamed generation as a stream, hand the SDK the JSON it asked for.

Why: a server notices a client that left only when it writes to it or polls for
it.  llama.cpp's server polls a *non-streamed* client about once a second, and
while busy with another request not until that request ends (measured: 19-24 s
and 600+ tokens generated after the cancel); a *streamed* client is noticed at
its next token write.  So, when a client opts in, the scoped transport rewrites
a non-streamed OpenAI chat completion, OpenAI Responses or Anthropic messages
request into its streamed form, reads the stream through the usual meter
(tokens are counted live, a cancel aborts the read at the socket) and, once the
stream has ended, builds the response the non-streamed call would have had:

* the vendor's non-streamed object (``ChatCompletion``, ``Response``,
  ``Message``) as the JSON body, status 200;
* an error event in the stream: the status and error body of the equivalent
  HTTP error, so the SDK raises (and retries) as it would have;
* a stream that ends before its final event: the HTTP library's
  ``RemoteProtocolError``, like a non-streamed body cut short.

Everything else (other endpoints, requests that already stream, non-JSON
bodies, ``background`` Responses, error statuses before the stream starts, a
server that answers with JSON anyway) passes through untouched.
"""

from __future__ import annotations

import http
import importlib
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

__all__ = ["StreamPlan", "plan_stream"]

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
#: Anthropic's documented error types and their HTTP statuses
_ANTHROPIC_STATUS = {
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
#: response headers that described the stream, not the JSON body we hand over
_STREAM_HEADERS = frozenset({b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"})


# ------------------------------------------------------------------- request


class StreamPlan:
    """One request rewritten to stream, and the assembler that will rebuild its answer."""

    __slots__ = ("assembler", "request")

    def __init__(self, request: Any, assembler: _Assembler) -> None:
        self.request = request
        self.assembler = assembler

    def accepts(self, response: Any) -> bool:
        """A 2xx event stream: anything else (an error status, JSON anyway) goes to the SDK as it is."""
        content_type: str = response.headers.get("content-type", "")
        return 200 <= response.status_code < 300 and content_type.startswith("text/event-stream")

    def tap(self, response: Any, call: Any = None) -> None:
        """Feed the assembler from the raw body (under the scoped body, so it sees every chunk first)."""
        decoder = _decoder(response.headers.get("content-encoding", ""))
        tap_cls = _AsyncTap if hasattr(response.stream, "__aiter__") else _SyncTap
        response.stream = tap_cls(response.stream, self, call, decoder)

    async def read_async(self, response: Any) -> Any:
        """Read the (scoped, tapped) stream to its end; return the non-streamed response."""
        stream = response.stream
        try:
            async for _ in stream:
                pass
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        return self.build(response)

    def read_sync(self, response: Any) -> Any:
        stream = response.stream
        try:
            for _ in stream:
                pass
        finally:
            stream.close()
        return self.build(response)

    def build(self, response: Any) -> Any:
        status, body = self.assembler.result()
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _STREAM_HEADERS]
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
        if status != response.status_code:
            extensions["reason_phrase"] = _phrase(status)
        return type(response)(status, headers=headers, content=body, extensions=extensions)

    def protocol_error(self, message: str) -> Exception:
        """The HTTP library's own ``RemoteProtocolError``: what a non-streamed body cut short raises."""
        library = importlib.import_module(type(self.request).__module__.split(".", 1)[0])
        error: Exception = library.RemoteProtocolError(message, request=self.request)
        return error


def plan_stream(request: Any) -> StreamPlan | None:
    """The streamed form of a non-streamed generation request, or None to send it as it is."""
    if request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    if path.endswith("/chat/completions"):
        assembler: _Assembler = _ChatAssembler()
    elif path.endswith("/responses"):
        assembler = _ResponsesAssembler()
    elif path.endswith("/v1/messages"):
        assembler = _MessagesAssembler()
    else:
        return None
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        content = request.content
    except Exception:  # a streamed upload: not something we can rewrite
        return None
    if not isinstance(content, bytes) or content[:1] != b"{":
        return None
    try:
        body = json.loads(content)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("stream") or body.get("background"):
        # ``background`` Responses return at once (queued): streaming them would wait for the answer
        return None
    body["stream"] = True
    if isinstance(assembler, _ChatAssembler):
        # Without it a chat stream carries no usage, which the non-streamed body always has.
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return StreamPlan(_rewrite(request, _dumps(body)), assembler)


def _dumps(body: dict[str, Any]) -> bytes:
    try:  # the vendor SDKs' own serialisation (openai's openapi_dumps, httpx's json=)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate the caller escaped: keep it escaped
        return json.dumps(body, separators=(",", ":")).encode()


def _rewrite(request: Any, content: bytes) -> Any:
    """The same request (URL, headers, timeouts) with a new body and a Content-Length to match."""
    headers = []
    for key, value in request.headers.raw:
        lower = key.lower()
        if lower == b"content-length":
            value = str(len(content)).encode()
        elif lower == b"accept-encoding":
            # An uncompressed stream: the meter counts raw bytes, and events reach us at once.
            value = b"identity"
        headers.append((key, value))
    return type(request)(request.method, request.url, headers=headers, content=content, extensions=request.extensions)


def _decoder(encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    return _Undecodable(encoding)


class _Undecodable:
    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def decompress(self, data: bytes) -> bytes:
        raise ValueError(f"always_stream cannot decode a {self.encoding!r} stream")


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Overloaded" if status == 529 else b""


# ---------------------------------------------------------------------- taps


class _Tap:
    def __init__(self, inner: Any, plan: StreamPlan, call: Any, decoder: Any) -> None:
        self._inner = inner
        self._plan = plan
        self._call = call
        self._decoder = decoder

    def _feed(self, chunk: bytes) -> None:
        if self._decoder is not None:
            chunk = self._decoder.decompress(chunk)
        self._plan.assembler.feed(chunk)

    def _end(self) -> None:
        """The stream ended: say so before the scoped body records the call."""
        call = self._call
        if call is not None and call.aborted is not None:
            return
        assembler = self._plan.assembler
        assembler.close()
        if assembler.error is not None:
            if call is not None:  # recorded as failed, with the status the SDK will see
                call.status_code = assembler.error[0]
            return
        if assembler.broken or not assembler.complete:
            raise self._plan.protocol_error(
                "the server ended the stream before its final event (always_stream: the non-streamed "
                "response could not be rebuilt); the SDK retries this like a connection error"
            )


class _AsyncTap(_Tap):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        iterator = self._inner.__aiter__()
        done = False
        try:
            async for chunk in iterator:
                self._feed(chunk)
                yield chunk
            done = True
        finally:
            close = None if done else getattr(iterator, "aclose", None)
            if close is not None:
                await close()
        self._end()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _SyncTap(_Tap):
    def __iter__(self) -> Iterator[bytes]:
        iterator = iter(self._inner)
        try:
            for chunk in iterator:
                self._feed(chunk)
                yield chunk
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._end()

    def close(self) -> None:
        self._inner.close()


# ---------------------------------------------------------------- assemblers


class _Assembler:
    """Splits server-sent events and rebuilds the vendor's non-streamed body from them."""

    def __init__(self) -> None:
        self._buffer = b""
        self.complete = False
        self.broken = False
        #: (status, body) of the HTTP error the non-streamed call would have had
        self.error: tuple[int, Any] | None = None

    def feed(self, data: bytes) -> None:
        buffer = (self._buffer + data).replace(b"\r\n", b"\n") if self._buffer else data.replace(b"\r\n", b"\n")
        *events, self._buffer = buffer.split(b"\n\n")
        for event in events:
            self._event(event)

    def close(self) -> None:
        rest, self._buffer = self._buffer.strip(), b""
        if rest:
            self._event(rest)

    def _event(self, event: bytes) -> None:
        lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return
        data = b"\n".join(line[1:] if line[:1] == b" " else line for line in lines)
        if data.strip() == b"[DONE]":
            self.on_done()
            return
        try:
            value = json.loads(data)
            if isinstance(value, dict) and self.error is None and not self.broken:
                self.on_data(value)
        except (ValueError, TypeError, AttributeError, KeyError):
            # A malformed event (or one of a shape we do not know): the answer cannot be
            # rebuilt, and the call fails as a body cut short would (the meter notes the event).
            self.broken = True

    def on_done(self) -> None:
        pass

    def on_data(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def body(self) -> Any:
        raise NotImplementedError

    def result(self) -> tuple[int, bytes]:
        status, body = self.error if self.error is not None else (200, self.body())
        return status, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class _Text:
    """A string arriving in pieces (joined once, at the end: no quadratic concatenation)."""

    __slots__ = ("parts",)

    def __init__(self, first: str) -> None:
        self.parts = [first]


#: delta keys whose value is set, not concatenated, when a server repeats it
_SET_KEYS = frozenset({"index", "type", "id", "role", "name", "call_id"})


def _merge(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Fold one streamed delta into the accumulated object: strings append, lists extend or merge by index."""
    for key, value in delta.items():
        old = acc.get(key)
        if value is None:
            acc.setdefault(key, None)
        elif old is None:
            acc[key] = _fresh(value)
        elif isinstance(value, str) and isinstance(old, _Text):
            if key not in _SET_KEYS:
                old.parts.append(value)
            elif old.parts == [""]:  # a set key first sent empty
                acc[key] = _Text(value)
        elif isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            _merge_list(old, value)
        else:
            acc[key] = _fresh(value)


def _merge_list(acc: list[Any], items: list[Any]) -> None:
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("index"), int):
            target = next((a for a in acc if isinstance(a, dict) and a.get("index") == item["index"]), None)
            if target is not None:
                _merge(target, item)
                continue
        acc.append(_fresh(item))


def _fresh(value: Any) -> Any:
    if isinstance(value, str):
        return _Text(value)
    if isinstance(value, dict):
        acc: dict[str, Any] = {}
        _merge(acc, value)
        return acc
    if isinstance(value, list):
        items: list[Any] = []
        _merge_list(items, value)
        return items
    return value


def _final(value: Any) -> Any:
    if isinstance(value, _Text):
        return "".join(value.parts)
    if isinstance(value, dict):
        return {k: _final(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_final(v) for v in value]
    return value


def _openai_error(error: Any) -> tuple[int, Any]:
    """The HTTP status and body of the non-streamed error matching a mid-stream OpenAI error."""
    if not isinstance(error, dict):
        error = {"message": str(error), "type": "server_error", "param": None, "code": None}
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        status = code  # llama.cpp puts the HTTP status there
    else:
        status = _OPENAI_STATUS.get(str(code), _OPENAI_STATUS.get(str(error.get("type")), 500))
    return status, {"error": error}


class _ChatAssembler(_Assembler):
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
            self.error = _openai_error(data["error"])
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
                    _merge(state["message"], value)
            elif key == "logprobs":
                if isinstance(value, dict):
                    if state["logprobs"] is None:
                        state["logprobs"] = {}
                    _merge(state["logprobs"], value)
            elif key != "index" and (value is not None or key not in state):
                state[key] = value

    def body(self) -> Any:
        choices = []
        for index in sorted(self._choices):
            choice = _final(self._choices[index])
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


class _ResponsesAssembler(_Assembler):
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
            self.error = _openai_error(error)
        elif kind == "error":
            error = {k: v for k, v in data.items() if k not in ("type", "sequence_number")}
            if isinstance(error.get("error"), dict):  # some servers nest it
                error = error["error"]
            self.error = _openai_error(error)

    def body(self) -> Any:
        return self._response


class _MessagesAssembler(_Assembler):
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
                self._blocks[data.get("index", 0)] = _fresh(block)
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
            self.error = (_ANTHROPIC_STATUS.get(str(error_type), 500), data)

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
            _merge(block, {k: v for k, v in delta.items() if k != "type"})

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
        content = [_final(self._blocks[i]) for i in sorted(self._blocks)]
        return {**self._message, "content": content}
