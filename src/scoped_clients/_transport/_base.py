"""The library-neutral scoped transport, and the scoping of a whole httpx(2) client.

``TransportBase`` (with ``AsyncTransportMixin`` / ``SyncTransportMixin``) holds
all of the transport's logic; ``library_classes(httpx)`` combines it with one
HTTP library's own base classes (``isinstance`` and the library's stream type
checks then hold), so that httpx and httpx2 differ only in class identity, as
in opentelemetry-instrumentation-httpx.  The public ``scoped_clients.httpx``
and ``scoped_clients.httpx2`` re-export those classes.
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
from types import ModuleType
from typing import Any, ClassVar

from .._calls import Profile
from .._exceptions import HTTP2_UNSUPPORTED, UnsupportedError
from .._loop import LoopHandle
from .._scope import current_scope
from .._vendors.generic import GenericProfile
from . import FinishPolicy, check_options
from ._call import AsyncBodyMixin, SyncBodyMixin, is_native_cancel, open_call, planned, raise_for, received
from ._sockets import current, install_tracking


class TransportBase:
    _inner_factory: ClassVar[Any]
    _body_cls: ClassVar[type]

    def __init__(
        self,
        transport: Any = None,
        *,
        profile: Profile | None = None,
        finish_policy: FinishPolicy = "abort",
        always_stream: bool = False,
        **transport_kwargs: Any,
    ) -> None:
        """Wrap ``transport``, or a new default transport built from ``transport_kwargs``.

        ``finish_policy="finish_if_done"`` lets a stream whose finish reason has already
        arrived complete on cancel, so the provider's billed usage is received.
        ``always_stream=True`` sends the profile's non-streamed generation requests as
        streams and hands the SDK the non-streamed body it asked for, so that the
        provider notices a cancel at its next token.
        """
        if transport is None:
            if transport_kwargs.get("http2"):
                raise UnsupportedError(HTTP2_UNSUPPORTED)
            transport = self._inner_factory(**transport_kwargs)
        elif transport_kwargs:
            raise TypeError("pass either a transport to wrap or keyword arguments to build one, not both")
        check_options(finish_policy, always_stream)
        self.transport = transport
        self.profile = profile if profile is not None else GenericProfile()
        self.finish_policy: FinishPolicy = finish_policy
        self.always_stream = always_stream


class AsyncTransportMixin(TransportBase):
    async def handle_async_request(self, request: Any) -> Any:
        """The request under the ambient scope (passed through without one).

        ``always_stream``: a non-streamed generation is sent as a stream, read here to its
        end, and handed over as the non-streamed response (see ``_vendors._assemble``).
        """
        scope = current_scope()
        if scope is None:
            sent, plan = planned(request, self.always_stream, None)
            response = await self.transport.handle_async_request(sent)
            response, reading = received(plan, response, None, self._body_cls, "")
            return response if reading is None else await reading.read_async(response)
        loop = scope._registry.loop  # the scope's loop, when the call runs on it
        if loop is None or loop.thread_id != threading.get_ident():
            loop = LoopHandle()
        call = open_call(scope, request, self.profile, loop, self.finish_policy)
        sent, plan = planned(request, True, call) if self.always_stream else (request, None)
        # The call runs inside the scope's own cancel scope, with no shield between: cancelling that one
        # (what the scope does anyway) interrupts it, no cancel scope of its own needed.
        body = scope._cancel_scope
        reached = body is not None and call.aborted is None and loop.reaches(body)
        pending = None
        try:
            if reached:
                # No ``with`` at all here (a ``nullcontext`` cost 0.6-1.8 us a call): an abort from
                # another thread from now on is posted to the loop, and cancels the body's scope there.
                call.pending_scope = body
                response = await self.transport.handle_async_request(sent)
            else:
                with loop.cancel_scope() as pending:
                    call.pending_scope = pending
                    if call.aborted is not None:  # cancelled between admission and here
                        pending.cancel()
                    response = await self.transport.handle_async_request(sent)
        except BaseException as exc:
            call.pending_scope = None
            if reached and call.aborted is not None and is_native_cancel(exc):
                call.finish("aborted")  # the scope's cancel, which reached the call through its body
                raise call.cancelled_error() from exc
            raise_for(call, exc)
        call.pending_scope = None
        if pending is not None and pending.cancelled_caught:
            # our own cancel scope caught our cancel (never the body's: it is still open)
            call.finish("aborted")
            raise call.cancelled_error()
        response, reading = received(plan, response, call, self._body_cls, "aclose")
        return response if reading is None else await reading.read_async(response)

    async def aclose(self) -> None:
        await self.transport.aclose()


class SyncTransportMixin(TransportBase):
    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        #: False for transports without a socket pool: they can be refused, not interrupted
        self.interruptible = install_tracking(self.transport)

    def handle_request(self, request: Any) -> Any:
        scope = current_scope()
        if scope is None:
            sent, plan = planned(request, self.always_stream, None)
            response = self.transport.handle_request(sent)
            response, reading = received(plan, response, None, self._body_cls, "")
            return response if reading is None else reading.read_sync(response)
        call = open_call(scope, request, self.profile, None, self.finish_policy)
        sent, plan = planned(request, self.always_stream, call)
        previous = getattr(current, "call", None)
        current.call = call
        try:
            response = self.transport.handle_request(sent)
        except BaseException as exc:
            raise_for(call, exc)
        finally:
            current.call = previous
        if call.aborted is not None:
            response.close()
            call.finish("aborted")
            raise call.cancelled_error()
        response, reading = received(plan, response, call, self._body_cls, "close")
        return response if reading is None else reading.read_sync(response)

    def close(self) -> None:
        self.transport.close()


def wrap_client(
    client: Any,
    profile: Profile | None,
    finish_policy: FinishPolicy = "abort",
    always_stream: bool = False,
    *,
    target: Any = None,
) -> None:
    """Put a scoped transport around every transport ``client`` holds, on ``target`` (default: ``client``).

    httpx has no public setter for a client's transports (``transport=`` replaces
    only the default one, not the proxy mounts), so the scoped transports are set
    on the instance.  The scoped transport class follows the client (async or sync),
    never the caller.  Idempotent: an already scoped transport is left as it is.
    """
    scoped_cls = scoped_transport_for(client)

    def wrap(transport: Any) -> Any:
        if transport is None or isinstance(transport, TransportBase):
            return transport
        return scoped_cls(transport, profile=profile, finish_policy=finish_policy, always_stream=always_stream)

    target = client if target is None else target
    target._transport = wrap(client._transport)
    target._mounts = {pattern: wrap(t) for pattern, t in client._mounts.items()}


def is_scoped(client: Any) -> bool:
    """Whether an httpx(2) client's default transport is a scoped one."""
    return isinstance(getattr(client, "_transport", None), TransportBase)


def scope_http_client(
    client: Any,
    profile: Profile,
    finish_policy: FinishPolicy = "abort",
    always_stream: bool = False,
    *,
    built_by_sdk: bool,
) -> Any:
    """The HTTP client a vendor SDK instance should use: ``client``, scoped.

    ``built_by_sdk``: the SDK built ``client`` for this instance and nobody else holds it,
    so its transports are wrapped in place and its class (the SDK's own default
    client, which closes its connections when collected) is kept.  Otherwise it is
    the caller's: it is left exactly as they gave it, and the SDK gets a shallow
    copy (same class, headers, auth, cookies, event hooks and connection pool)
    whose transports are the scoped ones; closing the copy closes the caller's client,
    as the SDK closes the client it was given.
    """
    if is_scoped(client):
        scoped = client._transport
        if (scoped.finish_policy, scoped.always_stream) == (finish_policy, always_stream):
            return client
        # Other options (a copy asked for them): a sibling over the same inner transports.
        target = copy.copy(client)
        unwrap = {pattern: getattr(t, "transport", t) for pattern, t in client._mounts.items()}
        target._transport, target._mounts = scoped.transport, unwrap
        wrap_client(target, profile, finish_policy, always_stream)
        return target
    if built_by_sdk:
        wrap_client(client, profile, finish_policy, always_stream)
        return client
    view = copy.copy(client)
    if getattr(type(client), "__del__", None) is not None:
        # A class that closes itself when collected (the SDKs' and frameworks' cached clients):
        # the copy must not close the caller's shared connections when *it* is collected.
        view.__class__ = _collected_quietly(type(client))
    wrap_client(client, profile, finish_policy, always_stream, target=view)
    _close_together(view, client)
    return view


_quiet_classes: dict[type, type] = {}


def _collected_quietly(cls: type) -> type:
    """A subclass of ``cls`` whose instances do nothing when garbage-collected."""
    quiet = _quiet_classes.get(cls)
    if quiet is None:

        def __del__(self: Any) -> None:
            pass

        namespace = {"__del__": __del__, "__module__": cls.__module__, "__doc__": cls.__doc__}
        quiet = _quiet_classes[cls] = type(cls.__name__, (cls,), namespace)
    return quiet


def _close_together(view: Any, client: Any) -> None:
    """Closing the SDK's view closes the caller's client too, as the SDK closes the client it was given."""
    if hasattr(client, "aclose"):

        async def aclose() -> None:
            await client.aclose()
            await type(view).aclose(view)

        view.aclose = aclose
    else:

        def close() -> None:
            client.close()
            type(view).close(view)

        view.close = close


class ClientMixin:
    def __init__(self, *args: Any, profile: Profile | None = None, **kwargs: Any) -> None:
        """The library's own arguments; ``profile`` names and meters the calls (default: generic HTTP)."""
        if kwargs.get("http2"):
            raise UnsupportedError(HTTP2_UNSUPPORTED)
        super().__init__(*args, **kwargs)
        wrap_client(self, profile)


def vendor_http_client(
    factory: Any,
    profile: Profile,
    kwargs: dict[str, Any],
    *,
    finish_policy: FinishPolicy = "abort",
    always_stream: bool = False,
) -> Any:
    """An HTTP client built by the vendor's own ``factory`` (its timeouts, limits, socket
    options and class), scoped with the vendor's ``profile``: for frameworks that accept
    only an HTTP client, so that reports still carry the vendor's model and tokens."""
    if kwargs.get("http2"):
        raise UnsupportedError(HTTP2_UNSUPPORTED)
    check_options(finish_policy, always_stream)
    client = factory(**kwargs)
    wrap_client(client, profile, finish_policy, always_stream)
    return client


def scoped_transport_for(client: Any) -> Any:
    """The scoped transport class for ``client``: its HTTP library (httpx or httpx2), async or sync."""
    for name in ("httpx", "httpx2"):
        library = sys.modules.get(name)  # a client of a library means the library is imported
        if library is not None and isinstance(client, (library.AsyncClient, library.Client)):
            classes = library_classes(library)
            return classes.AsyncScopedTransport if isinstance(client, library.AsyncClient) else classes.ScopedTransport
    raise TypeError(f"scoped_clients can scope httpx or httpx2 clients, not {type(client).__qualname__}")


class LibraryClasses:
    """The scoped classes of one HTTP library: the neutral mixins with the library's own bases."""

    def __init__(self, library: ModuleType) -> None:
        name = library.__name__
        module = f"scoped_clients.{name}"

        def build(cls_name: str, bases: tuple[type, ...], doc: str | None, **attributes: Any) -> Any:
            namespace = {"__module__": module, "__qualname__": cls_name, "__doc__": doc, **attributes}
            return type(cls_name, bases, namespace)

        # The library's response stream and its exception mapping, where they have the shape a body
        # reads through (httpx and httpx2 alike); any other stream is read as it is.
        default = sys.modules.get(f"{name}._transports.default")
        stream = getattr(default, "AsyncResponseStream", None)
        errors = getattr(default, "map_httpcore_exceptions", None)
        below = (stream, errors) if isinstance(stream, type) and _enters(errors) else None
        async_body = build("_AsyncBody", (AsyncBodyMixin, library.AsyncByteStream), None, _library_stream=below)
        sync_body = build("_SyncBody", (SyncBodyMixin, library.SyncByteStream), None)
        self.AsyncScopedTransport = build(
            "AsyncScopedTransport",
            (AsyncTransportMixin, library.AsyncBaseTransport),
            f"Wraps a ``{name}.AsyncBaseTransport`` (default: a new ``{name}.AsyncHTTPTransport``).",
            _inner_factory=library.AsyncHTTPTransport,
            _body_cls=async_body,
        )
        self.ScopedTransport = build(
            "ScopedTransport",
            (SyncTransportMixin, library.BaseTransport),
            f"Wraps a ``{name}.BaseTransport`` (default: a new ``{name}.HTTPTransport``).",
            _inner_factory=library.HTTPTransport,
            _body_cls=sync_body,
        )
        self.AsyncClient = build(
            "AsyncClient",
            (ClientMixin, library.AsyncClient),
            f"``{name}.AsyncClient`` whose requests are owned by the ambient scope.",
        )
        self.Client = build(
            "Client",
            (ClientMixin, library.Client),
            f"``{name}.Client`` whose requests are owned by the ambient scope.",
        )


def _enters(errors: Any) -> bool:
    """Whether ``errors()`` is a context manager that enters and exits as httpx's exception mapping does."""
    try:
        with errors():
            pass
    except Exception:  # another shape in some release: its streams are read as they are
        return False
    return True


@functools.cache
def library_classes(library: ModuleType) -> LibraryClasses:
    """The scoped transport and client classes of ``library`` (``httpx`` or ``httpx2``), built once."""
    return LibraryClasses(library)
