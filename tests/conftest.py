"""Shared fixtures: every async test runs on asyncio and on trio (AnyIO pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from scoped_clients.provider import LocalProvider


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
