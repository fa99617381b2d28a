"""Why a scope was cancelled: a code, a message and when (style note 3)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class ReasonCode(StrEnum):
    """The codes scoped_clients itself uses.  Any other non-empty string is a user code."""

    CANCELLED = "cancelled"
    CLIENT_DISCONNECTED = "client_disconnected"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    SCOPE_CLOSED = "scope_closed"


@dataclass(frozen=True, slots=True)
class CancelReason:
    """A cancellation's structure: ``code`` for machines, ``message`` for people.

    ``time`` is ``time.monotonic()`` at the moment of the cancel.
    """

    code: str
    message: str = ""
    time: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not self.code:
            raise TypeError(f"CancelReason.code must be a non-empty string, got {self.code!r}")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else str(self.code)


def coerce_reason(reason: object, message: str | None = None) -> CancelReason:
    """Turn what the user passed to ``cancel()`` into a ``CancelReason``."""
    if isinstance(reason, CancelReason):
        return reason
    if isinstance(reason, str) and reason:
        return CancelReason(str(reason), message or "")
    raise TypeError(
        f"cancel() takes a reason code (a non-empty str such as 'client_disconnected') or a CancelReason, "
        f"not {type(reason).__name__}: {reason!r}"
    )
