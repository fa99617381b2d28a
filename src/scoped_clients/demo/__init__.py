"""``scoped-clients demo``: the same app on the raw SDKs and on scoped_clients, side by side.

An embedded local provider (``scoped_clients.provider``) plays OpenAI, Anthropic,
Cohere and Qdrant, and the MCP SDK's own server runs a tool in its own process
(``demo.mcp_tool``); a sample Starlette app runs under real uvicorn twice (raw SDKs,
then scoped clients behind ``ScopeMiddleware``); a raw-socket client drops each
request the way a browser closing a tab does, and the table shows what the
upstream did after the drop.  Needs the ``demo`` extra.
"""

from .scenarios import SCENARIOS as SCENARIOS
from .scenarios import run_demo as run_demo
from .scenarios import run_scenarios as run_scenarios

__all__ = ["SCENARIOS", "run_demo", "run_scenarios"]
