"""scoped_clients: stop paying for AI work nobody is waiting for.

A ``RequestScope`` owns every call made for one request; drop-in clients for
the vendor SDKs register their calls with the ambient scope; cancelling the
scope stops them at the socket, so the provider sees the disconnect and stops
generating, and the scope's report says how many tokens that saved.
"""

from ._bus import CancelBus as CancelBus
from ._bus import LocalCancelBus as LocalCancelBus
from ._calls import CallInfo as CallInfo
from ._calls import Meter as Meter
from ._calls import Profile as Profile
from ._dropin import scope_client as scope_client
from ._exceptions import ScopeCancelled as ScopeCancelled
from ._exceptions import ScopedClientsError as ScopedClientsError
from ._exceptions import ScopeStateError as ScopeStateError
from ._exceptions import ScopeUsageError as ScopeUsageError
from ._exceptions import UnsupportedError as UnsupportedError
from ._hops import DEADLINE_HEADER as DEADLINE_HEADER
from ._reasons import CancelReason as CancelReason
from ._reasons import ReasonCode as ReasonCode
from ._report import CallRecord as CallRecord
from ._report import ScopeReport as ScopeReport
from ._report import add_report_sink as add_report_sink
from ._savings import set_prices as set_prices
from ._scope import RequestScope as RequestScope
from ._scope import current_scope as current_scope
from ._scope import detached as detached

__version__ = "0.1.0"

__all__ = [
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
]
