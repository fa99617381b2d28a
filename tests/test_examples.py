"""The agent examples run as shipped, against the embedded provider; the provider's own log shows that
the cancelled run stopped: it saw the answer's disconnect, nothing was produced after the cancel but a
unit in flight, and no call started after it.  The frameworks run on asyncio only."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _helpers import wait

with contextlib.suppress(ImportError):
    # mcp's stdio_client(errlog=sys.stderr) binds its default when first imported: import it now,
    # not inside a test whose capsys has swapped sys.stderr for a stream without a file descriptor
    import mcp.client.stdio  # noqa: F401
from scoped_clients.provider import LocalProvider

EXAMPLES = Path(__file__).parent.parent / "examples"
#: example directory -> what it imports beyond the core
AGENT_EXAMPLES = {
    "agent_openai_agents": ("agents",),
    "agent_pydantic_ai": ("pydantic_ai",),
    "agent_langgraph": ("langgraph", "langchain_openai", "scoped_clients_langchain"),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    # One per test: langchain-openai shares one HTTP client per base URL (lru_cache), and a pooled
    # connection from an earlier test's event loop would fail and be retried by the SDK.
    with LocalProvider(token_interval=0.01) as p:
        yield p


def load(name: str) -> Any:
    for module in AGENT_EXAMPLES[name]:
        pytest.importorskip(module, reason=f"examples/{name} needs {module}")
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(AGENT_EXAMPLES))
async def test_agent_example_stops_when_cancelled(
    name: str, provider: LocalProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await load(name).main(provider)
    first, answer = provider.requests  # the tool-calling turn and the answer: no call after the cancel
    assert first.completed_at is not None and first.completed_at < run.t_cancel
    assert answer.started_at < run.t_cancel
    seen = await wait(answer.wait_disconnect)
    assert seen >= run.t_cancel and answer.units_after(run.t_cancel) <= 1
    assert answer.completed_at is None  # it never ran to the end
    calls = [(c.provider, c.outcome) for c in run.scope.report.calls]
    assert calls == [("openai", "completed"), ("tool", "completed"), ("openai", "aborted")]
    # Issue 25: the tool turn taught the answer nothing (it was estimated 0): the prior, never 0, and
    # no more than the provider really had left of its 300 tokens.
    cut = run.scope.report.calls[-1]
    assert cut.saved_method == "default" and cut.tokens_saved_max is not None
    assert 0 < cut.tokens_saved <= min(cut.tokens_saved_max, 300 - len(answer.units))
    assert run.scope.cancel_reason.code == "client_disconnected"
    assert "provider saw the disconnect" in capsys.readouterr().out


@pytest.mark.anyio
async def test_mcp_agent_example_stops_the_tool_on_the_mcp_server(
    provider: LocalProvider, capfd: pytest.CaptureFixture[str]
) -> None:
    """The MCP server's own log: its tool handler was cancelled within a second of the user leaving
    (measured: a few ms; with the vendor's session it ran until openai-agents' 5 s read timeout)."""
    for module in ("agents", "mcp"):
        pytest.importorskip(module, reason=f"examples/agent_mcp needs {module}")
    spec = importlib.util.spec_from_file_location("example_agent_mcp", EXAMPLES / "agent_mcp" / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    run = await module.main(provider)
    notes = dict(line.split() for line in run.server_log.splitlines())
    assert "finished" not in notes and float(notes["cancelled"]) - run.t_left < 1.0
    calls = [(c.provider, c.operation, c.outcome) for c in run.report.calls]
    assert calls == [
        ("mcp", "tools/list", "completed"),
        ("openai", "chat.completions", "completed"),
        ("mcp", "tools/call", "aborted"),
    ]
    assert len(provider.requests) == 1  # no turn after the cancel
    assert "tool handler cancelled" in capfd.readouterr().out  # capfd: the MCP server's stderr needs a real file
    assert "python examples/agent_mcp/agent.py" in (EXAMPLES / "agent_mcp" / "README.md").read_text()


def test_every_example_directory_has_a_readme_with_its_command() -> None:
    for name in AGENT_EXAMPLES:
        readme = (EXAMPLES / name / "README.md").read_text()
        assert f"python examples/{name}/agent.py" in readme


def test_replicas_example_stop_on_the_other_replica_stops_the_stream(
    redis_url: str, provider: LocalProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("redis", reason='examples/replicas needs redis-py: pip install "scoped-clients[redis]"')
    spec = importlib.util.spec_from_file_location("example_replicas", EXAMPLES / "replicas" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    provider.token_interval = 0.05  # the cancel crosses two servers and Redis: a margin for "one token at most"
    run = module.demo(redis_url, provider)
    (log,) = provider.requests  # the refused request never reached the LLM
    seen = log.wait_disconnect()
    assert run.stranger == 404  # the id alone is not enough to cancel: the owner's session is
    assert run.taken == 409  # nor can another client claim the id for a request of its own
    assert run.answer == {"stopped_here": 0, "sent": True}  # it ran on the other replica
    assert seen >= run.t_cancel and log.units_after(run.t_cancel) <= 1
    assert log.completed_at is None and run.received
    assert "provider saw the disconnect" in capsys.readouterr().out
    readme = (EXAMPLES / "replicas" / "README.md").read_text()
    assert "python examples/replicas/app.py" in readme
