"""The public surface: every public module's ``__all__``, and every import the README and examples show.

A move inside the package can never drop a public name silently: a name added
or removed here is a decision, made in this file.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PUBLIC = {
    "scoped_clients": [
        "DEADLINE_HEADER",
        "CallInfo",
        "CallRecord",
        "CancelBus",
        "CancelReason",
        "LocalCancelBus",
        "Meter",
        "Profile",
        "ReasonCode",
        "RequestScope",
        "ScopeCancelled",
        "ScopeReport",
        "ScopeStateError",
        "ScopeUsageError",
        "ScopedClientsError",
        "UnsupportedError",
        "add_report_sink",
        "current_scope",
        "detached",
        "scope_client",
        "set_prices",
    ],
    "scoped_clients.anthropic": ["Anthropic", "AsyncAnthropic", "async_http_client", "http_client"],
    "scoped_clients.arq": ["JobCancelled", "scoped_job"],
    "scoped_clients.asgi": ["BUFFER_LIMIT", "DEADLINE_HEADER", "SCOPE_KEY", "ScopeMiddleware"],
    "scoped_clients.celery": ["ScopedTask", "bus_of", "setup"],
    "scoped_clients.cohere": ["AsyncClient", "AsyncClientV2", "Client", "ClientV2"],
    "scoped_clients.demo": ["SCENARIOS", "run_demo", "run_scenarios"],
    "scoped_clients.groq": ["AsyncGroq", "Groq"],
    "scoped_clients.google_genai": ["Client"],
    "scoped_clients.httpx": ["AsyncClient", "AsyncScopedTransport", "Client", "ScopedTransport"],
    "scoped_clients.httpx2": ["AsyncClient", "AsyncScopedTransport", "Client", "ScopedTransport"],
    "scoped_clients.litellm": [
        "acompletion",
        "aembedding",
        "arerank",
        "close_litellm_async_clients",
        "completion",
        "embedding",
        "rerank",
    ],
    "scoped_clients.mcp": ["Client", "ClientSession", "scope_session"],
    "scoped_clients.mistralai": ["Mistral"],
    "scoped_clients.openai": ["AsyncOpenAI", "OpenAI", "async_http_client", "http_client"],
    "scoped_clients.otel": ["instrument"],
    "scoped_clients.prometheus": ["instrument"],
    "scoped_clients.provider": ["LocalProvider", "Reply", "RequestLog", "ToolCall", "embed"],
    "scoped_clients.qdrant": ["AsyncQdrantClient", "QdrantClient"],
    "scoped_clients.redis": ["DEFAULT_CHANNEL", "DEFAULT_KEY_PREFIX", "RedisCancelBus"],
    "scoped_clients.retry": ["scoped_retry", "sleep", "sleep_sync", "stop_with_scope"],
    "scoped_clients.testing": ["LeftRun", "leave_mid_answer", "serve"],
    "scoped_clients.tools": ["CommandCancelled", "CommandResult", "run_command", "run_tool", "tool"],
}


def _import(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # an extra this environment lacks (arq: see scripts/compat.py)
        missing = exc.name or getattr(exc.__cause__, "name", None)
        if missing is None or missing.startswith("scoped_clients"):
            raise
        pytest.skip(f"{module} needs {missing}, not installed here")


def _declared_all(module: str) -> list[str]:
    """``__all__`` as the source spells it (for a module whose extra is not installed here)."""
    relative = module.replace(".", "/")
    path = ROOT / "src" / f"{relative}.py"
    if not path.exists():
        path = ROOT / "src" / relative / "__init__.py"
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names += ast.literal_eval(node.value)
    return names


def test_every_public_module_is_listed() -> None:
    """A new public module gets its line above."""
    modules = {"scoped_clients"}
    for path in (ROOT / "src" / "scoped_clients").iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if not name.startswith("_") and name != "cli" and (path.suffix == ".py" or (path / "__init__.py").exists()):
            modules.add(f"scoped_clients.{name}")
    assert modules == set(PUBLIC)


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_what_it_was(module: str) -> None:
    assert sorted(_declared_all(module)) == sorted(PUBLIC[module])


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_exported_name_imports(module: str) -> None:
    imported = _import(module)
    assert sorted(getattr(imported, "__all__", [])) == sorted(PUBLIC[module])
    for name in PUBLIC[module]:
        assert getattr(imported, name) is not None, f"{module}.{name}"


_FROM_IMPORT = re.compile(r"^\s*from (scoped_clients[\w.]*) import \(?([\w, ]+)", re.MULTILINE)
_DOCS = [ROOT / "README.md", *sorted((ROOT / "examples").rglob("*.py")), *sorted((ROOT / "examples").rglob("*.md"))]


def _shown_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in _DOCS:
        for module, names in _FROM_IMPORT.findall(path.read_text()):
            for name in names.split(","):
                if name.strip():
                    found.append((path.name, module, name.split(" as ")[0].strip()))
    return sorted(set(found))


def test_the_docs_show_imports() -> None:
    """The check below reads real lines (a broken pattern would pass it with nothing)."""
    assert ("README.md", "scoped_clients.openai", "AsyncOpenAI") in _shown_imports()


@pytest.mark.parametrize(("doc", "module", "name"), _shown_imports())
def test_every_import_the_docs_show_works(doc: str, module: str, name: str) -> None:
    imported = _import(module)
    if not hasattr(imported, name):
        importlib.import_module(f"{module}.{name}")  # a submodule (``from scoped_clients import otel``)
