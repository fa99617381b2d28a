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
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio

from ._wire import SSESplitter, data_of

__all__ = ["Assembler", "StreamPlan", "final", "fresh", "merge", "stream_plan"]

#: response headers that described the stream, not the JSON body we hand over
_STREAM_HEADERS = frozenset({b"content-type", b"content-length", b"transfer-encoding", b"content-encoding"})


# ------------------------------------------------------------------- request


class StreamPlan:
    """One request rewritten to stream, and the assembler that will rebuild its answer."""

    __slots__ = ("assembler", "request")

    def __init__(self, request: Any, assembler: Assembler) -> None:
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


def stream_plan(
    request: Any, assembler: Assembler, prepare: Callable[[dict[str, Any]], None] | None = None
) -> StreamPlan | None:
    """The streamed form of a non-streamed JSON generation request, or None to send it as it is.

    A vendor module calls this for the requests it recognises as generations;
    ``prepare`` adds what its streamed form needs besides ``"stream": true``.
    """
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
    if prepare is not None:
        prepare(body)
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


class Assembler(SSESplitter):
    """Rebuilds a vendor's non-streamed body from its server-sent events (split by ``SSESplitter``)."""

    def __init__(self) -> None:
        self.start_events()
        self.complete = False
        self.broken = False
        #: (status, body) of the HTTP error the non-streamed call would have had
        self.error: tuple[int, Any] | None = None

    def feed(self, data: bytes) -> None:
        self.feed_events(data)

    def close(self) -> None:
        rest = self.rest()
        if rest:
            self.event(rest)

    def event(self, event: bytes) -> None:
        data = data_of(event)
        if data is None:
            return
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


class Text:
    """A string arriving in pieces (joined once, at the end: no quadratic concatenation)."""

    __slots__ = ("parts",)

    def __init__(self, first: str) -> None:
        self.parts = [first]


#: delta keys whose value is set, not concatenated, when a server repeats it
_SET_KEYS = frozenset({"index", "type", "id", "role", "name", "call_id"})


def merge(acc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Fold one streamed delta into the accumulated object: strings append, lists extend or merge by index."""
    for key, value in delta.items():
        old = acc.get(key)
        if value is None:
            acc.setdefault(key, None)
        elif old is None:
            acc[key] = fresh(value)
        elif isinstance(value, str) and isinstance(old, Text):
            if key not in _SET_KEYS:
                old.parts.append(value)
            elif old.parts == [""]:  # a set key first sent empty
                acc[key] = Text(value)
        elif isinstance(value, dict) and isinstance(old, dict):
            merge(old, value)
        elif isinstance(value, list) and isinstance(old, list):
            merge_list(old, value)
        else:
            acc[key] = fresh(value)


def merge_list(acc: list[Any], items: list[Any]) -> None:
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("index"), int):
            target = next((a for a in acc if isinstance(a, dict) and a.get("index") == item["index"]), None)
            if target is not None:
                merge(target, item)
                continue
        acc.append(fresh(item))


def fresh(value: Any) -> Any:
    if isinstance(value, str):
        return Text(value)
    if isinstance(value, dict):
        acc: dict[str, Any] = {}
        merge(acc, value)
        return acc
    if isinstance(value, list):
        items: list[Any] = []
        merge_list(items, value)
        return items
    return value


def final(value: Any) -> Any:
    if isinstance(value, Text):
        return "".join(value.parts)
    if isinstance(value, dict):
        return {k: final(v) for k, v in value.items()}
    if isinstance(value, list):
        return [final(v) for v in value]
    return value
