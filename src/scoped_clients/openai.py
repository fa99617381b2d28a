"""Drop-in OpenAI clients whose calls belong to the ambient ``RequestScope``.

``from scoped_clients.openai import AsyncOpenAI`` instead of ``from openai import
AsyncOpenAI``: same constructor, methods, return types and exceptions, and
``isinstance(client, openai.AsyncOpenAI)`` holds.  The only addition is the
keyword ``finish_policy``: ``"abort"`` (default) aborts every stream on cancel;
``"finish_if_done"`` lets a stream whose finish reason already arrived complete,
so that the provider's billed usage is received.
"""

from __future__ import annotations

from typing import Any

import openai

from ._clients import inject
from ._profiles.openai import OpenAIProfile
from ._transport import FinishPolicy

__all__ = ["AsyncOpenAI", "OpenAI"]


class AsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` with a scoped HTTP layer (``with_options()``/``copy()`` stay scoped)."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        inject(kwargs, "http_client", openai.DefaultAsyncHttpxClient, OpenAIProfile(), finish_policy, is_async=True)
        super().__init__(*args, **kwargs)


class OpenAI(openai.OpenAI):
    """``openai.OpenAI`` with a scoped HTTP layer; ``cancel()`` from another thread unblocks its reads."""

    def __init__(self, *args: Any, finish_policy: FinishPolicy = "abort", **kwargs: Any) -> None:
        inject(kwargs, "http_client", openai.DefaultHttpxClient, OpenAIProfile(), finish_policy, is_async=False)
        super().__init__(*args, **kwargs)
