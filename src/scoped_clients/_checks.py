"""The argument checks of ``RequestScope`` and ``ScopeMiddleware``: each error says what to pass instead.

Seconds are any real number but a bool.
"""

from __future__ import annotations

import math
import numbers
import time

from ._reasons import truncate

#: longest kept scope name (characters): names are free text, longer ones are truncated
MAX_NAME_LENGTH = 200


def seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds (int or float), not {type(value).__name__}: {value!r}")
    seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f"{what} must be a number of seconds, not NaN")
    return seconds


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """A timeout in seconds, or ``None`` for none.

    ``inf`` means no timeout (returned as ``None``), as in ``anyio.move_on_after(inf)``, and
    as a ``float("inf")`` read from configuration means: the scope then has no deadline at
    all, so nothing downstream (the timer thread, Qdrant's integer ``timeout``) ever sees it.
    """
    if timeout is None:
        return None
    value = seconds(timeout, what)
    if value < 0:
        raise ValueError(f"{what} must be >= 0 seconds (None or float('inf') for no timeout), got {timeout!r}")
    return None if math.isinf(value) else value


def check_deadline(deadline: object) -> float | None:
    if deadline is None:
        return None
    when = seconds(deadline, "deadline")
    if when == math.inf:
        return None  # like timeout=inf: no deadline
    if when == -math.inf:
        raise ValueError("deadline must be a time.monotonic() value, not -inf; pass a finite value or None")
    wall, mono = time.time(), time.monotonic()
    if wall - mono > 2 * 366 * 86400 and abs(when - wall) < 366 * 86400:
        raise ValueError(
            f"deadline={deadline!r} looks like a time.time() value; RequestScope deadlines are on the "
            f"time.monotonic() clock: pass deadline=time.monotonic() + seconds, or timeout=seconds"
        )
    return when


def check_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}: {name!r}")
    return truncate(name, MAX_NAME_LENGTH)
