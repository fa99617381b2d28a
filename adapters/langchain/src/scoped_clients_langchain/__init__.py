"""LangChain and LangGraph integration for scoped_clients.

Three things go wrong without it, measured on langchain-core 1.8, langchain-openai 1.7,
langchain-anthropic 1.7 and langgraph 1.2:

* langchain-core's ``agenerate`` gathers its generations with ``return_exceptions=True``
  and then reads ``.generations`` from every result that is not an ``Exception``: a
  ``ScopeCancelled`` (a ``BaseException``, so that the SDKs never retry it) comes out as
  ``AttributeError: 'ScopeCancelled' object has no attribute 'generations'``, which
  LangGraph's default ``RetryPolicy`` then retries.  :class:`PropagateCancellation`
  re-raises the cancellation from the ``on_llm_error`` callback, before that line.
* ``ChatOpenAI(root_async_client=...)`` alone is replaced by an unscoped client (it keeps
  a root client only when ``async_client`` is given too), and ``ChatAnthropic`` takes no
  client at all.  :func:`scope_model` scopes the vendor clients a chat model built.
* LangGraph retries what a predicate allows: :func:`retry_on` never allows a retry once
  the ambient scope is cancelled (a ``BaseException`` is never retried by LangGraph).

Usage::

    from langchain_openai import ChatOpenAI
    from scoped_clients_langchain import retry_policy, scope_model

    llm = scope_model(ChatOpenAI(model="gpt-4o-mini"))
    graph.add_node("agent", call_model, retry_policy=retry_policy(max_attempts=3))

LangChain's async API runs on asyncio only (``asyncio.gather``); its sync API works from
any thread, and ``scope.cancel()`` from another thread aborts its blocking reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager

from scoped_clients import current_scope, scope_client

__all__ = ["PropagateCancellation", "retry_on", "retry_policy", "scope_model"]

M = TypeVar("M")

#: The vendor clients each LangChain integration builds, by the attribute that holds them,
#: and the scoped_clients module that registers the vendor's class.
_CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "langchain_openai": ("scoped_clients.openai", ("root_client", "root_async_client")),
    # ChatAnthropic builds its clients lazily in these cached properties (no public client argument).
    "langchain_anthropic": ("scoped_clients.anthropic", ("_client", "_async_client")),
}


class PropagateCancellation(BaseCallbackHandler):
    """Re-raise a cancellation (``ScopeCancelled``, ``CancelledError``: any ``BaseException``
    that is not an ``Exception``) from ``on_llm_error``, so that it leaves the chat model as
    itself instead of as langchain-core's ``AttributeError``.  Other errors are left alone."""

    run_inline = True  # in the caller's task: no executor thread

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        if not isinstance(error, Exception):
            raise error


_PROPAGATE = PropagateCancellation()


def scope_model(model: M) -> M:
    """Scope a LangChain chat model in place and return it.

    The vendor clients it built (``ChatOpenAI``/``AzureChatOpenAI``: ``root_client`` and
    ``root_async_client``; ``ChatAnthropic``: the clients it creates on first use) now belong
    to the ambient ``RequestScope``, and a cancelled scope leaves the model as a cancellation.
    Any other chat model gets the cancellation fix only: give it scoped HTTP clients
    (``scoped_clients.openai.async_http_client()``, ``scoped_clients.httpx2.AsyncClient()``).
    """
    for base in type(model).__mro__:
        entry = _CLIENTS.get(base.__module__.split(".", 1)[0])
        if entry is not None:
            module, attributes = entry
            importlib.import_module(module)  # registers the vendor's classes with scope_client()
            for attribute in attributes:
                client = getattr(model, attribute, None)
                if client is not None:
                    scope_client(client)
            break
    _add_handler(model)
    return model


def _add_handler(model: Any) -> None:
    callbacks = getattr(model, "callbacks", None)
    if isinstance(callbacks, BaseCallbackManager):
        if _PROPAGATE not in callbacks.handlers:
            callbacks.add_handler(_PROPAGATE, inherit=True)
    elif callbacks is None:
        model.callbacks = [_PROPAGATE]
    elif _PROPAGATE not in callbacks:
        model.callbacks = [*callbacks, _PROPAGATE]


def _default_retry_on() -> Callable[[Exception], bool]:
    from langgraph.types import RetryPolicy

    predicate: Callable[[Exception], bool] = RetryPolicy().retry_on  # type: ignore[assignment]
    return predicate


def retry_on(exc: Exception, *, base: Callable[[Exception], bool] | None = None) -> bool:
    """A LangGraph ``RetryPolicy.retry_on`` predicate: never once the ambient scope is
    cancelled; otherwise ``base`` (default: LangGraph's own default predicate) decides."""
    scope = current_scope()
    if scope is not None and scope.cancelled:
        return False
    return (base or _default_retry_on())(exc)


def retry_policy(*, retry_on: Callable[[Exception], bool] | None = None, **kwargs: Any) -> Any:
    """``langgraph.types.RetryPolicy(**kwargs)`` whose predicate (yours, or LangGraph's
    default) is never asked once the ambient scope is cancelled."""
    from langgraph.types import RetryPolicy

    base = retry_on

    def predicate(exc: Exception) -> bool:
        return _retry_on(exc, base=base)

    return RetryPolicy(retry_on=predicate, **kwargs)


_retry_on = retry_on
