"""Retries whose backoff ends with the scope (tenacity)."""

from __future__ import annotations

# --8<-- [start:retry]
import tenacity

from scoped_clients import RequestScope
from scoped_clients.retry import scoped_retry

attempts: list[int] = []


@scoped_retry(wait=tenacity.wait_fixed(10), stop=tenacity.stop_after_attempt(5))
async def flaky_step() -> str:
    attempts.append(1)
    raise ConnectionError("the upstream is down")


async def main() -> None:
    # A 10 s backoff would end past the scope's 2 s deadline: scoped_retry gives up at once,
    # re-raising the last error, rather than sleep past the request's deadline.
    async with RequestScope(name="pipeline", timeout=2.0):
        await flaky_step()


# --8<-- [end:retry]


def check(provider: object) -> None:
    import time

    import anyio
    import pytest

    started = time.monotonic()
    with pytest.raises(ConnectionError):
        anyio.run(main)
    assert attempts == [1] and time.monotonic() - started < 1.0
