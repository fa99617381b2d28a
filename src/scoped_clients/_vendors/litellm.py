"""LiteLLM (``litellm`` 1.110): its calls routed through the scoped transports, provider by provider.

LiteLLM is not an HTTP vendor of its own: it speaks each provider's wire format, so
its calls are named and metered by the provider's profile (``_vendors/openai.py``,
``anthropic.py``, ``cohere.py``..., the generic profile for a provider no vendor
module knows yet), with the provider and model LiteLLM itself resolves
(``litellm.get_llm_provider``).  This module therefore declares no ``Vendor`` (the
registry lists the HTTP vendors); it holds the wrappers that ``scoped_clients.litellm``
exports.

LiteLLM has no single seam (docs/vendors-next.md has the measurements), so inside a
scope each call gets what its provider's path honours:

* ``openai/``: a per-call ``client=`` ``AsyncOpenAI`` / ``OpenAI`` built with the
  api key and base LiteLLM would use, on a scoped httpx client (LiteLLM uses a
  ``client=`` of that type as it is, setting only its ``max_retries`` and
  ``organization``);
* ``anthropic/``, ``gemini/``, ``groq/``, ``mistral/``: a per-call ``client=``
  ``AsyncHTTPHandler`` / ``HTTPHandler`` on a scoped httpx transport (native httpx,
  never LiteLLM's aiohttp transport, whose ``aclose()`` leaves the connection open);
* ``cohere/`` (its dispatcher never passes ``client`` on) and any other LiteLLM
  code that fetches an HTTP handler from ``litellm.in_memory_llm_clients_cache``
  during the call: for the call's duration only, that cache's ``get_cache`` answers
  the call's own scoped handler to the calls of this context (and LiteLLM's cached
  one to everyone else); the cache is given back untouched when the last scoped call
  ends.

The scoped transports of one call share one connection pool per event loop (and one
for sync calls), which this module owns: ``close_clients()`` closes them.  Around
the call, ``litellm.num_retries`` is put back if the call's failure cleared it (LiteLLM
sets it to ``None`` after a failed call).  A cancelled call is never re-sent: the
scoped transport raises ``ScopeCancelled`` (not an ``Exception``, so neither
LiteLLM's retries, nor its ``ConnectError`` re-send, nor the openai SDK's retries
catch it) and refuses any request of the cancelled scope.

Out of reach, refused inside a scope (``UnsupportedError`` saying so): providers not
in ``COVERED`` (among them the raw aiohttp ones, ``aiohttp_openai/``), a ``client=``
the caller passes that is not scoped, ``EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER``
for ``openai/``.  Outside a scope every function is LiteLLM's own call, untouched.
LiteLLM runs on asyncio only: on Trio the async functions raise ``UnsupportedError``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

from .._calls import CallInfo, Meter, Profile
from .._exceptions import UnsupportedError
from .._scope import RequestScope, current_scope
from . import by_provider
from .generic import GenericProfile

__all__ = ["COVERED", "LiteLLMProfile", "close_clients", "close_sync_clients", "scoped_async", "scoped_sync"]

#: LiteLLM provider -> the provider names of its vendor modules in the registry (first found wins;
#: the generic profile, which names the call and counts no tokens, when none is there)
COVERED: dict[str, tuple[str, ...]] = {
    "openai": ("openai",),
    "anthropic": ("anthropic",),
    "gemini": ("gcp.gemini",),
    "cohere": ("cohere",),
    "cohere_chat": ("cohere",),
    "groq": ("groq",),
    "mistral": ("mistral_ai",),
}

#: other provider names LiteLLM files a provider's cached handlers under (its async cache keys end with one)
_CACHE_ALIASES = {"gemini": ("vertex_ai",), "cohere": ("cohere_chat",), "cohere_chat": ("cohere",)}

#: providers whose chat path takes an ``AsyncHTTPHandler`` / ``HTTPHandler`` as ``client=``
_HANDLER_CLIENT = frozenset({"anthropic", "gemini", "groq", "mistral"})

ASYNCIO_ONLY = (
    "LiteLLM runs on asyncio only (its clients and caches are bound to asyncio's event loop); "
    "call scoped_clients.litellm's async functions from asyncio (or uvloop), or its sync ones from a thread"
)


def _not_covered(provider: str) -> str:
    covered = ", ".join(f"{name}/" for name in COVERED if name != "cohere_chat")
    return (
        f"scoped_clients.litellm cannot stop LiteLLM's {provider}/ calls at the provider "
        f"(it covers {covered}); inside a RequestScope such a call is refused. Call litellm "
        "directly outside the scope, or use the provider's own scoped client"
    )


CLIENT_NOT_SCOPED = (
    "inside a RequestScope, scoped_clients.litellm passes its own scoped client= to LiteLLM; pass none "
    "(or, for openai/, a scoped_clients.openai client)"
)
EXPERIMENTAL_HANDLER = (
    "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER moves LiteLLM's openai/ calls to a handler scoped_clients "
    "does not cover; unset it to scope openai/ calls"
)


# ------------------------------------------------------------------ the profile


class LiteLLMProfile:
    """A LiteLLM call's profile: its provider's (from the registry), naming LiteLLM's provider and model."""

    def __init__(self, provider: str, model: str | None) -> None:
        self.litellm_provider = provider
        self.model = model
        vendor = next((v for v in map(by_provider, COVERED.get(provider, ())) if v is not None), None)
        self.inner: Profile = vendor.profile() if vendor is not None else GenericProfile()
        self.provider = vendor.provider if vendor is not None else provider

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        info = self.inner.describe(method, url, body)
        info.provider = self.provider
        if info.model is None:
            info.model = self.model
        return info

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        return self.inner.meter(info, status_code, content_type)


# ------------------------------------------------------------------ connection pools


class _Pools:
    """The inner transports (connection pools) the calls' scoped transports share: one per loop, one sync."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_loop: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.sync: Any = None

    def async_pool(self) -> Any:
        import asyncio

        import httpx

        loop = asyncio.get_running_loop()
        pool = self.by_loop.get(loop)
        if pool is None:
            pool = self.by_loop[loop] = httpx.AsyncHTTPTransport(verify=_ssl_verify())
        return pool

    def sync_pool(self) -> Any:
        import httpx

        with self.lock:
            if self.sync is None:
                self.sync = httpx.HTTPTransport(verify=_ssl_verify())
            return self.sync


_pools = _Pools()


def _ssl_verify() -> Any:
    """LiteLLM's own TLS settings (``litellm.ssl_verify``, ``SSL_CERT_FILE``...)."""
    from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

    return get_ssl_configuration()


async def close_clients() -> None:
    """Close the connection pools of the scoped calls (this loop's and the sync one)."""
    import asyncio

    pool = _pools.by_loop.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.aclose()
    close_sync_clients()


def close_sync_clients() -> None:
    """Close the connection pool of the scoped sync calls."""
    with _pools.lock:
        sync, _pools.sync = _pools.sync, None
    if sync is not None:
        sync.close()


def _call_transports() -> tuple[Any, Any]:
    """The scoped transport classes of one call: closing one never closes the shared pool under it."""
    global _transport_classes
    if _transport_classes is None:
        import httpx

        from .._transport._base import library_classes

        classes = library_classes(httpx)

        class CallTransport(classes.AsyncScopedTransport):  # type: ignore[name-defined,misc]
            async def aclose(self) -> None:
                pass

        class SyncCallTransport(classes.ScopedTransport):  # type: ignore[name-defined,misc]
            def close(self) -> None:
                pass

        _transport_classes = (CallTransport, SyncCallTransport)
    return _transport_classes


_transport_classes: tuple[Any, Any] | None = None


def _async_handler(profile: LiteLLMProfile) -> Any:
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    transport = _call_transports()[0](_pools.async_pool(), profile=profile)
    return AsyncHTTPHandler(transport=transport)


def _sync_handler(profile: LiteLLMProfile) -> Any:
    import httpx
    from litellm.llms.custom_httpx.http_handler import HTTPHandler, get_default_headers

    transport = _call_transports()[1](_pools.sync_pool(), profile=profile)
    client = httpx.Client(transport=transport, headers=get_default_headers(), follow_redirects=True, trust_env=False)
    return HTTPHandler(client=client)


# ------------------------------------------------------------------ the cache seam

#: what the cache answers to this context during a scoped call: the providers whose async handlers
#: it replaces (LiteLLM's async cache keys end with the provider), and the async and sync handler makers
_gated: contextvars.ContextVar[tuple[tuple[str, ...], Callable[[], Any], Callable[[], Any]] | None] = (
    contextvars.ContextVar("scoped_clients_litellm_handlers", default=None)
)


class _CacheGate:
    """``litellm.in_memory_llm_clients_cache.get_cache``, answering a scoped call's own handlers.

    Installed on the cache instance while at least one scoped call runs (counted), removed
    when the last ends: outside a call the cache is LiteLLM's, untouched.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.cache: Any = None

    @contextlib.contextmanager
    def installed(self, litellm: Any) -> Iterator[None]:
        with self.lock:
            if self.count == 0:
                self.cache = litellm.in_memory_llm_clients_cache
                original = self.cache.get_cache

                def get_cache(key: str, *args: Any, **kwargs: Any) -> Any:
                    gated = _gated.get()
                    if gated is not None and isinstance(key, str):
                        providers, async_handler, sync_handler = gated
                        if key.startswith("async_httpx_client") and key.endswith(providers):
                            return async_handler()  # not the logging callbacks' handlers, for example
                        if key.startswith("httpx_client"):  # the sync keys do not name the provider
                            return sync_handler()
                    return original(key, *args, **kwargs)

                self.cache.get_cache = get_cache
            self.count += 1
        try:
            yield
        finally:
            with self.lock:
                self.count -= 1
                if self.count == 0:
                    vars(self.cache).pop("get_cache", None)
                    self.cache = None


_gate = _CacheGate()


# ------------------------------------------------------------------ one call


class _Plan:
    """What one scoped call passes to LiteLLM, and the state it puts back."""

    def __init__(self, litellm: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.litellm = litellm
        self.bound = _signature(fn).bind_partial(*args, **kwargs).arguments
        self.extra: dict[str, Any] = self.bound.get("kwargs", {})
        model = self.get("model")
        try:
            self.model, self.provider, self.dynamic_key, self.dynamic_base = litellm.get_llm_provider(
                model=model,
                custom_llm_provider=self.get("custom_llm_provider"),
                api_base=self.get("api_base") or self.get("base_url"),
                api_key=self.get("api_key"),
            )
        except Exception:  # LiteLLM raises its own error for this call (no request is sent)
            self.provider = None
            return
        if self.provider not in COVERED:
            raise UnsupportedError(_not_covered(self.provider))
        if self.provider == "openai" and _env_true("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"):
            raise UnsupportedError(EXPERIMENTAL_HANDLER)
        self.profile = LiteLLMProfile(self.provider, self.model)
        self.user_client = self.get("client")
        if self.user_client is not None and not _is_scoped_client(self.user_client):
            raise UnsupportedError(CLIENT_NOT_SCOPED)

    def get(self, name: str) -> Any:
        """The call's argument ``name`` (a parameter of LiteLLM's function or one of its ``**kwargs``)."""
        return self.bound.get(name, self.extra.get(name))

    def client(self, kind: str, operation: str) -> Any:
        """The ``client=`` for this call, or None to pass none (the cache seam covers it)."""
        if self.user_client is not None:
            return self.user_client
        if self.provider == "openai" or (self.provider == "mistral" and operation == "embedding"):
            return self.openai_client(kind)  # LiteLLM's OpenAIChatCompletion: an openai SDK client
        if self.provider in _HANDLER_CLIENT:
            return _async_handler(self.profile) if kind == "async" else _sync_handler(self.profile)
        return None

    def openai_client(self, kind: str) -> Any:
        """An ``AsyncOpenAI`` / ``OpenAI`` with the key and base LiteLLM would give the one it builds."""
        import httpx
        import openai

        litellm, get = self.litellm, self.get
        api_base = get("api_base") or get("base_url") or self.dynamic_base
        organization = None
        if self.provider == "openai":
            api_key = get("api_key") or self.dynamic_key or litellm.api_key or litellm.openai_key
            api_key = api_key or os.environ.get("OPENAI_API_KEY")
            api_base = api_base or litellm.api_base or os.environ.get("OPENAI_BASE_URL")
            api_base = api_base or os.environ.get("OPENAI_API_BASE")
            organization = get("organization") or litellm.organization or os.environ.get("OPENAI_ORGANIZATION")
        else:  # mistral/ embeddings
            api_key = get("api_key") or self.dynamic_key or litellm.api_key or os.environ.get("MISTRAL_API_KEY")
        options: dict[str, Any] = {"api_key": api_key, "base_url": api_base, "organization": organization}
        if kind == "async":
            transport = _call_transports()[0](_pools.async_pool(), profile=self.profile)
            http = httpx.AsyncClient(transport=transport, follow_redirects=True, timeout=None)
            return openai.AsyncOpenAI(**options, http_client=cast(Any, http))  # httpx, as LiteLLM passes it
        sync_transport = _call_transports()[1](_pools.sync_pool(), profile=self.profile)
        sync_http: Any = httpx.Client(transport=sync_transport, follow_redirects=True)
        return openai.OpenAI(**options, http_client=sync_http)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The call's duration: the cache seam installed for this context, LiteLLM's globals put back after."""
        profile = self.profile
        providers = (self.provider, *COVERED[self.provider], *_CACHE_ALIASES.get(self.provider, ()))
        gated = (providers, functools.partial(_async_handler, profile), functools.partial(_sync_handler, profile))
        retries = self.litellm.num_retries
        token = _gated.set(gated)
        try:
            with _gate.installed(self.litellm):
                yield
        finally:
            _gated.reset(token)
            if self.litellm.num_retries is None and retries is not None:
                self.litellm.num_retries = retries  # LiteLLM clears it after a failed call


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _is_scoped_client(client: Any) -> bool:
    from .._transport._base import is_scoped

    inner = getattr(client, "_client", None)  # openai's client, LiteLLM's handlers
    return is_scoped(inner) or is_scoped(client)


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _refuse_off_asyncio() -> None:
    import sniffio

    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "asyncio":
        raise UnsupportedError(ASYNCIO_ONLY)


def _lazy_stream(result: Any) -> Any:
    """A stream LiteLLM opens on first read (``make_call``, gemini/): its request, sent now with the call's client.

    On first read LiteLLM would pass ``litellm.module_level_aclient`` / ``module_level_client``,
    creating that global; the call's own client (bound into ``make_call``) wins over ``client=None``.
    """
    if getattr(result, "completion_stream", 0) is None and getattr(result, "make_call", None) is not None:
        return result.make_call(client=None)
    return None


def _opened(result: Any, stream: Any, is_async: bool) -> Any:
    result.completion_stream = stream
    result._stream_iter = stream.__aiter__() if is_async else iter(stream)
    return result


def _cancelled(scope: RequestScope, exc: BaseException) -> None:
    """LiteLLM wraps what a cancelled call raised into its own errors: raise ``ScopeCancelled`` instead."""
    if scope.cancelled:
        try:
            scope.check()
        except BaseException as cancelled:
            raise cancelled from exc


def scoped_async(name: str, operation: str) -> Callable[..., Any]:
    """``litellm.<name>`` (async), its calls under the ambient scope routed through scoped transports."""
    import litellm

    fn = getattr(litellm, name)

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        _refuse_off_asyncio()
        scope = current_scope()
        if scope is None:
            return await fn(*args, **kwargs)
        plan = _Plan(litellm, fn, args, kwargs)
        if plan.provider is None:
            return await fn(*args, **kwargs)
        client = plan.client("async", operation)
        if client is not None:
            kwargs["client"] = client
        with plan.running():
            try:
                result = await fn(*args, **kwargs)
                opening = _lazy_stream(result)
                return result if opening is None else _opened(result, await opening, True)
            except Exception as exc:
                _cancelled(scope, exc)
                raise

    return call


def scoped_sync(name: str, operation: str) -> Callable[..., Any]:
    """``litellm.<name>`` (sync), its calls under the ambient scope routed through scoped transports."""
    import litellm

    fn = getattr(litellm, name)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is None:
            return fn(*args, **kwargs)
        plan = _Plan(litellm, fn, args, kwargs)
        if plan.provider is None:
            return fn(*args, **kwargs)
        client = plan.client("sync", operation)
        if client is not None:
            kwargs["client"] = client
        with plan.running():
            try:
                result = fn(*args, **kwargs)
                opening = _lazy_stream(result)
                return result if opening is None else _opened(result, opening, False)
            except Exception as exc:
                _cancelled(scope, exc)
                raise

    return call
