"""An HTTP/1.1 server on asyncio + h11 that notices a departing client within a millisecond."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

try:
    import h11
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError('scoped_clients.provider needs h11: pip install "scoped-clients[provider]"') from exc

from ._log import RequestLog

MAX_BODY = 10 * 1024 * 1024


class ClientGone(Exception):
    """The client went away while we were serving it."""


class Exchange:
    """One request being served: the handler's view of the connection."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, log: RequestLog) -> None:
        self.conn = conn
        self.writer = writer
        self.log = log
        self.gone = asyncio.Event()
        self.started = False
        self.status = 0

    @property
    def json(self) -> Any:
        return self.log.json

    def unit(self) -> None:
        """Produce one unit of work, unless the client has left."""
        if self.gone.is_set():
            raise ClientGone
        self.log.add_unit()

    async def sleep(self, seconds: float) -> None:
        """Wait, waking at once (with ``ClientGone``) if the client leaves."""
        if self.gone.is_set():
            raise ClientGone
        if seconds <= 0:
            await asyncio.sleep(0)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), seconds)
        if self.gone.is_set():
            raise ClientGone

    async def _write(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            if self.gone.is_set():
                raise ClientGone
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ClientGone from exc

    async def start(self, status: int, content_type: str, length: int | None = None) -> None:
        headers = [("content-type", content_type)]
        headers.append(("transfer-encoding", "chunked") if length is None else ("content-length", str(length)))
        self.status = status
        self.log.set_status(status)
        self.started = True
        await self._write(h11.Response(status_code=status, headers=headers))

    async def send(self, data: bytes) -> None:
        await self._write(h11.Data(data=data))

    async def end(self) -> None:
        await self._write(h11.EndOfMessage())

    async def respond(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        await self.start(status, content_type, len(body))
        await self.send(body)
        await self.end()

    async def respond_json(self, status: int, obj: Any) -> None:
        await self.respond(status, json.dumps(obj).encode())


Handler = Callable[[Exchange], Awaitable[None]]
Router = Callable[[str, str], Handler | None]


class Server:
    """Runs ``router``'s handlers on a private event loop in a daemon thread."""

    def __init__(self, router: Router, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._router = router
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.requests: list[RequestLog] = []
        self._arrived = threading.Condition(self._lock)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="scoped_clients-provider", daemon=True)
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"the local provider could not start: {self._error}") from self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, self._host, self._port, ssl=self._ssl, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

    # --------------------------------------------------------- connections

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                await self._serve(conn, reader, writer, request, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, OSError, h11.RemoteProtocolError, ClientGone):
            return
        except asyncio.CancelledError:  # the provider is shutting down
            return
        finally:
            writer.close()
            with contextlib.suppress(BaseException):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    with contextlib.suppress(h11.RemoteProtocolError):
                        conn.next_event()
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _serve(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        body: bytes,
    ) -> None:
        target = urlsplit(request.target.decode("latin-1"))
        log = RequestLog(
            id=next(self._ids),
            method=request.method.decode(),
            path=target.path,
            query=dict(parse_qsl(target.query)),
            headers={k.decode().lower(): v.decode("latin-1") for k, v in request.headers},
            body=body,
        )
        with self._arrived:
            self.requests.append(log)
            self._arrived.notify_all()
        exchange = Exchange(conn, writer, log)
        watcher = asyncio.create_task(self._watch(reader, exchange))
        try:
            delay = float(log.headers.get("x-local-delay", "0") or 0)
            if delay:
                await exchange.sleep(delay)
            handler = self._router(log.method, log.path)
            if handler is None:
                await exchange.respond_json(404, {"error": {"message": f"no route for {log.method} {log.path}"}})
            else:
                await handler(exchange)
            log.mark_completed(exchange.status)
        except ClientGone:
            log.mark_disconnected()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher

    async def _watch(self, reader: asyncio.StreamReader, exchange: Exchange) -> None:
        """Read while the request is served: EOF or a reset means the client left."""
        try:
            data = await reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            exchange.log.mark_disconnected()
            exchange.gone.set()
        else:  # a pipelined next request: hand it back to h11
            exchange.conn.receive_data(data)

    # -------------------------------------------------------------- waits

    def wait_for_requests(self, n: int, timeout: float) -> list[RequestLog]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"the provider received {len(self.requests)} of {n} requests within {timeout}s")
            return list(self.requests)

    def reset(self) -> None:
        with self._arrived:
            self.requests = []
