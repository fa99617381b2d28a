"""The drop-in client names: subclasses of the vendor's classes whose instances are the vendor's own.

Why the instances are not of our class (the first design): a subclass instance
is not an instance of the vendor's class, and the SDKs test exactly that.
anthropic resolves credential profiles, workload identity and OAuth, and
carries ``credentials=`` through ``copy()``, only when ``type(client) in
(Anthropic, AsyncAnthropic)``; an instance of a subclass could not authenticate
through a profile.  A subclass's constructor also had to replace the SDK's
default HTTP client (losing the SDK's own class, its limits and its close on
garbage collection) and to change the caller's ``http_client`` before the SDK
validated it.

So calling ``scoped_clients.openai.AsyncOpenAI(...)`` builds the vendor's
client itself, exactly as ``openai.AsyncOpenAI(...)`` would (its signature,
validation, credentials, default HTTP client, proxies and TLS options), and
then scopes the HTTP client the SDK ended up with, one layer below the SDK:

* the SDK's own default client is scoped in place: nobody else holds it;
* a client the caller passed is left exactly as they gave it: the SDK gets a
  shallow copy of it (same class, headers, auth, cookies, event hooks, pool)
  whose transports are scoped.

The result *is* a vendor instance (``type(client) is openai.AsyncOpenAI``).
The name itself is a subclass of the vendor's class
(``issubclass(scoped_clients.openai.AsyncOpenAI, openai.AsyncOpenAI)``), so that
code that enumerates or checks client classes (anthropic's own tests collect
every exported ``BaseClient`` subclass) treats it as the vendor's; its metaclass
(``DropIn``) makes calling it build the vendor's instance.
``copy()`` / ``with_options()`` pass the scoped HTTP client on, so copies stay
scoped; ``isinstance(client, scoped_clients.openai.AsyncOpenAI)`` tells a scoped
client from a plain one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from collections.abc import Callable, Container
from typing import Any, TypeVar

from ._calls import Profile
from ._transport import FinishPolicy, check_options
from ._transport._base import is_scoped, scope_http_client
from ._transport._base import vendor_http_client as scope_vendor_http_client
from ._vendors import Vendor, by_sdk

_EXTRA_OPTIONS = {
    "always_stream": inspect.Parameter("always_stream", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
    "finish_policy": inspect.Parameter(
        "finish_policy",
        inspect.Parameter.KEYWORD_ONLY,
        default="abort",
        annotation="Literal['abort', 'finish_if_done']",
    ),
}

T = TypeVar("T")

#: vendor class -> drop-in name, for ``scope_client``
_REGISTRY: dict[type, DropIn] = {}


class DropIn(type):
    """Metaclass of the drop-in names.

    A drop-in name is a subclass of the vendor's class, declared with keyword arguments
    (``dropins()`` builds them from a vendor module's ``DropInName`` declarations)::

        class AsyncOpenAI(openai.AsyncOpenAI, metaclass=DropIn, vendor=openai.AsyncOpenAI,
                          profile=OpenAIProfile, http_path=("_client",), http_arg="http_client"): ...

    ``http_path`` is where the vendor instance keeps its httpx(2) client;
    ``http_arg`` the constructor argument through which a caller passes their own;
    ``more_http`` further such pairs (an SDK with a sync and an async client).
    """

    vendor: type
    profile: Callable[[], Profile]
    http_path: tuple[str, ...]
    http_arg: str | None
    #: every ``(http_path, http_arg)`` of an instance, the first one first
    seats: tuple[tuple[tuple[str, ...], str | None], ...]
    options: tuple[str, ...]
    check: Callable[[tuple[Any, ...], dict[str, Any]], None] | None
    on_scoped: Callable[[Any], None] | None
    scope: Callable[[Any, Callable[[Any, bool], Any]], None] | None

    def __new__(
        mcs,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        *,
        vendor: type | None = None,
        profile: Callable[[], Profile] | None = None,
        http_path: tuple[str, ...] = (),
        http_arg: str | None = None,
        options: tuple[str, ...] = ("always_stream", "finish_policy"),
        check: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
        more_http: tuple[tuple[tuple[str, ...], str | None], ...] = (),
        on_scoped: Callable[[Any], None] | None = None,
        scope: Callable[[Any, Callable[[Any, bool], Any]], None] | None = None,
    ) -> DropIn:
        parent = next((base for base in bases if isinstance(base, DropIn)), None)
        if parent is not None:
            return parent.subclass(name, bases, namespace)  # type: ignore[return-value]
        if vendor is None or profile is None or not http_path:
            raise TypeError(f"{name}: a drop-in name needs vendor=, profile= and http_path=")
        if bases != (vendor,):
            raise TypeError(f"{name}: a drop-in name subclasses its vendor's class and nothing else")
        namespace.setdefault("__doc__", vendor.__doc__)
        cls = super().__new__(mcs, name, bases, namespace)
        cls.vendor, cls.profile, cls.http_path, cls.http_arg = vendor, profile, http_path, http_arg
        cls.seats = ((http_path, http_arg), *more_http)
        cls.options, cls.check, cls.on_scoped = options, check, on_scoped
        cls.options, cls.check, cls.scope = options, check, scope
        cls.__signature__ = _signature(vendor, options)  # type: ignore[attr-defined]
        _REGISTRY[vendor] = cls
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        always_stream, finish_policy = cls.options_from(kwargs)
        if cls.check is not None:
            cls.check(args, kwargs)
        client = cls.vendor(*args, **kwargs)  # the SDK validates and builds everything its own way
        given = cls.given_http(args, kwargs)
        cls.scope_instance(client, given=given, always_stream=always_stream, finish_policy=finish_policy)
        return client

    def given_http(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> frozenset[str]:
        """The HTTP client arguments a constructor call passed (not None), by keyword or position."""
        names = {arg for _, arg in cls.seats if arg is not None}
        if args:
            try:
                bound = inspect.signature(cls.vendor).bind_partial(*args, **kwargs).arguments
            except TypeError:  # the vendor's constructor accepted what its signature does not say
                bound = kwargs
        else:
            bound = kwargs
        return frozenset(name for name in names if bound.get(name) is not None)

    def subclass(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
        """A user's ``class Mine(AsyncOpenAI)``: a real subclass of the vendor's class, scoped at init.

        Its instances are of the user's class, as they would be without us (and, like any
        subclass of the vendor's, fail the vendor's exact-type checks); copies stay scoped.
        """
        real_bases = tuple(base.vendor if isinstance(base, DropIn) else base for base in bases)
        real = type(cls.vendor)(name, real_bases, namespace)
        init: Callable[..., None] = real.__init__  # type: ignore[misc]
        dropin = cls

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            always_stream, finish_policy = dropin.options_from(kwargs)
            init(self, *args, **kwargs)
            given = dropin.given_http(args, kwargs)
            dropin.scope_instance(self, given=given, always_stream=always_stream, finish_policy=finish_policy)

        real.__init__ = __init__  # type: ignore[misc]
        real.__scoped_dropin__ = cls  # type: ignore[attr-defined]
        _REGISTRY[real] = cls
        return real

    def options_from(cls, kwargs: dict[str, Any]) -> tuple[bool, FinishPolicy]:
        """Take our options out of a constructor's keyword arguments, validated."""
        always_stream = kwargs.pop("always_stream", False) if "always_stream" in cls.options else False
        finish_policy: FinishPolicy = (
            kwargs.pop("finish_policy", "abort") if "finish_policy" in cls.options else "abort"
        )
        check_options(finish_policy, always_stream)
        return always_stream, finish_policy

    def scope_instance(
        cls,
        client: Any,
        *,
        given: Container[str | None],
        always_stream: bool = False,
        finish_policy: FinishPolicy = "abort",
    ) -> None:
        """Scope the HTTP clients a vendor instance holds (nothing to do for one without HTTP).

        ``given``: the ``http_arg`` names whose client is not the SDK's own (the caller's, or
        passed on by a copy): those are left as they are, and the SDK gets a scoped copy. A vendor
        module that declares ``scope=`` scopes the instance's clients itself (it tells the SDK's own
        from the caller's).
        """

        def scope_one(http: Any, built: bool) -> Any:
            return scope_http_client(http, cls.profile(), finish_policy, always_stream, built_by_sdk=built)

        if cls.scope is not None:  # the vendor module scopes the instance's HTTP clients itself
            cls.scope(client, scope_one)
            scoped_any = True
        else:
            scoped_any = False
            for path, arg in cls.seats:
                holder, attribute = _holder(client, path)
                if holder is not None:
                    setattr(holder, attribute, scope_one(getattr(holder, attribute), arg not in given))
                    scoped_any = True
        if not scoped_any:
            return
        if cls.on_scoped is not None:
            cls.on_scoped(client)
        vendor_copy = getattr(type(client), "copy", None)
        if vendor_copy is not None:
            # Copies stay scoped even when given another HTTP client, and take our options.
            client.copy = client.with_options = ScopedCopy(cls, vendor_copy, client)

    def __instancecheck__(cls, instance: Any) -> bool:
        if not isinstance(instance, cls.vendor):
            return False
        holders = [_holder(instance, path) for path, _ in cls.seats]
        return all(holder is None or is_scoped(getattr(holder, attribute)) for holder, attribute in holders)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return subclass is cls or (hasattr(subclass, "__scoped_dropin__") and issubclass(subclass, cls.vendor))

    def __repr__(cls) -> str:
        return f"<scoped drop-in for {cls.vendor.__module__}.{cls.vendor.__qualname__}>"


_built: dict[str, dict[str, DropIn]] = {}


def dropins(vendor: Vendor) -> dict[str, DropIn]:
    """The drop-in names a vendor module declares, built once (this imports the vendor's SDK)."""
    built = _built.get(vendor.provider)
    if built is None:
        assert vendor.sdk is not None and vendor.shim is not None, f"{vendor.provider} declares no drop-in names"
        sdk = importlib.import_module(vendor.sdk)
        built = {}
        for declared in vendor.dropins:
            namespace = {"__module__": vendor.shim, "__qualname__": declared.name, "__doc__": declared.doc}
            vendor_cls = getattr(sdk, declared.name)
            built[declared.name] = DropIn(
                declared.name,
                (vendor_cls,),
                namespace,
                vendor=vendor_cls,
                profile=vendor.profile,
                http_path=declared.http_path,
                http_arg=declared.http_arg,
                options=declared.options,
                check=declared.check,
                more_http=declared.more_http,
                on_scoped=declared.on_scoped,
                scope=declared.scope,
            )
        _built[vendor.provider] = built
    return built


def vendor_http_client(
    vendor: Vendor, kind: str, kwargs: dict[str, Any], *, finish_policy: FinishPolicy, always_stream: bool
) -> Any:
    """The vendor SDK's own default HTTP client (``kind``: ``"async"`` or ``"sync"``), scoped with its profile."""
    sdk = importlib.import_module(str(vendor.sdk))
    factory = next(getattr(sdk, name) for name in vendor.http_clients[kind] if hasattr(sdk, name))
    return scope_vendor_http_client(
        factory, vendor.profile(), kwargs, finish_policy=finish_policy, always_stream=always_stream
    )


class ScopedCopy:
    """``copy()`` / ``with_options()`` of a scoped vendor instance: the vendor's, then scoped.

    Set on the instance (which is of the vendor's class).  Two are equal when they copy
    the same way (the same drop-in over the same vendor method), as the methods of two
    clients of one class are: code that compares a client's state with its copy's
    (anthropic's own tests compare ``vars(client)``) finds them equal.
    """

    __slots__ = ("__name__", "__signature__", "__wrapped__", "_client", "_dropin")

    def __init__(self, dropin: DropIn, vendor_copy: Callable[..., Any], client: Any) -> None:
        self._dropin = dropin
        self._client = client
        self.__wrapped__ = vendor_copy
        self.__name__ = getattr(vendor_copy, "__name__", "copy")
        self.__signature__ = inspect.signature(types.MethodType(vendor_copy, client))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dropin, client = self._dropin, self._client
        options = {name: kwargs.pop(name) for name in dropin.options if name in kwargs}
        result = self.__wrapped__(client, *args, **kwargs)
        merged = {**_options_of(client, dropin), **options}
        dropin.scope_instance(result, given=_EVERY, **merged)  # a scoped HTTP client passed on is kept as it is
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScopedCopy):
            return NotImplemented
        return self._dropin is other._dropin and self.__wrapped__ is other.__wrapped__

    def __hash__(self) -> int:
        return hash((id(self._dropin), id(self.__wrapped__)))

    def __repr__(self) -> str:
        return f"<scoped {self.__name__} of {self._client!r}>"


class _Every:
    """``given`` for a copy: every HTTP client of its instance was passed on to it."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERY = _Every()


def _options_of(client: Any, dropin: DropIn) -> dict[str, Any]:
    """The options a scoped vendor instance's HTTP clients were scoped with."""
    holder, attribute = next((h for h in (_holder(client, p) for p, _ in dropin.seats) if h[0] is not None), (None, ""))
    http = getattr(holder, attribute, None)
    transport = getattr(http, "_transport", None)
    options = {
        "always_stream": getattr(transport, "always_stream", False),
        "finish_policy": getattr(transport, "finish_policy", "abort"),
    }
    return {name: options[name] for name in dropin.options}


def _holder(client: Any, path: tuple[str, ...]) -> tuple[Any, str]:
    """The object holding the last attribute of ``path``, or ``(None, "")`` if the path is absent."""
    holder = client
    for attribute in path[:-1]:
        holder = getattr(holder, attribute, None)
        if holder is None:
            return None, ""
    if not hasattr(holder, path[-1]) or getattr(holder, path[-1]) is None:
        return None, ""
    return holder, path[-1]


def _signature(vendor: type, options: tuple[str, ...]) -> inspect.Signature:
    """The vendor constructor's signature plus our keyword-only options (before any ``**kwargs``)."""
    signature = inspect.signature(vendor)
    parameters = list(signature.parameters.values())
    extras = [_EXTRA_OPTIONS[name] for name in options]
    var_keyword = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    plain = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=[*plain, *extras, *var_keyword])


def scope_client(client: T, *, always_stream: bool = False, finish_policy: FinishPolicy = "abort") -> T:
    """Scope a vendor client someone else built (a framework, a factory) and return it.

    The vendor instance itself is changed: from now on its calls, and those of its
    copies, belong to the ambient ``RequestScope``.  An HTTP client of the SDK's
    own class is scoped in place; any other (the caller's) is left as it is and
    the vendor instance gets a scoped copy of it.

    Args:
        client: a client of a supported SDK (``openai.AsyncOpenAI``, ``anthropic.Anthropic``,
            ``cohere.ClientV2``, ``qdrant_client.AsyncQdrantClient``...).
        always_stream: send non-streamed generations as streams (OpenAI, Anthropic).
        finish_policy: ``"abort"`` (default) or ``"finish_if_done"``: let a stream whose finish reason
            already arrived complete on cancel.
    """
    check_options(finish_policy, always_stream)
    for base in type(client).__mro__:  # register the drop-ins of the client's SDK
        names = base.__module__.split(".")
        for sdk in (names[0], ".".join(names[:2])):  # "openai", or a namespace package's "google.genai"
            vendor = by_sdk(sdk)
            if vendor is not None and vendor.dropins:
                dropins(vendor)
    for vendor_cls in type(client).__mro__:
        dropin = _REGISTRY.get(vendor_cls)
        if dropin is not None:
            break
    else:
        known = ", ".join(sorted(f"{v.__module__.split('.')[0]}.{v.__qualname__}" for v in _REGISTRY))
        raise TypeError(f"scope_client() takes a vendor SDK client ({known}), not {type(client).__qualname__}")
    vendor_root = dropin.vendor.__module__.split(".", 1)[0]
    given = set()
    for path, arg in dropin.seats:
        holder, attribute = _holder(client, path)
        if holder is not None and type(getattr(holder, attribute)).__module__.split(".", 1)[0] != vendor_root:
            given.add(arg)  # not of the SDK's own HTTP client class: maybe the caller's, left as it is
    dropin.scope_instance(client, given=given, always_stream=always_stream, finish_policy=finish_policy)
    return client
