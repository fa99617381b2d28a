"""Celery tasks that run in a scope whose id is the task id.

::

    from celery import Celery
    from scoped_clients.celery import ScopedTask, setup
    from scoped_clients.redis import RedisCancelBus

    app = Celery("jobs", broker=REDIS_URL, backend=REDIS_URL)
    setup(app, bus=RedisCancelBus.from_url(REDIS_URL))


    @app.task(base=ScopedTask)  # or Celery(..., task_cls=ScopedTask) for every task
    def summarize(doc_id: str) -> str:
        return client.chat.completions.create(...)  # a scoped client: aborted at the socket on cancel

Each run of a ``ScopedTask`` is ``with RequestScope(name=<task name>, id=<task id>,
bus=<the app's bus>)``.  Any of these cancels it, and with it the LLM call in
flight (a sync call: its socket is shut down from the thread that cancels):

* ``AbortableAsyncResult(task_id).abort()`` (``ScopedTask`` is an ``AbortableTask``,
  so ``summarize.AsyncResult(task_id).abort()`` works too): Celery's Redis result
  backend PUBLISHes every state it stores on the task's meta key; one watcher
  thread per worker process is subscribed to the keys of the tasks running there
  and cancels the scope the moment ``ABORTED`` is published (reason ``aborted``).
  Other result backends publish nothing: there, use ``revoke()`` or the bus.
* ``app.control.revoke(task_id)``, without ``terminate``: the control command is
  handled by the worker's main process, while a prefork task runs in a child.
  ``setup()`` adds a consumer bootstep that wraps that worker's ``revoke`` handler
  (its own handler table, not Celery's global one) and forwards the revoke of every
  task the worker holds to the bus as ``bus.cancel_sync(task_id, "revoked")``.  A
  ``RedisCancelBus`` carries it to the child; in the threads pool the task runs in the
  main process, so a ``LocalCancelBus`` is enough there.  The solo pool reads control
  commands only between tasks (Celery's own limit): use ``abort()`` or the bus there.
  ``revoke(terminate=True)`` and ``revoke_by_stamped_headers`` are left to Celery.
* ``await bus.cancel(task_id)`` from any process sharing the bus's Redis.

After a cancel the task ends ``REVOKED`` (``AsyncResult.get()`` raises
``celery.exceptions.TaskRevokedError`` carrying the reason), whatever the body
returned: the work was stopped on request, and ``ABORTED`` is not a ready state
(a ``get()`` would wait forever).  The worker process survives and takes the next
task; the scope's report is logged like a request's.  A task called directly
(``summarize(...)``, not through a worker) runs in a plain scope.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

try:
    from celery import Celery, bootsteps
    from celery.contrib.abortable import ABORTED, AbortableTask
    from celery.exceptions import Ignore
    from celery.signals import worker_process_init
    from celery.utils.functional import maybe_list
    from celery.worker import state as worker_state
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('scoped_clients.celery needs Celery: pip install "scoped-clients[celery]"') from exc

from ._bus import CancelBus, LazyLocalBus, LocalCancelBus, check_bus, valid_scope_id
from ._reasons import CancelReason
from ._scope import RequestScope

__all__ = ["ScopedTask", "bus_of", "setup"]

logger = logging.getLogger("scoped_clients")

#: the reason code of a scope cancelled by ``AbortableAsyncResult.abort()``
ABORTED_CODE = "aborted"
#: the reason code of a scope cancelled by ``app.control.revoke()``
REVOKED_CODE = "revoked"

_buses: weakref.WeakKeyDictionary[Celery, CancelBus] = weakref.WeakKeyDictionary()
#: this module's default bus: ``_local_bus()`` is the same ``LocalCancelBus`` each time
_local_bus = LazyLocalBus()


def setup(app: Celery, bus: CancelBus | None = None) -> None:
    """Give ``app``'s scoped tasks a cancel bus and make its workers forward ``revoke()`` to it.

    ``bus``: a ``scoped_clients.redis.RedisCancelBus`` (needed for ``revoke()`` in the
    prefork pool, and for ``bus.cancel`` from other processes), or ``None`` for a
    ``LocalCancelBus`` of each process (threads and solo pools, tests).  Call it where
    the app is built, before the worker starts.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"setup() takes your Celery app, not {type(app).__name__}: {app!r}")
    check_bus(bus, "setup(bus=...)", needs=("join", "cancel_sync"))
    if bus is not None:
        _buses[app] = bus
        # a prefork child inherits no threads: start the child's bus as it starts, not at its first task
        worker_process_init.connect(_start_bus_of(bus), weak=False)
    steps = app.steps["consumer"]
    if _RevokeForwarder not in steps:
        steps.add(_RevokeForwarder)


def bus_of(app: Celery) -> CancelBus:
    """The bus ``app``'s scoped tasks join: the one given to ``setup()``, else this process's local bus."""
    bus = _buses.get(app)
    return bus if bus is not None else _local_bus()


def _start_bus_of(bus: CancelBus) -> Callable[..., None]:
    def start_bus(**_: Any) -> None:
        _start(bus)

    return start_bus


#: seconds a worker process waits, as it starts, for its bus to connect: a job cancelled while it
#: waited in the queue is then known before the job runs (not only looked up once it has started)
CONNECT_WAIT = 2.0


def _start(bus: CancelBus) -> None:
    """Connect a bus now (``RedisCancelBus.wait_connected``), waiting at most ``CONNECT_WAIT``."""
    start = getattr(bus, "wait_connected", None)
    if callable(start):
        try:
            if not start(CONNECT_WAIT):
                logger.warning("scoped_clients: %r did not connect in %s s; it keeps trying", bus, CONNECT_WAIT)
        except Exception:
            logger.exception("scoped_clients: could not start %r", bus)


class ScopedTask(AbortableTask):  # type: ignore[misc]  # celery ships no type hints
    """A Celery task whose every run is owned by ``RequestScope(id=<task id>)``.

    Class attributes (set them on a subclass or with ``@app.task(base=ScopedTask, scope_timeout=...)``):
    ``scope_timeout``, seconds (the scope's ``timeout=``; ``None``: Celery's own time
    limits only); ``scope_bus``, a bus for this task only (default: ``bus_of(app)``).
    """

    abstract = True
    scope_timeout: float | None = None
    scope_bus: CancelBus | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if not valid_scope_id(task_id) or self.request.called_directly:
            with RequestScope(name=self.name, timeout=self.scope_timeout):
                return super().__call__(*args, **kwargs)
        bus = self.scope_bus if self.scope_bus is not None else bus_of(self._get_app())
        scope = RequestScope(name=self.name, id=task_id, bus=bus, timeout=self.scope_timeout)
        unwatch = _watch_aborts(self.backend, scope)
        try:
            with scope:
                result = super().__call__(*args, **kwargs)
        finally:
            unwatch()
        if scope.cancelled:
            self._end_cancelled(task_id, scope.cancel_reason)
        return result

    def _end_cancelled(self, task_id: str, reason: CancelReason | None) -> None:
        why = (
            f"{reason.code}: {reason.message}" if reason is not None and reason.message else str(reason and reason.code)
        )
        self.backend.mark_as_revoked(task_id, f"scope cancelled ({why})", request=self.request)
        raise Ignore(f"task {task_id} was cancelled ({why}); its state is REVOKED")


# --------------------------------------------------------------------- revoke


class _RevokeForwarder(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker (main process) bootstep: a revoke of a task this worker holds is forwarded to the bus."""

    requires = ("celery.worker.consumer.control:Control",)
    label = "scoped_clients revoke forwarder"

    def start(self, c: Any) -> None:
        control = c.blueprint.steps.get("celery.worker.consumer.control.Control")
        node = getattr(getattr(control, "box", None), "node", None)
        if node is None:
            logger.warning("scoped_clients: this worker has no remote control; revoke() will not reach scoped tasks")
            return
        bus = bus_of(c.app)
        pool = type(c.pool).__module__ if c.pool is not None else ""
        if pool.endswith(".prefork") and type(bus) is LocalCancelBus:
            logger.warning(
                "scoped_clients: the prefork pool runs tasks in child processes, which a LocalCancelBus cannot "
                "reach: revoke() will not stop running scoped tasks. Pass "
                "setup(app, bus=scoped_clients.redis.RedisCancelBus.from_url(...)), or use the threads pool"
            )
        _start(bus)  # connected before the first revoke comes
        handlers = node.handlers
        if isinstance(handlers, collections.ChainMap) and "_scoped_clients" in handlers.maps[0]:
            return  # already wrapped (a consumer restart)
        revoke = handlers["revoke"]

        def forwarding_revoke(state: Any, task_id: Any, terminate: bool = False, **kwargs: Any) -> Any:
            reply = revoke(state, task_id, terminate=terminate, **kwargs)
            if not terminate:
                _forward(bus, maybe_list(task_id) or [])
            return reply

        # a layer over this node's table (Celery's global registry stays untouched; commands
        # registered later are still found below it)
        node.handlers = collections.ChainMap({"revoke": forwarding_revoke, "_scoped_clients": None}, handlers)


def _forward(bus: CancelBus, task_ids: Iterable[object]) -> None:
    held = [task_id for task_id in task_ids if isinstance(task_id, str) and task_id in worker_state.requests]
    if held:
        # off the consumer's loop: a bus whose Redis is down waits up to its publish_timeout
        threading.Thread(target=_cancel_all, args=(bus, held), name="scoped_clients-celery-revoke").start()


def _cancel_all(bus: CancelBus, task_ids: list[str]) -> None:
    for task_id in task_ids:
        try:
            bus.cancel_sync(task_id, REVOKED_CODE, "app.control.revoke()")  # type: ignore[attr-defined]
        except Exception:
            logger.exception("scoped_clients: could not forward the revoke of task %s to %r", task_id, bus)


# ---------------------------------------------------------------------- abort


def _watch_aborts(backend: Any, scope: RequestScope) -> Callable[[], None]:
    """Cancel ``scope`` when ``ABORTED`` is stored for its task; returns the function that stops watching."""
    client = getattr(backend, "client", None)
    if client is None or not callable(getattr(backend, "get_key_for_task", None)):
        _warn_no_watch(backend)
        return lambda: None
    watcher = _AbortWatcher.of(backend)
    key = backend.get_key_for_task(scope.id)
    return watcher.watch(key if isinstance(key, str) else key.decode(), scope)


_warned: set[str] = set()


def _backend_key(backend: Any) -> str:
    try:
        return f"{type(backend).__qualname__} {backend.as_uri(include_password=True)}"
    except Exception:
        return f"{type(backend).__qualname__} {id(backend)}"


def _warn_no_watch(backend: Any) -> None:
    kind = type(backend).__name__
    if kind not in _warned and kind != "DisabledBackend":
        _warned.add(kind)
        logger.warning(
            "scoped_clients: the %s result backend publishes no state changes, so "
            "AbortableAsyncResult.abort() does not reach running scoped tasks; use revoke() or bus.cancel(task_id) "
            "(or Celery's Redis result backend)",
            kind,
        )


class _AbortWatcher:
    """One thread per process and result backend: SUBSCRIBEs to the meta keys of the running tasks."""

    _instances: ClassVar[dict[tuple[int, str], _AbortWatcher]] = {}
    _instances_lock = threading.Lock()
    #: seconds the thread waits for a message before it applies new (un)subscriptions
    TICK = 0.02

    @classmethod
    def of(cls, backend: Any) -> _AbortWatcher:
        # threads do not survive a fork: one watcher per process; Celery makes a backend object per
        # thread (app.backend is thread-local), so they are told apart by where they point
        key = (os.getpid(), _backend_key(backend))
        with cls._instances_lock:
            watcher = cls._instances.get(key)
            if watcher is None:
                watcher = cls._instances[key] = cls(backend)
            return watcher

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._scopes: dict[str, set[RequestScope]] = {}
        self._changes: collections.deque[str] = collections.deque()  # keys to (un)subscribe
        self._wake = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="scoped_clients-celery-aborts", daemon=True)
        self._thread.start()

    def watch(self, key: str, scope: RequestScope) -> Callable[[], None]:
        with self._lock:
            self._scopes.setdefault(key, set()).add(scope)
            self._changes.append(key)
        self._wake.set()

        def unwatch() -> None:
            with self._lock:
                scopes = self._scopes.get(key)
                if scopes is not None:
                    scopes.discard(scope)
                    if not scopes:
                        del self._scopes[key]
                        self._changes.append(key)
            self._wake.set()

        return unwatch

    def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.backend.client.pubsub()
            try:
                self._serve(pubsub)
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "scoped_clients: watching Celery's result backend for aborts failed (%r); retrying, "
                        "revoke() and bus cancels still work",
                        exc,
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass
            with self._lock:  # resubscribe everything watched, and look for aborts missed meanwhile
                self._changes.extend(self._scopes)

    def _serve(self, pubsub: Any) -> None:
        subscribed: set[str] = set()
        while True:
            self._apply_changes(pubsub, subscribed)
            if not subscribed:
                self._wake.wait()
                self._wake.clear()
                continue
            message = pubsub.get_message(timeout=self.TICK)
            if message is None:
                continue
            if self._failing:
                self._failing = False
                logger.warning("scoped_clients: watching Celery's result backend for aborts works again")
            channel = message["channel"]
            key = channel.decode() if isinstance(channel, bytes) else str(channel)
            if message["type"] == "subscribe":
                # an abort stored before the subscription took effect is not missed
                self._check(key, self.backend.client.get(key))
            elif message["type"] == "message":
                self._check(key, message["data"])

    def _apply_changes(self, pubsub: Any, subscribed: set[str]) -> None:
        with self._lock:
            changes = set(self._changes)
            self._changes.clear()
            wanted = {key for key in changes if key in self._scopes}
        for key in changes - wanted:
            if key in subscribed:
                subscribed.discard(key)
                pubsub.unsubscribe(key)
        if wanted:
            subscribed.update(wanted)
            pubsub.subscribe(*wanted)

    def _check(self, key: str, payload: object) -> None:
        if payload is None:
            return
        try:
            meta = self.backend.decode_result(payload)
        except Exception:
            return
        if not isinstance(meta, dict) or meta.get("status") != ABORTED:
            return
        with self._lock:
            scopes = list(self._scopes.get(key, ()))
        for scope in scopes:
            scope.cancel(ABORTED_CODE, "AbortableAsyncResult.abort()")


def _after_fork_in_child() -> None:
    # a lock held by a thread of the parent (which the child does not have) would never be released
    _AbortWatcher._instances_lock = threading.Lock()
    _AbortWatcher._instances = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
