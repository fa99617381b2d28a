"""What a wrapped call is, as the transports and the vendor profiles see it.

A *profile* describes one vendor's wire protocol: from the outgoing request it
tells which operation and model a call is (``describe``), and it builds a
*meter* that reads the response body as it streams, counting tokens without
parsing every event (``meter``).  The transports own the generic part
(registration with the scope, aborting, timing); profiles only supply these
two small callables; the rest of what the package knows of a vendor is in its
module under ``_vendors/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._scope import RequestScope

UsageSource = Literal["provider", "estimated"]


@dataclass(slots=True)
class CallInfo:
    """What a call is: filled once per request, off the hot path."""

    #: who serves the call: ``"openai"``, ``"anthropic"``, ``"cohere"``, ``"qdrant"``, ``"tool"``, ``"http"``
    provider: str
    #: what the call does, in the vendor's terms (``"chat.completions"``, ``"query_points"``...)
    operation: str
    #: the model the request names, if any
    model: str | None = None
    #: the request's own output bound (``max_tokens``, ``max_output_tokens``...)
    max_tokens: int | None = None
    #: the request asked for a streamed answer
    streaming: bool = False
    #: anything else a profile wants in the call's record (``CallRecord.detail``)
    extra: dict[str, object] = field(default_factory=dict)


class Meter:
    """Counts what a response carried.  The base class counts nothing.

    ``feed`` is called with every raw body chunk as it arrives (the hot path):
    implementations must not JSON-parse events that carry no usage.
    """

    __slots__ = (
        "error",
        "finish_reason",
        "input_source",
        "output_source",
        "tokens_in",
        "tokens_out",
        "tool_calls",
        "units",
    )

    #: the response is a stream of tokens (SSE, JSON lines), read as it is generated;
    #: False for a body the provider sends only once it is done
    streamed: ClassVar[bool] = False

    def __init__(self) -> None:
        self.tokens_in: int | None = None
        self.tokens_out: int = 0
        #: where ``tokens_in`` / ``tokens_out`` come from
        self.input_source: UsageSource = "estimated"
        self.output_source: UsageSource = "estimated"
        #: set once the provider said why it stopped (for finish-or-abort)
        self.finish_reason: str | None = None
        #: a tool call was seen (a streamed delta, or in the body): the turn ends in tool calls
        self.tool_calls = False
        #: vendor units other than tokens (search units, billed units...)
        self.units: dict[str, float] = {}
        #: set when the body was not what the protocol promised (a malformed event)
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        """Account for ``data``, one raw body chunk as received from the socket."""

    def close(self) -> None:
        """The body ended (or was aborted): flush any partial event."""


class Profile(Protocol):
    """A vendor's wire protocol, as the scoped transport needs it."""

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        """Name the call from its request: its HTTP ``method``, its ``url`` and its ``body`` (b"" when streamed)."""
        ...

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        """A fresh meter for one response to the call ``info`` describes, given its ``status_code`` and
        ``content_type``."""
        ...


@runtime_checkable
class Preparing(Protocol):
    """A profile's optional third step: adjust a request before it is sent (checked once per profile class).

    The generic profile sends the scope's remaining time to the next service;
    Qdrant's passes it as the server-side ``timeout``.
    """

    def prepare(self, request: Any, scope: RequestScope) -> None:
        """Adjust ``request`` (an httpx / httpx2 ``Request``) for ``scope`` before it is sent."""
        ...
