"""Shared pieces of the vendor modules: request parsing, the SSE splitter, meters of SSE and JSON bodies.

The hot path is ``SSEMeter.feed``: ``SSESplitter`` splits the byte stream into
events and hands each one over as raw bytes.  Meters classify events with
substring tests (``b'"type":"content_block_delta"' in event``) and call
``json.loads`` only on the few events that carry usage or a finish reason.
``SSESplitter`` is the package's one server-sent-event splitter: the
``always_stream`` assemblers (``_assemble``) use it too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from .._calls import CallInfo, Meter
from .._savings import requested_shape

MAX_BUFFERED_BODY = 8 * 1024 * 1024
#: below this many bytes a feed is split event by event (a block count pays off over several events)
_BLOCK = 1024


def request_json(body: bytes) -> dict[str, Any]:
    """The request body as a dict, or {} (streamed uploads, non-JSON bodies)."""
    if not body or body[:1] != b"{":
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def call_info(provider: str, operation: str, body: dict[str, Any], *bound_keys: str) -> CallInfo:
    bound = next((body[k] for k in bound_keys if isinstance(body.get(k), int)), None)
    model = body.get("model")
    choices = body.get("n")
    # several choices (OpenAI's n): the bound is per choice, and one finish reason is not the end
    several = isinstance(choices, int) and not isinstance(choices, bool) and choices > 1
    return CallInfo(
        provider=provider,
        operation=operation,
        model=model if isinstance(model, str) else None,
        max_tokens=bound,
        streaming=bool(body.get("stream")),
        # "shape": what the request asks for (tools offered, forced, none), for the savings estimator
        extra={"choices": choices, "shape": requested_shape(body)} if several else {"shape": requested_shape(body)},
    )


def data_of(event: bytes) -> bytes | None:
    """The data of one SSE event: its ``data:`` lines joined with newlines, or None without any.

    As the SSE specification says, one space after ``data:`` is not part of the data.
    """
    parts = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not parts:
        return None
    return b"\n".join(part[1:] if part[:1] == b" " else part for part in parts)


def event_data(event: bytes) -> Any:
    """The JSON of an SSE event's ``data:`` lines, or None if it is not JSON."""
    data = data_of(event)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


class SSESplitter:
    """Splits a server-sent-event byte stream into events (``event``), whatever the chunking.

    A mixin: the class using it declares the two attributes (in its ``__slots__``
    for a meter) and calls ``start_events()`` from its ``__init__``.
    """

    # The slots themselves are the using class's: a meter's base class has slots of its own,
    # and two bases with slots cannot be combined.
    __slots__ = ("_buffer", "_crlf") if TYPE_CHECKING else ()

    _buffer: bytes
    #: how the server ends its lines, decided at the first line end: a stream of LF-only
    #: chunks is then not scanned for "\r" on every chunk
    _crlf: bool | None

    def start_events(self) -> None:
        self._buffer = b""
        self._crlf = None

    def feed_events(self, data: bytes) -> None:
        """Hand every event that ``data`` completes to ``event``; keep the partial rest."""
        self._split(self._joined(data), 0)

    def _joined(self, data: bytes) -> bytes:
        """The partial rest and ``data``, line ends normalised."""
        buffer = self._buffer + data if self._buffer else data
        crlf = self._crlf
        if crlf is None:
            crlf = b"\r" in buffer
            if b"\n" in buffer:
                self._crlf = crlf
        if crlf:  # after joining, so that a "\r\n" split across two chunks is normalised too
            # (``replace(b"\r\n", b"\n")``, 1.7x slower on CPython 3.11: a batch of Gemini's
            # CRLF events 15 -> 9 us)
            buffer = b"\n".join(buffer.split(b"\r\n"))
        return buffer

    def _split(self, buffer: bytes, start: int) -> None:
        """Hand every complete event of ``buffer`` from ``start`` on to ``event``; keep the partial rest."""
        size = len(buffer)
        event = self.event
        while start < size:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            if end > start:
                event(buffer[start:end])
            start = end + 2
        self._buffer = buffer[start:] if start < size else b""

    def rest(self) -> bytes:
        """The stream ended: what is left of a last event without its blank line (stripped)."""
        rest, self._buffer = self._buffer.strip(), b""
        return rest

    def event(self, event: bytes) -> None:
        raise NotImplementedError


_JSON_WS = frozenset(b" \t\r\n")


def value_at(event: bytes, key: bytes, start: int = 0) -> int:
    """Where the value of the last ``key`` (a quoted JSON key, ``b'"content"'``) at or after
    ``start`` begins, or -1; whatever whitespace the server puts around the colon
    (OpenAI-compatible servers differ).

    A quote inside a JSON string is escaped, so a quoted key found in the raw bytes is a
    real string token of the document: content cannot forge it.
    """
    at = event.rfind(key, start)
    if at < 0:
        return -1
    i = at + len(key)
    try:
        c = event[i]
        while c in _JSON_WS:
            i += 1
            c = event[i]
        if c != 58:  # ":" (else the string was a value, not a key)
            return -1
        i += 1
        c = event[i]
        while c in _JSON_WS:
            i += 1
            c = event[i]
    except IndexError:
        return -1
    return i


def has_text(event: bytes, key: bytes) -> bool:
    """The last ``key`` holds a non-empty JSON string."""
    i = value_at(event, key)
    try:
        return i >= 0 and event[i] == 34 and event[i + 1] != 34  # '"' and not '""'
    except IndexError:
        return False


def has_items(event: bytes, key: bytes) -> bool:
    """The last ``key`` holds a non-empty JSON array."""
    i = value_at(event, key)
    try:
        if i < 0 or event[i] != 91:  # "["
            return False
        i += 1
        while event[i] in _JSON_WS:
            i += 1
        return event[i] != 93  # "]"
    except IndexError:
        return False


def run_length(buffer: bytes, start: int, end: int, head: bytes) -> int:
    """How many events ``buffer[start:end]`` holds when every one of them starts with ``head``,
    ends with ``}`` and has no line break but ``head``'s own (and the blank line after it); else 0.

    ``buffer[start:end]`` is complete events (it ends with a blank line) and ``head`` is a
    prefix of its first one: the caller took it from there.  Each ``}`` + blank line + ``head``
    is where an event ends and the next, starting with ``head``, begins (a blank line inside an
    event would end it); the line breaks are then exactly those of that many events only if no
    other event, and no other line, is in the run.  Two byte counts over the run, in C.
    """
    events = buffer.count(b"}\n\n" + head, start, end) + 1
    if buffer[end - 3] != 125 or buffer.count(b"\n", start, end) != events * (2 + head.count(b"\n")):  # "}"
        return 0
    return events


def as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def provider_usage(
    meter: Meter, usage: dict[str, Any], output_key: str | None = "output_tokens", input_key: str = "input_tokens"
) -> None:
    """Take the provider's own token counts, where it reports them, over the meter's estimate."""
    out = as_int(usage.get(output_key)) if output_key is not None else None
    inp = as_int(usage.get(input_key))
    if out is not None:
        meter.tokens_out, meter.output_source = out, "provider"
    if inp is not None:
        meter.tokens_in, meter.input_source = inp, "provider"


class SSEMeter(SSESplitter, Meter):
    """A meter of a server-sent-event stream: ``on_event`` sees each event."""

    __slots__ = ("_buffer", "_crlf")

    streamed = True
    #: whether the SDK raises on an event that is not JSON (OpenAI, Anthropic); Cohere's
    #: logs a warning and skips it, so its calls are not recorded failed for one
    malformed_fails: ClassVar[bool] = True

    #: whether ``count_block`` can count runs of plain events without looking at each one
    counts_blocks: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.start_events()

    def feed(self, data: bytes) -> None:
        buffer = self._joined(data)
        start = 0
        if self.counts_blocks and len(buffer) >= _BLOCK:
            # Several events at once (the body reader feeds a batch of chunks): runs of plain
            # events are counted with a few byte scans each, the rest event by event.
            last = buffer.rfind(b"\n\n")
            # (a run of three or more newlines is split two by two from its start: not here)
            if last > 0 and buffer[last - 1] != 10:
                start = last + 2
                self._block(buffer, 0, start)
        self._split(buffer, start)

    def _block(self, buffer: bytes, start: int, end: int) -> None:
        """Account for ``buffer[start:end]``, complete events: counted at once, or its halves, or one by one."""
        if end - start >= _BLOCK:
            if self.count_block(buffer, start, end):
                return
            # A stream's first and last events are unlike the rest: count the halves on their own.
            middle = buffer.find(b"\n\n", (start + end) // 2, end - 2)
            if end - start >= 2 * _BLOCK and middle > 0 and buffer[middle - 1] != 10:
                self._block(buffer, start, middle + 2)
                self._block(buffer, middle + 2, end)
                return
        event = self.event
        while start < end:
            stop = buffer.find(b"\n\n", start, end)
            if stop > start:
                event(buffer[start:stop])
            start = stop + 2

    def count_block(self, buffer: bytes, start: int, end: int) -> bool:
        """Account for the events of ``buffer[start:end]`` (complete: it ends with a blank line) at
        once and say so, or say no and change nothing: they are then handed to ``event`` one by one.
        Only when the figures come out exactly as one by one: a subclass that changes ``on_event``
        must check that its inherited ``count_block`` still agrees."""
        return False

    def event(self, event: bytes) -> None:
        # JSON events end with "}" (or "[DONE]"): a cheap test, and a parse only
        # for the rare event that fails it.
        if (
            self.malformed_fails
            and not (event.endswith(b"}") or event.endswith(b"]"))
            and b"data:" in event
            and event_data(event) is None
        ):
            self.error = "malformed event in the response stream"
        try:
            self.on_event(event)
        except Exception:  # a meter never breaks the caller's stream
            pass

    def close(self) -> None:
        rest = self.rest()
        if rest:
            try:
                self.on_event(rest)
            except Exception:
                pass

    def on_event(self, event: bytes) -> None:
        raise NotImplementedError


class JSONBodyMeter(Meter):
    """Buffers a plain JSON response (bounded) and reads its usage once, at the end.

    ``strict``: the SDK raises when the body is not JSON (a JSON content type for
    OpenAI and Anthropic, any 2xx for Cohere), so the call is recorded failed then.
    """

    __slots__ = ("_chunks", "_size", "_strict")

    def __init__(self, *, strict: bool = True) -> None:
        super().__init__()
        self._chunks: list[bytes] | None = []
        self._size = 0
        self._strict = strict

    def feed(self, data: bytes) -> None:
        if self._chunks is not None and self._size <= MAX_BUFFERED_BODY:
            self._chunks.append(data)
            self._size += len(data)

    def close(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is None or self._size > MAX_BUFFERED_BODY:
            return
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            if self._strict:
                self.error = "the response body is not JSON"
            return
        if isinstance(body, dict):
            try:
                self.on_body(body)
            except Exception:
                pass

    def on_body(self, body: dict[str, Any]) -> None:
        raise NotImplementedError


def json_content_type(content_type: str) -> bool:
    """The rule the OpenAI and Anthropic SDKs use to decide a body must be JSON."""
    return content_type.split(";", 1)[0].strip().lower().endswith("json")
