"""Cancel a scope in whichever process runs it: a cancel bus on Redis.

::

    bus = RedisCancelBus.from_url("redis://localhost:6379/0")
    app = ScopeMiddleware(app, bus=bus)           # every request scope joins the bus
    ...
    await bus.cancel(scope_id, "user_stopped")    # any replica, worker or script

How it works, per process:

- **One subscription.**  The first scope that joins (or the first cancel) starts
  one daemon thread running its own asyncio loop with ``redis.asyncio``: one
  pub/sub connection on one channel for all scopes, and one connection for
  commands.  The thread belongs to no caller, so the scopes of asyncio, Trio and
  sync threads are all reached; it is started again in a forked child (Celery's
  prefork pool), which inherits no threads.
- **Cancel.**  ``await bus.cancel(id, reason)`` cancels this process's scopes with
  that id at once (no round trip), then, in one round trip, stores the cancel
  under a key that expires after ``pending_ttl`` seconds and publishes it; every
  other process cancels its scopes with that id when the message arrives.
- **Before the scope opens.**  A process that receives a cancel for an id it does
  not run keeps it ``pending_ttl`` seconds (``LocalCancelBus``).  A process that was
  not listening when the cancel was published (started later, or was
  reconnecting) finds the key: the ids of scopes that open are looked up in
  batches (one ``MGET`` per ``check_interval``, not one round trip per scope), and
  every open scope is looked up again after each (re)connect.  A listening process
  cancels such a scope on entry, before its first call; one that finds the key does
  so within ``check_interval`` and a round trip (a call started in those few ms is
  aborted).  So a cancelled id stays cancelled for ``pending_ttl`` seconds
  everywhere: a scope that reuses it within that time (the retry of a cancelled
  job) is cancelled as it opens.
- **After the scope ended.**  A no-op: nothing open has the id.
- **Redis goes away.**  Local cancels keep working (they never wait for Redis),
  the bus reconnects with exponential backoff (``reconnect_delay``), the failure
  is logged once as a warning and the recovery once.  Nothing is raised into a
  request or into ``bus.cancel``: a cancel that could not be published is
  queued (at most ``max_pending``) and published when Redis is back, unless it
  is older than ``pending_ttl`` by then.  ``bus.connected`` tells a cancel
  endpoint whether the cancel went out now (e.g. to answer 202 or 503).

Remote cancels are applied on the bus's thread: an ``on_cancel`` hook of a *sync*
scope runs there (as it runs in whichever thread calls ``scope.cancel``), so keep
such hooks short.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import anyio

from ._bus import LocalCancelBus, valid_scope_id
from ._loop import current_poster
from ._reasons import CancelReason, ReasonCode, coerce_reason

try:
    import redis.asyncio as aioredis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'scoped_clients.redis needs redis-py (redis>=5.0.1): pip install "scoped-clients[redis]"'
    ) from exc

__all__ = ["DEFAULT_CHANNEL", "DEFAULT_KEY_PREFIX", "RedisCancelBus"]

logger = logging.getLogger("scoped_clients.redis")

#: the pub/sub channel cancels are published on
DEFAULT_CHANNEL = "scoped_clients:cancel"
#: prefix of the keys that remember a cancelled id for ``pending_ttl`` seconds
DEFAULT_KEY_PREFIX = "scoped_clients:cancelled:"

_LOOKUP_BATCH = 1000  # ids per MGET
_PING_INTERVAL = 5.0  # seconds of silence on the subscription before a PING

T = TypeVar("T")
ClientFactory = Callable[[], "aioredis.Redis"]

_buses: weakref.WeakSet[RedisCancelBus] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for bus in list(_buses):
        bus._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisCancelBus(LocalCancelBus):
    """A cancel bus shared by every process connected to one Redis (see the module docstring).

    Build it with ``RedisCancelBus.from_url(url, **options)``, or pass a
    ``redis.asyncio.Redis`` client: the bus copies its connection settings and opens
    its own connections on its own thread (the client you pass is never used or
    closed: a redis-py asyncio client belongs to the event loop that uses it).

    ``channel`` / ``key_prefix``: where cancels are published and remembered (give
    each application sharing one Redis its own).  ``pending_ttl`` / ``max_pending``:
    see ``LocalCancelBus``; also how long the Redis key of a cancel lives.
    ``publish_timeout``: how long ``cancel`` waits for Redis before it queues the
    cancel and returns.  ``check_interval``: seconds joining scopes are batched
    before their ids are looked up.  ``reconnect_delay``: first and longest wait
    between reconnection attempts (doubling, with jitter).
    """

    def __init__(
        self,
        client: aioredis.Redis | None = None,
        *,
        channel: str = DEFAULT_CHANNEL,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        pending_ttl: float = 60.0,
        max_pending: int = 10_000,
        publish_timeout: float = 1.0,
        check_interval: float = 0.005,
        reconnect_delay: tuple[float, float] = (0.05, 5.0),
        _factory: ClientFactory | None = None,
    ) -> None:
        super().__init__(pending_ttl=pending_ttl, max_pending=max_pending)
        if _factory is None:
            if not isinstance(client, aioredis.Redis):
                raise TypeError(
                    "RedisCancelBus takes a redis.asyncio.Redis client (its connection settings are copied), "
                    f"not {type(client).__name__}: {client!r}; or build it with RedisCancelBus.from_url(url)"
                )
            _factory = _copy_factory(client)
        for value, what in ((channel, "channel"), (key_prefix, "key_prefix")):
            if not isinstance(value, str) or not value:
                raise ValueError(f"RedisCancelBus({what}=...) is a non-empty str, got {value!r}")
        self.channel = channel
        self.key_prefix = key_prefix
        self.publish_timeout = _positive(publish_timeout, "publish_timeout")
        self.check_interval = _positive(check_interval, "check_interval", zero=True)
        if (
            not isinstance(reconnect_delay, tuple)
            or len(reconnect_delay) != 2
            or not 0 < _positive(reconnect_delay[0], "reconnect_delay[0]") <= reconnect_delay[1]
        ):
            raise ValueError(
                f"RedisCancelBus(reconnect_delay=...) is (first, longest) in seconds, 0 < first <= longest, "
                f"got {reconnect_delay!r}"
            )
        self.reconnect_delay = (float(reconnect_delay[0]), float(reconnect_delay[1]))
        self._factory = _factory
        self._closed = False
        self._reset_process_state()
        _buses.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisCancelBus:
        """A bus on the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        ``options``: this class's keyword arguments (``channel``, ``pending_ttl``, ...);
        the others go to ``redis.asyncio.Redis.from_url`` (``password``,
        ``socket_connect_timeout`` (default 2 s), ``ssl_ca_certs``, ...).
        """
        if not isinstance(url, str) or not url:
            raise ValueError(
                f"RedisCancelBus.from_url(url) takes a Redis URL such as 'redis://host:6379/0', got {url!r}"
            )
        own = {"channel", "key_prefix", "pending_ttl", "max_pending", "publish_timeout", "check_interval"}
        own.add("reconnect_delay")
        bus_options = {key: options.pop(key) for key in list(options) if key in own}
        options.setdefault("socket_connect_timeout", 2.0)
        aioredis.ConnectionPool.from_url(url, **options)  # fail here, in the caller, on a bad URL

        def factory() -> aioredis.Redis:
            client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
            return client

        return cls(_factory=factory, **bus_options)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._connected else "not connected")
        return f"<RedisCancelBus {self.channel!r} {state} scopes={len(self._scopes)} pending={len(self._pending)}>"

    # ------------------------------------------------------------ per process

    def _reset_process_state(self) -> None:
        """State that belongs to one process: rebuilt in a forked child."""
        self._origin = uuid.uuid4().hex  # tells this process's own messages apart
        self._io_lock = threading.Lock()
        self._worker: _Worker | None = None
        self._connected = False
        self._connected_event = threading.Event()
        self._failing = False  # a failure was logged and no recovery since
        self._to_check: set[str] = set()
        self._check_posted = False
        self._outbox: collections.deque[tuple[str, str, float]] = collections.deque(maxlen=self.max_pending or 1)

    def _forked(self) -> None:
        # In the child: no bus thread, and a lock may have been held by a thread that is gone.
        self._lock = threading.Lock()
        self._scopes.clear()  # the parent's scopes do not run here
        self._reset_process_state()

    @property
    def connected(self) -> bool:
        """Whether the bus is subscribed to Redis right now (cancels go out at once)."""
        return self._connected

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Start the bus if needed and wait (blocking, at most ``timeout`` s) until it is subscribed.

        For startup code and tests; requests never need it.  Returns ``bus.connected``.
        In async code: ``await anyio.to_thread.run_sync(bus.wait_connected, 5.0)``.
        """
        if self._ensure_worker() is None:
            return False
        return self._connected_event.wait(timeout)

    def _ensure_worker(self) -> _Worker | None:
        """The bus's thread, started on first use; ``None`` once closed or if it cannot start."""
        worker = self._worker
        if worker is not None:
            return worker
        with self._io_lock:
            if self._closed:
                return None
            if self._worker is None:
                try:
                    self._worker = _Worker(self)
                except Exception:  # e.g. no thread can be started: never an error in a request
                    logger.exception("scoped_clients: %r could not start its thread; cancels stay local", self)
                    return None
            return self._worker

    # ----------------------------------------------------------------- scopes

    def _joined(self, scope_id: str) -> None:
        worker = self._ensure_worker()
        if worker is None:
            return
        with self._io_lock:
            self._to_check.add(scope_id)
            if self._check_posted:
                return
            self._check_posted = True
        worker.post(worker.wake_checker)

    # ----------------------------------------------------------------- cancel

    async def cancel(
        self, scope_id: str, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None
    ) -> int:
        """Cancel the scopes with that id in every process; returns how many this process cancelled.

        This process's scopes are cancelled before anything is sent.  Then the
        cancel is published and the call returns once Redis has it, or after
        ``publish_timeout``.  It never raises because of Redis: a cancel that could
        not be published is queued and sent when Redis is back (``bus.connected``
        says which).  An id no scope can have (``valid_scope_id``) is ignored.

        Args:
            scope_id: the id of the scopes to cancel (``RequestScope(id=...)``, the ``x-request-id``, a job id).
            reason: a reason code (an identifier, such as ``"user_stopped"``) or a ``CancelReason``.
            message: a human-readable message kept with the reason (ignored with a ``CancelReason``).
        """
        why = coerce_reason(reason, message)
        count = self.cancel_local(scope_id, why)
        future = self._submit_publish(scope_id, why)
        if future is not None:
            with anyio.move_on_after(self.publish_timeout):
                await _wait_future(future)
        return count

    def cancel_sync(
        self, scope_id: str, reason: str | CancelReason = ReasonCode.CANCELLED, message: str | None = None
    ) -> int:
        """``cancel`` for sync code (any thread): blocks at most ``publish_timeout``.

        Args:
            scope_id: the id of the scopes to cancel (``RequestScope(id=...)``, the ``x-request-id``, a job id).
            reason: a reason code (an identifier, such as ``"user_stopped"``) or a ``CancelReason``.
            message: a human-readable message kept with the reason (ignored with a ``CancelReason``).
        """
        why = coerce_reason(reason, message)
        count = self.cancel_local(scope_id, why)
        future = self._submit_publish(scope_id, why)
        worker = self._worker
        if future is not None and worker is not None and threading.get_ident() != worker.thread.ident:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                future.result(self.publish_timeout)
        return count

    def _submit_publish(self, scope_id: str, why: CancelReason) -> concurrent.futures.Future[bool] | None:
        if not valid_scope_id(scope_id):
            return None
        worker = self._ensure_worker()
        if worker is None:
            logger.warning("scoped_clients: %r is closed: the cancel of %r reached this process only", self, scope_id)
            return None
        payload = json.dumps({"id": scope_id, "code": why.code, "message": why.message, "origin": self._origin})
        return worker.submit(self._publish(scope_id, payload, time.monotonic()))

    # -------------------------------------------------- on the bus's own loop

    def _key(self, scope_id: str) -> str:
        return self.key_prefix + scope_id

    async def _publish(self, scope_id: str, payload: str, at: float) -> bool:
        worker = self._worker
        if worker is not None and worker.client is None and not self._failing:
            # Still connecting (the first cancel of a short-lived process): wait for it, a little.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.publish_timeout):
                    await worker.up.wait()
        client = worker.client if worker is not None else None
        if client is not None:
            try:
                await self._send(client, scope_id, payload, at)
            except Exception as exc:
                self._failed(exc)
            else:
                if self._failing or self._outbox:  # an earlier command failed while we stayed subscribed
                    await self._flush_outbox(client)
                    self._recovered()
                return True
        self._outbox.append((scope_id, payload, at))
        return False

    async def _send(self, client: aioredis.Redis, scope_id: str, payload: str, at: float) -> None:
        ttl_ms = int((self.pending_ttl - (time.monotonic() - at)) * 1000)
        async with client.pipeline(transaction=False) as pipe:
            if ttl_ms > 0:
                pipe.set(self._key(scope_id), payload, px=ttl_ms)
            pipe.publish(self.channel, payload)
            await asyncio.wait_for(pipe.execute(), self.publish_timeout)

    async def _flush_outbox(self, client: aioredis.Redis) -> None:
        while self._outbox:
            scope_id, payload, at = self._outbox[0]
            if time.monotonic() - at < self.pending_ttl:
                await self._send(client, scope_id, payload, at)
            self._outbox.popleft()

    def _on_message(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == self._origin:
                return  # cancelled here before it was published
            scope_id = message["id"]
            why = CancelReason(message["code"], message.get("message") or "")
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.debug("scoped_clients: ignored a malformed message on %r: %.200r", self.channel, data)
            return
        if isinstance(scope_id, str):
            self.cancel_local(scope_id, why)

    def _apply_stored(self, scope_ids: list[str], values: list[Any]) -> None:
        for scope_id, value in zip(scope_ids, values, strict=True):
            if value is not None:
                # A cancel that was kept for this id: apply it whatever process published it.
                with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                    message = json.loads(value)
                    self.cancel_local(scope_id, CancelReason(message["code"], message.get("message") or ""))

    async def _lookup(self, client: aioredis.Redis, scope_ids: list[str]) -> None:
        for start in range(0, len(scope_ids), _LOOKUP_BATCH):
            batch = scope_ids[start : start + _LOOKUP_BATCH]
            values = await asyncio.wait_for(client.mget([self._key(i) for i in batch]), self.publish_timeout)
            self._apply_stored(batch, values)

    async def _check_joined(self, worker: _Worker) -> None:
        """Look the ids of newly opened scopes up, in batches."""
        while True:
            await worker.checker_wake.wait()
            worker.checker_wake.clear()
            if self.check_interval:
                await asyncio.sleep(self.check_interval)  # let more scopes join this batch
            with self._io_lock:
                joined, self._to_check = self._to_check, set()
                self._check_posted = False
            with self._lock:
                open_ids = [i for i in joined if i in self._scopes]
            client = worker.client
            if client is None or not open_ids:
                continue  # not connected: every open scope is looked up on reconnect
            try:
                await self._lookup(client, open_ids)
            except Exception as exc:
                self._failed(exc)
                with self._io_lock:  # again with the next batch (only those still open by then)
                    self._to_check.update(open_ids)

    async def _subscribe(self, worker: _Worker) -> None:
        """Stay subscribed: (re)connect with backoff, then apply every cancel that arrives."""
        delay = self.reconnect_delay[0]
        while True:
            client: aioredis.Redis | None = None
            pubsub: Any = None
            try:
                client = self._factory()
                pubsub = client.pubsub()
                await pubsub.subscribe(self.channel)
                await self._subscribed(pubsub)
                await asyncio.wait_for(client.ping(), self.publish_timeout)  # the command connection works too
                worker.client = client
                worker.up.set()
                await self._flush_outbox(client)
                with self._lock:
                    open_ids = list(self._scopes)
                await self._lookup(client, open_ids)  # cancels published while we were away
                self._recovered()
                delay = self.reconnect_delay[0]
                heard = asyncio.get_running_loop().time()
                while True:
                    message = await pubsub.get_message(timeout=_PING_INTERVAL)
                    now = asyncio.get_running_loop().time()
                    if message is not None:
                        heard = now
                        if message.get("type") == "message":
                            self._on_message(message["data"])
                    elif now - heard > 1.5 * _PING_INTERVAL:
                        raise ConnectionError(f"Redis did not answer PING within {_PING_INTERVAL:g} s")
                    else:
                        await pubsub.ping()  # a quiet connection: is Redis still there? (answers "pong")
            except Exception as exc:
                self._failed(exc)
            finally:
                worker.client = None
                worker.up.clear()
                self._connected = False
                self._connected_event.clear()
                with contextlib.suppress(Exception):
                    if pubsub is not None:
                        await pubsub.aclose()
                with contextlib.suppress(Exception):
                    if client is not None:
                        await client.aclose()
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.reconnect_delay[1])

    async def _subscribed(self, pubsub: Any) -> None:
        """Wait for Redis to confirm the subscription: from then on no cancel is missed."""
        async with asyncio.timeout(max(self.publish_timeout, 5.0)):
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message.get("type") == "subscribe":
                    return

    def _failed(self, exc: BaseException) -> None:
        self._connected = False
        self._connected_event.clear()
        if not self._failing:
            self._failing = True
            logger.warning(
                "scoped_clients: the cancel bus cannot reach Redis (%s: %s); cancels reach this process's scopes only "
                "until it reconnects (retrying with backoff)",
                type(exc).__name__,
                exc,
            )

    def _recovered(self) -> None:
        self._connected = True
        self._connected_event.set()
        if self._failing:
            self._failing = False
            logger.warning("scoped_clients: the cancel bus reconnected to Redis; cancels reach every process again")

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the bus's thread and close its connections (idempotent).

        Scopes still open keep their local cancellation; cancels after ``close``
        reach this process only.
        """
        with self._io_lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
        if self._outbox:
            logger.warning(
                "scoped_clients: %r closed with %d cancel(s) it could not publish (Redis was unreachable); "
                "they reached this process only",
                self,
                len(self._outbox),
            )
            self._outbox.clear()

    async def aclose(self) -> None:
        """``close`` for async code (waits for the bus's thread in a worker thread)."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> RedisCancelBus:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    async def __aenter__(self) -> RedisCancelBus:
        return self

    async def __aexit__(self, *exc: object | TracebackType) -> None:
        await self.aclose()


class _Worker:
    """The bus's daemon thread and its asyncio loop, in one process."""

    def __init__(self, bus: RedisCancelBus) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.client: aioredis.Redis | None = None
        self.checker_wake = asyncio.Event()
        self.up = asyncio.Event()  # set while subscribed
        self._tasks: list[asyncio.Task[None]] = []
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(bus, started), name="scoped-clients-redis-bus", daemon=True
        )
        self.thread.start()
        started.wait()

    def _run(self, bus: RedisCancelBus, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._tasks = [
            self.loop.create_task(bus._subscribe(self), name="scoped-clients-redis-subscribe"),
            self.loop.create_task(bus._check_joined(self), name="scoped-clients-redis-check"),
        ]
        del bus  # the loop's tasks hold it while they run; nothing else here should
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def post(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has stopped: the bus is closed
            self.loop.call_soon_threadsafe(fn)

    def wake_checker(self) -> None:
        self.checker_wake.set()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop has stopped
            coro.close()
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            future.cancel()
            return future

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.loop.stop()

    def stop(self) -> None:
        if os.getpid() != self.pid or not self.thread.is_alive():
            return
        # _shutdown stops the loop, so the future it returns is never completed: wait for the thread.
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        if threading.get_ident() != self.thread.ident:  # else: closed from the bus's own loop
            self.thread.join(5)


async def _wait_future(future: concurrent.futures.Future[T]) -> None:
    """Wait for a future of another thread, on asyncio or Trio, without a thread hop."""
    done = anyio.Event()
    post = current_poster()
    future.add_done_callback(lambda _: post(done.set))
    await done.wait()


def _copy_factory(client: aioredis.Redis) -> ClientFactory:
    pool = client.connection_pool
    connection_class = pool.connection_class
    kwargs = dict(pool.connection_kwargs)

    def factory() -> aioredis.Redis:
        return aioredis.Redis.from_pool(aioredis.ConnectionPool(connection_class=connection_class, **kwargs))

    return factory


def _positive(value: object, what: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (value >= 0 if zero else value > 0):
        raise ValueError(f"RedisCancelBus({what}=...) is a number of seconds {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)
