"""Deadlines across service hops: the header a scoped HTTP client sends, the middleware reads.

Service A calls service B, which calls the LLM.  A's scope has a deadline; B
should not work past it.  A scoped ``httpx`` / ``httpx2`` client sends the
ambient scope's remaining time in ``DEADLINE_HEADER`` as whole milliseconds
(rounded down: never longer than A has left), and ``ScopeMiddleware`` gives
B's request scope that timeout, or its own if that is shorter.

A relative time, not a wall-clock instant: the two machines' clocks need not
agree (gRPC's ``grpc-timeout`` makes the same choice).  The time the request
spends on the wire is not subtracted: B's scope may end that much after A's.
"""

from __future__ import annotations

__all__ = ["DEADLINE_HEADER", "format_timeout", "parse_timeout"]

#: request header carrying the caller's remaining time, in whole milliseconds
DEADLINE_HEADER = "x-scope-timeout-ms"
_MAX_DIGITS = 12  # > 31 years in ms: anything longer is not a deadline worth keeping


def format_timeout(remaining: float) -> str:
    """The header value for ``remaining`` seconds (rounded down to whole milliseconds, at least 0)."""
    return str(max(0, int(remaining * 1000)))


def parse_timeout(value: bytes | str) -> float | None:
    """Seconds from a header value, or ``None`` if it is not a whole number of milliseconds."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        return None
    return int(text) / 1000
