"""Sockets under the HTTP libraries: shutting one down from any thread, finding the one a call uses.

An async call finds its socket in the response's ``network_stream`` extension
(``socket_of``).  A sync call cannot: its socket is tracked by wrapping the
pool's network backend (``install_tracking``), so that new, TLS and reused
pooled connections all tell the call running in this thread which socket it
reads (``current`` is that call).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import weakref
from asyncio.trsock import TransportSocket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._call import HttpCall

#: the sync call running in this thread (``current.call``), while it sends or reads
current = threading.local()


def shutdown_socket(sock: Any) -> None:
    """Shut a socket down for both directions, whatever object wraps it.

    A ``socket.socket`` (``ssl.SSLSocket`` included, whose own ``shutdown`` would
    tear down TLS state) is shut down through the base class; asyncio's
    ``TransportSocket`` and trio's socket (what httpcore's trio backend hands out)
    through their own ``shutdown``, that of the socket they wrap: no duplicate
    descriptor, three system calls fewer (trio's also notes that its side is shut,
    as its ``SocketStream.send_eof`` does); anything else (uvloop's pseudo-sockets
    refuse ``shutdown``) through a duplicate of its file descriptor, which reaches
    the same kernel socket.
    """
    kind = type(sock)
    if kind is TransportSocket or kind in _own_shutdown:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    elif isinstance(sock, socket.socket):
        try:  # the base class's method: for an SSLSocket it skips the TLS teardown
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
    elif _is_trio_socket(kind):
        _own_shutdown.add(kind)
        shutdown_socket(sock)
    else:
        _shutdown_through_dup(sock)


#: socket classes whose own ``shutdown`` shuts the kernel socket down (trio's, once seen)
_own_shutdown: set[type] = set()


def _is_trio_socket(kind: type) -> bool:
    trio = sys.modules.get("trio")  # a trio socket means trio is imported: never import it here
    return trio is not None and issubclass(kind, trio.socket.SocketType)


def _shutdown_through_dup(sock: Any) -> None:
    try:
        fd = sock.fileno()
    except (OSError, ValueError, AttributeError):
        return
    if fd < 0:
        return
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


_sockets: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def socket_of(stream: Any) -> Any:
    """The socket under an httpcore network stream, cached per pooled connection.

    anyio builds a dict of every attribute on each ``extra()`` lookup: ~10 us a
    response, which a pooled connection only needs to pay once.
    """
    try:
        sock = _sockets.get(stream, _UNKNOWN)  # no KeyError raised and caught for a new connection
    except TypeError:  # a stream that cannot be weakly referenced: no caching
        return stream.get_extra_info("socket")
    if sock is _UNKNOWN:
        sock = _sockets[stream] = stream.get_extra_info("socket")
    return sock


_UNKNOWN = object()


class TrackedStream:
    """A sync network stream that tells the call running in this thread which socket it uses."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.owner: HttpCall | None = None

    def raw_socket(self) -> Any:
        return self._inner.get_extra_info("socket")

    def _claim(self) -> None:
        call: HttpCall | None = getattr(current, "call", None)
        if call is not None and self.owner is not call:
            with call.lock:
                self.owner = call
                call.tracked = self
                aborted = call.aborted
            if aborted is not None:
                raise call.cancelled_error()
        elif call is not None and call.aborted is not None:
            raise call.cancelled_error()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._claim()
        data: bytes = self._inner.read(max_bytes, timeout)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._claim()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        owner = self.owner
        if owner is not None:
            with owner.lock:  # never shut down a socket whose descriptor is being released
                self.owner = None
                self._inner.close()
        else:
            self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> TrackedStream:
        return TrackedStream(self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class TrackingBackend:
    """Wraps an httpcore sync network backend so every stream it opens is a ``TrackedStream``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> TrackedStream:
        return TrackedStream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> TrackedStream:
        return TrackedStream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def install_tracking(transport: Any) -> bool:
    """Make a sync httpx/httpx2 ``HTTPTransport`` report its sockets to the calls using them.

    httpx does not let us pass httpcore's public ``network_backend`` argument, so we
    wrap the pool's backend attribute on the transport instance we were given.
    Returns False for transports without a pool (mock, WSGI): those cannot be
    interrupted from another thread, only refused.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:
        return False
    if not isinstance(backend, TrackingBackend):
        pool._network_backend = TrackingBackend(backend)  # type: ignore[union-attr]
    return True
