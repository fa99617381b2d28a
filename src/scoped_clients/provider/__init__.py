"""An embedded local provider: one loopback HTTP/1.1 server speaking the OpenAI,
Anthropic, Cohere, Qdrant, Gemini, Groq and Mistral wire protocols, for tests, the demo
and benchmarks.

It records, per request, every unit of work it produced and when it saw the
client go, so that tests assert what the *upstream* observed::

    with LocalProvider(token_interval=0.01, default_tokens=50) as provider:
        client = scoped_clients.openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
        ...
        (log,) = provider.requests
        log.wait_disconnect()
        assert log.units_after(t_cancel) <= 1

Where each SDK points (``provider.url`` is ``http://127.0.0.1:PORT``): OpenAI ``base_url=url + "/v1"``;
Anthropic, Cohere and Groq ``base_url=url``; Qdrant ``url``; google-genai
``HttpOptions(base_url=url)`` (Gemini's ``/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent``, ``:countTokens``, ``:embedContent``, ``:batchEmbedContents``; ``/v1/...``
too); Mistral ``server_url=url + "/mistral"`` (its ``/v1/chat/completions`` is OpenAI's here).
LiteLLM ``api_base``: ``openai/`` ``url + "/v1"``, ``anthropic/`` ``url``, ``gemini/`` ``url + "/v1beta"``,
``cohere/`` ``url + "/v2/chat"``, ``groq/`` ``url + "/openai/v1"``, ``mistral/`` ``url + "/mistral/v1"``.

See ``_vendors.py`` for the model-name conventions (``"local-80"``, ``"error-500"``,
``"malformed"``, ``"not-json"``).  A request header ``x-local-delay: SECONDS`` delays
the response headers (interruptibly).

Scripted answers, for agent flows: text and tool calls in each vendor's real wire
format (OpenAI chat ``tool_calls``, Responses ``function_call`` items, Anthropic
``tool_use`` blocks, Gemini ``functionCall`` parts, Groq and Mistral whole tool-call deltas),
streamed or not, parsed by the real SDKs::

    provider.script(
        Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]),  # the next request
        Reply(text="It is sunny in Paris."),  # the one after
        model="agent",  # only requests for this model (default: any model)
    )
    provider.script([Reply(text="a"), Reply(text="b")])  # a list: several choices (OpenAI chat)

Each text token and each streamed piece of a tool call's arguments (``ToolCall``'s
``arguments``: a dict, a JSON string cut every 4 characters, or the list of pieces
itself) is one unit of the request's log.  The request's ``max_tokens`` cuts them;
usage reports the units produced; ``Reply(stop_reason=...)`` replaces the vendor's
stop reason.  Unscripted requests are answered as before.  ``reset()`` drops what is
still queued.
"""

from __future__ import annotations

import ssl
import threading
from collections import deque
from types import TracebackType
from typing import Self

from ._log import RequestLog
from ._script import Answer, Reply, ToolCall
from ._server import Server
from ._vendors import Vendors, embed

__all__ = ["LocalProvider", "Reply", "RequestLog", "ToolCall", "embed"]


class LocalProvider:
    """The loopback provider, running on its own event loop in a daemon thread.

    Args:
        host: the address to listen on.
        port: the port to listen on (0: any free one; see ``port`` and ``url``).
        token_interval: seconds between two tokens (0: as fast as the client reads).
        default_tokens: tokens produced for models without a ``local-N`` suffix.
        search_delay: seconds a qdrant query or a cohere rerank works before answering.
        ssl_context: serve HTTPS with this context (default: plain HTTP).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_interval: float = 0.01,
        default_tokens: int = 50,
        search_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        #: seconds between two tokens (0: as fast as the client reads)
        self.token_interval = token_interval
        #: tokens produced for models without a ``local-N`` suffix
        self.default_tokens = default_tokens
        #: seconds a qdrant query or a cohere rerank works before answering
        self.search_delay = search_delay
        self._host = host
        self._scheme = "https" if ssl_context is not None else "http"
        self._scripts: dict[str | None, deque[list[Reply]]] = {}
        self._scripts_lock = threading.Lock()
        self._vendors = Vendors(self)
        self._server = Server(self._vendors.route, host, port, ssl_context)
        self._started = False

    def start(self) -> Self:
        if not self._started:
            self._server.start()
            self._started = True
        return self

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self._started:
            self._server.stop()
            self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._server.port

    @property
    def url(self) -> str:
        """Its base URL (``http://127.0.0.1:<port>``): OpenAI clients take ``url + "/v1"``, the others ``url``."""
        return f"{self._scheme}://{self._host}:{self.port}"

    @property
    def requests(self) -> list[RequestLog]:
        """The requests received so far, in arrival order (a snapshot)."""
        return list(self._server.requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RequestLog]:
        """Block until ``n`` requests have arrived, at most ``timeout`` seconds; returns them."""
        return self._server.wait_for_requests(n, timeout)

    def reset(self) -> None:
        """Forget the request logs and the scripted answers still queued (collections and settings are kept)."""
        self._server.reset()
        with self._scripts_lock:
            self._scripts.clear()

    def script(self, *answers: Answer, model: str | None = None) -> None:
        """Queue answers for the next generation requests (for ``model`` only, or any model).

        An answer is a ``Reply`` (text, tool calls, stop reason) or a list of them:
        several choices of one answer (OpenAI chat only).
        """
        batch = []
        for answer in answers:
            choices = [answer] if isinstance(answer, Reply) else list(answer)
            if not choices or not all(isinstance(c, Reply) for c in choices):
                raise TypeError(f"script() takes Reply objects or non-empty lists of them, not {answer!r}")
            batch.append(choices)
        with self._scripts_lock:
            self._scripts.setdefault(model, deque()).extend(batch)

    def _take_script(self, model: object) -> list[Reply] | None:
        """The next scripted answer for a request naming ``model``, if any (the server's side)."""
        with self._scripts_lock:
            for key in (model if isinstance(model, str) else None, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
        return None
