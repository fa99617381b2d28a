"""What the local provider observed, per request (thread-safe, with blocking waits)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class RequestLog:
    """One HTTP request as the server saw it.

    ``units`` holds the ``time.monotonic()`` of every unit of work produced (a
    token, a stream chunk, 10 ms of searching); ``disconnected_at`` is when the
    server saw the client go while the request was still being served.
    """

    #: the request's number on this server, from 1
    id: int
    #: the HTTP method
    method: str
    #: the URL's path
    path: str
    #: the URL's query parameters
    query: dict[str, str]
    #: the request headers, names lowercased
    headers: dict[str, str]
    #: the request body
    body: bytes = b""
    #: ``time.monotonic()`` when the request arrived
    started_at: float = field(default_factory=time.monotonic)
    #: ``time.monotonic()`` of every unit of work produced
    units: list[float] = field(default_factory=list)
    #: when the server saw the client go while serving it (``None``: it did not)
    disconnected_at: float | None = None
    #: when the server finished the response (``None``: it did not)
    completed_at: float | None = None
    #: the response's status code, once sent
    status: int | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``None``: empty or not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def done(self) -> bool:
        """The request completed or its client went away."""
        return self.completed_at is not None or self.disconnected_at is not None

    def units_after(self, t: float) -> int:
        """How many units were produced after ``t`` (a ``time.monotonic()`` value)."""
        with self._cond:
            return sum(1 for u in self.units if u > t)

    # --------------------------------------------------------- server side

    def add_unit(self) -> None:
        with self._cond:
            self.units.append(time.monotonic())
            self._cond.notify_all()

    def mark_disconnected(self) -> None:
        with self._cond:
            if self.disconnected_at is None and self.completed_at is None:
                self.disconnected_at = time.monotonic()
                self._cond.notify_all()

    def mark_completed(self, status: int) -> None:
        """Server side: the response, with that ``status``, was sent to its end."""
        with self._cond:
            self.status = status
            if self.disconnected_at is None:
                self.completed_at = time.monotonic()
            self._cond.notify_all()

    def set_status(self, status: int) -> None:
        """Server side: the response's ``status`` code was chosen."""
        with self._cond:
            self.status = status

    # ------------------------------------------------------------ waiting

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"request #{self.id} {self.path}: {what} within {timeout}s")

    def wait_units(self, n: int, timeout: float = 5.0) -> None:
        """Block until the server has produced ``n`` units for this request (``TimeoutError`` after ``timeout`` s)."""
        self._wait(lambda: len(self.units) >= n or self.done, timeout, f"no {n} units")
        if len(self.units) < n:
            raise TimeoutError(f"request #{self.id} {self.path} ended after {len(self.units)} of {n} units")

    def wait_disconnect(self, timeout: float = 5.0) -> float:
        """Block until the server saw the client go, at most ``timeout`` seconds; returns when it did."""
        self._wait(lambda: self.disconnected_at is not None or self.completed_at is not None, timeout, "no disconnect")
        if self.disconnected_at is None:
            raise AssertionError(f"request #{self.id} {self.path} completed: the client never disconnected")
        return self.disconnected_at

    def wait_done(self, timeout: float = 5.0) -> None:
        """Block until the request completed or its client went away (at most ``timeout`` seconds)."""
        self._wait(lambda: self.done, timeout, "not done")
