"""A pytest plugin that runs a vendor SDK's own test-suite against scoped_clients' drop-ins.

Loaded with ``-p swap_plugin`` by ``scripts/vendor_suites/run.py``, before the
suite's conftest and test modules import the SDK, so ``from openai import
AsyncOpenAI`` in the vendor's tests gets ``scoped_clients.openai.AsyncOpenAI``.

``SCOPED_VENDOR_MODE``:
* ``vendor``: nothing is swapped (the baseline);
* ``ours``: the SDK's client names are our drop-ins;
* ``scope``: ours, and every test runs inside an open, never-cancelled ``RequestScope``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

MODE = os.environ.get("SCOPED_VENDOR_MODE", "vendor")
SDK = os.environ.get("SCOPED_VENDOR_SDK", "")

_NAMES = {
    "openai": ("scoped_clients.openai", ["OpenAI", "AsyncOpenAI"]),
    "anthropic": ("scoped_clients.anthropic", ["Anthropic", "AsyncAnthropic"]),
    "cohere": ("scoped_clients.cohere", ["Client", "AsyncClient", "ClientV2", "AsyncClientV2"]),
    "qdrant_client": ("scoped_clients.qdrant", ["QdrantClient", "AsyncQdrantClient"]),
    "mistralai": ("scoped_clients.mistralai", ["Mistral"]),
    "groq": ("scoped_clients.groq", ["Groq", "AsyncGroq"]),
    "google.genai": ("scoped_clients.google_genai", ["Client"]),
}
#: the SDK's modules that export its client names (default: the SDK's top module)
_MODULES = {"mistralai": ("mistralai.client", "mistralai.client.sdk")}


def _swap() -> None:
    """Every name the SDK exports for one of its clients (``anthropic.Client`` is ``anthropic.Anthropic``) is ours."""
    ours_module, names = _NAMES[SDK]
    ours = importlib.import_module(ours_module)
    for name in names:
        original = getattr(ours, name).vendor  # the SDK's class the drop-in name stands for
        # the SDK's modules that export it, and the module that defines it (``google.genai.client.Client``)
        modules = {importlib.import_module(module) for module in _MODULES.get(SDK, (SDK,))}
        for vendor in modules | {importlib.import_module(original.__module__)}:
            for alias, value in list(vars(vendor).items()):
                if value is original:
                    setattr(vendor, alias, getattr(ours, name))


if MODE in ("ours", "scope"):
    _swap()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    if MODE != "scope":
        return (yield)
    from scoped_clients import RequestScope

    with RequestScope(name="vendor-suite"):
        return (yield)
