"""MCP client sessions whose requests belong to the ambient ``RequestScope`` (``pip install scoped-clients[mcp]``).

``from scoped_clients.mcp import Client`` instead of ``from mcp import Client``: the
same constructor builds the SDK's own ``mcp.Client`` (``type(client) is mcp.Client``);
every request its session sends from inside a scope (``call_tool``, ``list_tools``,
``read_resource``...) is owned by that scope: refused once it is cancelled, and on
cancel the caller gets ``ScopeCancelled`` at once while the server is told to stop
(``notifications/cancelled``, or the request's stream closed on protocol 2026-07-28),
whichever task or thread the call runs in.  ``ClientSession`` likewise;
``scope_session(session)`` scopes a session a framework built.  One keyword option
is added: ``hard_stop=seconds`` closes the session that long after a call was aborted
(and ends a stdio server's whole process group), for servers that ignore cancels.
See ``scoped_clients._vendors.mcp`` for how and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Client", "ClientSession", "scope_session"]

if TYPE_CHECKING:
    from mcp import Client as Client
    from mcp import ClientSession as ClientSession

    from ._vendors.mcp import scope_session as scope_session
else:
    from ._vendors.mcp import Client as Client
    from ._vendors.mcp import ClientSession as ClientSession
    from ._vendors.mcp import scope_session as scope_session
