"""The exceptions scoped_clients raises.

Exception tree::

    ScopedClientsError (BaseException)
    ├── ScopeCancelled             a call or check under a cancelled or ended scope
    └── ScopeUsageError (+RuntimeError)   the library was used in a way it cannot honour
        ├── ScopeStateError        entering twice, spawning into an ended scope, ...
        └── UnsupportedError (+NotImplementedError)   a feature we cannot abort honestly

Why the root is a ``BaseException``: a cancellation must travel through code
that catches ``Exception``, exactly like ``asyncio.CancelledError`` and
``trio.Cancelled`` do.  The vendor SDKs retry *any* ``Exception`` raised while
sending (anthropic wraps it in ``APIConnectionError`` and retries it; tenacity's
default retries it too), so a ``ScopeCancelled`` that was an ``Exception``
would be retried after the user had left.  Usage errors are ordinary
``RuntimeError`` subclasses, so ``except Exception`` still sees bugs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._reasons import CancelReason


class ScopedClientsError(BaseException):
    """Root of every exception raised by scoped_clients."""


class ScopeCancelled(ScopedClientsError):
    """A wrapped call (or ``scope.check()``) ran under a cancelled or ended scope.

    Raised to code that runs outside the scope's body (another task, a thread);
    inside ``async with RequestScope()`` the cancellation is absorbed when the
    block exits.  Never retried by the SDKs (it is not an ``Exception``).

    Args:
        reason: why the scope was cancelled (kept as ``.reason``: code, message, time).
        scope_name: the cancelled scope's name, if it has one (kept as ``.scope_name``).
    """

    def __init__(self, reason: CancelReason, scope_name: str | None = None) -> None:
        self.reason = reason
        self.scope_name = scope_name
        where = f"scope {scope_name!r}" if scope_name else "the scope"
        text = f"{where} was cancelled ({reason.code})"
        if reason.message:
            text += f": {reason.message}"
        super().__init__(text)


class ScopeUsageError(ScopedClientsError, RuntimeError):
    """The library was used in a way it cannot honour; the message says what to do."""


class ScopeStateError(ScopeUsageError):
    """An operation does not fit the scope's lifecycle state."""


class UnsupportedError(ScopeUsageError, NotImplementedError):
    """A feature scoped_clients cannot abort honestly (e.g. HTTP/2 streams)."""


HTTP2_UNSUPPORTED = (
    "scoped_clients cannot abort a single HTTP/2 stream: httpcore sends no RST_STREAM when a response is "
    "closed, so the provider keeps generating. Use HTTP/1.1 (the default of every vendor SDK): drop http2=True"
)
