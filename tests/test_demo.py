"""The demo end to end: the same app on the raw SDKs and on scoped_clients under real uvicorn.

Every scenario is dropped by a raw-socket client; the provider's own log is
the evidence: with scoped_clients it produced at most one unit after the drop
and no call started after it, while the raw app kept going.
"""

from __future__ import annotations

import pytest

from scoped_clients.cli import main
from scoped_clients.demo import SCENARIOS, run_demo
from scoped_clients.demo.scenarios import MCP_SCENARIOS


@pytest.mark.timeout(300)  # every scenario twice, the raw app's window included (agent scenarios when installed)
def test_demo_stops_every_scenario_upstream() -> None:
    lines: list[str] = []
    results = run_demo(print_=lines.append)
    assert set(results) == {s.name for s in SCENARIOS}
    for name, by_mode in results.items():
        scoped = by_mode["scoped"]
        assert scoped.units_after_drop <= 1, name
        assert scoped.calls_after_drop == 0, name
        assert scoped.latency_ms is not None, f"{name}: the upstream never saw the scoped app go"
        assert scoped.reason == "client_disconnected", name
    # the baseline really is a baseline: plain handlers ran on after the user left
    assert results["non-streaming chat"]["raw"].units_after_drop > 100
    assert results["non-streaming chat (Anthropic)"]["raw"].units_after_drop > 100
    assert results["non-streaming chat (Gemini)"]["raw"].units_after_drop > 100
    if "non-streaming chat (LiteLLM, anthropic/)" in results:  # when LiteLLM is installed
        assert results["non-streaming chat (LiteLLM, anthropic/)"]["raw"].units_after_drop > 100
    assert results["RAG: search -> rerank -> LLM"]["raw"].calls_after_drop == 2
    assert results["tool subprocess"]["raw"].units_after_drop > 100
    # the MCP row (the test extra installs mcp): what the MCP server's tool handler noted itself; the
    # vendor's client left the tool running (the call's task is not the request's), ours had it cancelled
    (mcp,) = MCP_SCENARIOS
    assert mcp.name in results, "the MCP row needs the mcp extra (part of demo and test)"
    raw_mcp, scoped_mcp = results[mcp.name]["raw"], results[mcp.name]["scoped"]
    assert raw_mcp.latency_ms is None and raw_mcp.notes == ["ran to the end"] and raw_mcp.units_after_drop > 50
    assert scoped_mcp.latency_ms is not None and scoped_mcp.latency_ms < 1000 and not scoped_mcp.notes
    assert "Upstream work after the user left" in lines[-1]


def test_cli_without_a_command_is_a_usage_error(capsys: object) -> None:
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
