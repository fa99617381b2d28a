"""Library-independent halves of the scoped transports and clients.

``scoped_clients.httpx`` and ``scoped_clients.httpx2`` combine these mixins
with each library's own base classes, so ``isinstance`` and the libraries'
stream type checks hold.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from ._calls import Profile
from ._exceptions import UnsupportedError
from ._transport import FinishPolicy, install_tracking, send_async, send_sync

HTTP2_UNSUPPORTED = (
    "scoped_clients cannot abort a single HTTP/2 stream: httpcore sends no RST_STREAM when a response is "
    "closed, so the provider keeps generating. Use HTTP/1.1 (the default of every vendor SDK): drop http2=True"
)


def _default_profile() -> Profile:
    from ._vendors.generic import GenericProfile

    return GenericProfile()


class _TransportBase:
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
        self.profile = profile if profile is not None else _default_profile()
        self.finish_policy: FinishPolicy = finish_policy
        self.always_stream = always_stream


def check_options(finish_policy: object, always_stream: object) -> None:
    """Validate the two options scoped clients add to the vendor's."""
    if finish_policy not in ("abort", "finish_if_done"):
        raise ValueError(f"finish_policy must be 'abort' or 'finish_if_done', not {finish_policy!r}")
    if not isinstance(always_stream, bool):
        raise TypeError(f"always_stream must be True or False, not {always_stream!r}")


class AsyncTransportMixin(_TransportBase):
    async def handle_async_request(self, request: Any) -> Any:
        return await send_async(
            self.transport, request, self.profile, self.finish_policy, self._body_cls, always_stream=self.always_stream
        )

    async def aclose(self) -> None:
        await self.transport.aclose()


class SyncTransportMixin(_TransportBase):
    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        #: False for transports without a socket pool: they can be refused, not interrupted
        self.interruptible = install_tracking(self.transport)

    def handle_request(self, request: Any) -> Any:
        return send_sync(
            self.transport, request, self.profile, self.finish_policy, self._body_cls, always_stream=self.always_stream
        )

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
        if transport is None or isinstance(transport, _TransportBase):
            return transport
        return scoped_cls(transport, profile=profile, finish_policy=finish_policy, always_stream=always_stream)

    target = client if target is None else target
    target._transport = wrap(client._transport)
    target._mounts = {pattern: wrap(t) for pattern, t in client._mounts.items()}


def is_scoped(client: Any) -> bool:
    """Whether an httpx(2) client's default transport is a scoped one."""
    return isinstance(getattr(client, "_transport", None), _TransportBase)


def scope_http_client(
    client: Any,
    profile: Profile,
    finish_policy: FinishPolicy = "abort",
    always_stream: bool = False,
    *,
    owned: bool,
) -> Any:
    """The HTTP client a vendor SDK instance should use: ``client``, scoped.

    ``owned``: the SDK built ``client`` for this instance and nobody else holds it,
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
    if owned:
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
    library = None
    for base in type(client).__mro__:
        root = base.__module__.split(".", 1)[0]
        if root in ("httpx", "httpx2") and base.__name__ in ("AsyncClient", "Client"):
            library, is_async = root, base.__name__ == "AsyncClient"
            break
    if library == "httpx":
        from . import httpx as scoped
    elif library == "httpx2":
        from . import httpx2 as scoped  # type: ignore[no-redef]
    else:
        raise TypeError(f"scoped_clients can scope httpx or httpx2 clients, not {type(client).__qualname__}")
    return scoped.AsyncScopedTransport if is_async else scoped.ScopedTransport
