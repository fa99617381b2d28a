"""Library-independent halves of the scoped transports and clients.

``scoped_clients.httpx`` and ``scoped_clients.httpx2`` combine these mixins
with each library's own base classes, so ``isinstance`` and the libraries'
stream type checks hold.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._calls import Profile
from ._exceptions import UnsupportedError
from ._transport import FinishPolicy, install_tracking, send_async, send_sync

HTTP2_UNSUPPORTED = (
    "scoped_clients cannot abort a single HTTP/2 stream: httpcore sends no RST_STREAM when a response is "
    "closed, so the provider keeps generating. Use HTTP/1.1 (the default of every vendor SDK): drop http2=True"
)


def _default_profile() -> Profile:
    from ._profiles.generic import GenericProfile

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
        **transport_kwargs: Any,
    ) -> None:
        """Wrap ``transport``, or a new default transport built from ``transport_kwargs``.

        ``finish_policy="finish_if_done"`` lets a stream whose finish reason has already
        arrived complete on cancel, so the provider's billed usage is received.
        """
        if transport is None:
            if transport_kwargs.get("http2"):
                raise UnsupportedError(HTTP2_UNSUPPORTED)
            transport = self._inner_factory(**transport_kwargs)
        elif transport_kwargs:
            raise TypeError("pass either a transport to wrap or keyword arguments to build one, not both")
        if finish_policy not in ("abort", "finish_if_done"):
            raise ValueError(f"finish_policy must be 'abort' or 'finish_if_done', not {finish_policy!r}")
        self.transport = transport
        self.profile = profile if profile is not None else _default_profile()
        self.finish_policy: FinishPolicy = finish_policy


class AsyncTransportMixin(_TransportBase):
    async def handle_async_request(self, request: Any) -> Any:
        return await send_async(self.transport, request, self.profile, self.finish_policy, self._body_cls)

    async def aclose(self) -> None:
        await self.transport.aclose()


class SyncTransportMixin(_TransportBase):
    def __init__(self, transport: Any = None, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        #: False for transports without a socket pool: they can be refused, not interrupted
        self.interruptible = install_tracking(self.transport)

    def handle_request(self, request: Any) -> Any:
        return send_sync(self.transport, request, self.profile, self.finish_policy, self._body_cls)

    def close(self) -> None:
        self.transport.close()


def wrap_client(client: Any, scoped_cls: Any, profile: Profile | None, finish_policy: FinishPolicy = "abort") -> None:
    """Put a scoped transport around every transport an httpx(2) client holds.

    httpx has no public setter for a client's transports (``transport=`` replaces
    only the default one, not the proxy mounts), so we wrap the instance's own.
    Idempotent: an already scoped transport is left as it is.
    """

    def wrap(transport: Any) -> Any:
        if transport is None or isinstance(transport, _TransportBase):
            return transport
        return scoped_cls(transport, profile=profile, finish_policy=finish_policy)

    client._transport = wrap(client._transport)
    client._mounts = {pattern: wrap(t) for pattern, t in client._mounts.items()}


class ClientMixin:
    _scoped_transport: ClassVar[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("http2"):
            raise UnsupportedError(HTTP2_UNSUPPORTED)
        super().__init__(*args, **kwargs)
        wrap_client(self, self._scoped_transport, None)


def inject(
    kwargs: dict[str, Any],
    key: str,
    default_client: Any,
    profile: Profile,
    finish_policy: FinishPolicy,
    *,
    is_async: bool,
) -> None:
    """Give a vendor SDK constructor a scoped HTTP client under ``kwargs[key]``.

    ``default_client()`` builds the SDK's own default client (its timeouts, limits and
    redirects); a client the user passed is wrapped in place, never replaced, so its
    headers, auth, proxies and event hooks are kept.
    """
    client = kwargs.get(key)
    if client is None:
        client = default_client()
        kwargs[key] = client
    wrap_client(client, scoped_transport_for(client, is_async=is_async), profile, finish_policy)


def scoped_transport_for(client: Any, *, is_async: bool) -> Any:
    """The scoped transport class matching the HTTP library ``client`` belongs to."""
    module = type(client).__module__.split(".", 1)[0]
    for base in type(client).__mro__:
        if base.__module__.split(".", 1)[0] in ("httpx", "httpx2"):
            module = base.__module__.split(".", 1)[0]
            break
    if module == "httpx":
        from . import httpx as scoped
    elif module == "httpx2":
        from . import httpx2 as scoped  # type: ignore[no-redef]
    else:
        raise TypeError(f"scoped_clients can wrap httpx or httpx2 clients, not {type(client).__qualname__}")
    return scoped.AsyncScopedTransport if is_async else scoped.ScopedTransport
