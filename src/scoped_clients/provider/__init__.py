"""An embedded local provider: one loopback HTTP/1.1 server speaking the OpenAI,
Anthropic, Cohere and Qdrant wire protocols, for tests, the demo and benchmarks.

It records, per request, every unit of work it produced and when it saw the
client go, so that tests assert what the *upstream* observed::

    with LocalProvider(token_interval=0.01, default_tokens=50) as provider:
        client = scoped_clients.openai.AsyncOpenAI(base_url=provider.url + "/v1", api_key="x")
        ...
        (log,) = provider.requests
        log.wait_disconnect()
        assert log.units_after(t_cancel) <= 1

See ``_vendors.py`` for the model-name conventions (``"local-80"``, ``"error-500"``,
``"malformed"``).  A request header ``x-local-delay: SECONDS`` delays the response
headers (interruptibly).
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Self

from ._log import RequestLog
from ._server import Server
from ._vendors import Vendors, embed

__all__ = ["LocalProvider", "RequestLog", "embed"]


class LocalProvider:
    """The loopback provider, running on its own event loop in a daemon thread."""

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
        return self._server.port

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self._host}:{self.port}"

    @property
    def requests(self) -> list[RequestLog]:
        """The requests received so far, in arrival order (a snapshot)."""
        return list(self._server.requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RequestLog]:
        """Block until ``n`` requests have arrived; returns them."""
        return self._server.wait_for_requests(n, timeout)

    def reset(self) -> None:
        """Forget the request logs (collections and settings are kept)."""
        self._server.reset()
