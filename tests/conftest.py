"""Shared fixtures: every async test runs on asyncio, uvloop and trio (AnyIO pytest plugin)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

# LiteLLM fetches its model price map from GitHub when first imported (retrying for seconds when the
# network says no): every test process uses the copy it ships
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

if TYPE_CHECKING:
    from _helpers import Reports
    from _redis import RedisServer
    from scoped_clients.openai import AsyncOpenAI
    from scoped_clients.provider import LocalProvider


#: the backends every async test runs on: uvloop is the loop ``uvicorn[standard]`` (and so
#: ``fastapi[standard]``) runs by default, with sockets of its own (our sync path shuts them down
#: through a duplicate); a test that needs one loop parametrizes ``anyio_backend`` itself
BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param("trio", id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _fresh_savings_estimator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an estimator that has learned nothing: calls completed in one test must
    not change the savings figures another test asserts."""
    from scoped_clients import _savings

    monkeypatch.setattr(_savings, "_default", _savings.SavingsEstimator())


@pytest.fixture(scope="session")
def _session_provider() -> Iterator[LocalProvider]:
    from scoped_clients.provider import LocalProvider

    with LocalProvider(token_interval=0.01, default_tokens=50) as p:
        yield p


@pytest.fixture
def provider(_session_provider: LocalProvider) -> Iterator[LocalProvider]:
    """The loopback provider, with its logs and settings reset for each test."""
    _session_provider.reset()
    _session_provider.search_delay = 0.0
    _session_provider.token_interval = 0.01
    yield _session_provider


@pytest.fixture
async def llm(provider: LocalProvider) -> AsyncIterator[AsyncOpenAI]:
    """A scoped ``AsyncOpenAI`` on the provider (a module's own ``provider`` fixture, where it has one)."""
    from scoped_clients.openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=provider.url + "/v1", api_key="test")
    yield client
    await client.close()


@pytest.fixture
def slow_provider(provider: LocalProvider) -> LocalProvider:
    """The provider at 50 ms a token: a cancel that crosses processes (to a job worker; for Celery's
    revoke, through the broker too) lands while the call still generates."""
    provider.token_interval = 0.05
    return provider


@pytest.fixture
def reports() -> Iterator[Reports]:
    """Every scope report of the test, kept (``tests/_helpers.Reports``); a module's fixture asking
    for this one first adds its own sinks before it (``test_prometheus``'s registry)."""
    from _helpers import Reports
    from scoped_clients import add_report_sink

    sink = Reports()
    remove = add_report_sink(sink)
    yield sink
    remove()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (tests that kill Redis start their own ``RedisServer``)."""
    from _redis import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, emptied for each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_server.url
