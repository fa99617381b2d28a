"""The vendors: one private module each, and the registry the rest of the package asks.

A vendor module (``openai.py``, ``anthropic.py``, ``cohere.py``, ``qdrant.py``,
``generic.py`` for plain HTTP) carries everything scoped_clients knows about one
vendor: how its calls are recognised and named (its ``Profile``), its meters and
usage parsing, which of its operations generate tokens, the labels its operations
get in metrics, its ``always_stream`` plan and reassembler with its error table,
and its drop-in client names.  It ends with ``VENDOR = Vendor(...)``.

The transport, the savings, the metrics and ``always_stream`` never keep a table
of their own: they ask this registry (``by_provider``, ``generates_tokens``,
``gen_ai_operation``, ``plan_stream``, ``by_sdk``).  The registry finds the vendor
modules by listing this package (those whose source declares ``VENDOR = Vendor(``):
adding a vendor is adding its module (see CONTRIBUTING.md).  A vendor module must
import without its SDK (``_dropin`` imports the SDK when the drop-in names are first
used).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._calls import Profile

if TYPE_CHECKING:
    from ._assemble import StreamPlan

__all__ = [
    "DropInName",
    "Vendor",
    "by_provider",
    "by_sdk",
    "gen_ai_operation",
    "generates_tokens",
    "plan_stream",
    "vendors",
]


@dataclass(frozen=True, slots=True)
class Vendor:
    """What one vendor module tells the rest of the package."""

    #: ``CallInfo.provider`` of its calls (``"openai"``)
    provider: str
    #: its profile class: names the calls, builds the meters
    profile: Callable[[], Profile]
    #: the module of its SDK that exports the client classes (``"openai"``, ``"qdrant_client"``,
    #: ``"mistralai.client"``), None for plain HTTP; ``by_sdk`` knows it by its top-level name
    sdk: str | None = None
    #: operations that generate tokens: an aborted one gets a tokens_saved estimate
    generative: frozenset[str] = frozenset()
    #: its operation names -> ``gen_ai.operation.name`` (metrics); any other is ``"other"``
    gen_ai_operations: Mapping[str, str] = field(default_factory=dict)
    #: ``always_stream``: the streamed form of one of its non-streamed generation requests, or None
    plan_stream: Callable[[Any], StreamPlan | None] | None = None
    #: its public module (``"scoped_clients.openai"``), which exports the drop-in names
    shim: str | None = None
    #: its drop-in names (``_dropin`` builds them from these, importing the SDK only then)
    dropins: tuple[DropInName, ...] = ()
    #: the SDK's own HTTP client classes, async and sync (the first that exists), for
    #: ``async_http_client()`` / ``http_client()``
    http_clients: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DropInName:
    """One drop-in name, as its vendor module declares it."""

    #: the SDK's class name, which the drop-in name repeats (``"AsyncOpenAI"``)
    name: str
    doc: str
    #: where a vendor instance keeps its httpx(2) client
    http_path: tuple[str, ...]
    #: the constructor argument through which a caller passes their own HTTP client
    http_arg: str | None = None
    #: further ``(http_path, http_arg)`` pairs, for an instance that holds more than one HTTP
    #: client (Mistral: a sync one and an async one)
    more_http: tuple[tuple[tuple[str, ...], str | None], ...] = ()
    #: called with each vendor instance once its HTTP clients are scoped (a vendor's own guards)
    on_scoped: Callable[[Any], None] | None = None
    #: the keyword options the drop-in adds to the vendor's constructor
    options: tuple[str, ...] = ("always_stream", "finish_policy")
    #: checks the constructor's arguments before the vendor's constructor runs (raises to refuse)
    check: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None
    #: for an SDK whose instance holds more than one HTTP client (google-genai's sync and async):
    #: scopes them all, given the instance and ``scoped(http, built_by_sdk)``, which returns one
    #: HTTP client scoped; ``http_path`` then only tells a scoped instance (``isinstance``)
    scope: Callable[[Any, Callable[[Any, bool], Any]], None] | None = None


class _Registry:
    """Every vendor module of this package, imported once, on first use."""

    def __init__(self) -> None:
        self.loaded = False
        self.all: tuple[Vendor, ...] = ()
        self.providers: dict[str, Vendor] = {}
        self.sdks: dict[str, Vendor] = {}
        self.planners: tuple[Callable[[Any], StreamPlan | None], ...] = ()
        #: for calls of a provider no vendor module knows (a user's own ``Profile``)
        self.any_generative: frozenset[str] = frozenset()
        self.any_gen_ai: dict[str, str] = {}

    def load(self) -> _Registry:
        if self.loaded:
            return self
        found: list[Vendor] = []
        for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            vendor = _vendor_of(f"{__name__}.{module_info.name}") if not module_info.name.startswith("_") else None
            if vendor is not None:
                found.append(vendor)
        self.all = tuple(found)
        self.providers = {v.provider: v for v in found}
        # by the SDK's import name: "openai", or under a namespace package "google.genai", "mistralai.client"
        self.sdks = {v.sdk: v for v in found if v.sdk is not None}
        self.planners = tuple(v.plan_stream for v in found if v.plan_stream is not None)
        self.any_generative = frozenset().union(*(v.generative for v in found))
        # an unknown provider is taken for an LLM API: the token-generating vendors' names
        self.any_gen_ai = {k: v for vendor in found if vendor.generative for k, v in vendor.gen_ai_operations.items()}
        self.loaded = True
        return self


def _vendor_of(name: str) -> Vendor | None:
    """The ``VENDOR`` of module ``name``, importing only a module whose source declares one.

    A module of this package that is not a vendor's (``mcp.py`` imports its SDK at once) is
    never imported here; a vendor module whose import needs a package that is not
    installed is skipped (no call can be its without its SDK).
    """
    spec = importlib.util.find_spec(name)
    loader = None if spec is None else spec.loader
    get_source = getattr(loader, "get_source", None)
    source = get_source(name) if get_source is not None else None
    if source is not None and "VENDOR = Vendor(" not in source:
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if exc.name is not None and not exc.name.startswith("scoped_clients"):
            return None
        raise
    vendor = getattr(module, "VENDOR", None)
    return vendor if isinstance(vendor, Vendor) else None


_registry = _Registry()


def vendors() -> tuple[Vendor, ...]:
    """Every vendor module's ``VENDOR``, by module name."""
    return _registry.load().all


def by_provider(provider: str) -> Vendor | None:
    """The vendor whose calls carry ``provider`` (``CallInfo.provider``)."""
    return _registry.load().providers.get(provider)


def by_sdk(root: str) -> Vendor | None:
    """The vendor whose SDK is imported as ``root`` (``"openai"``, ``"qdrant_client"``, ``"google.genai"``)."""
    return _registry.load().sdks.get(root)


def generates_tokens(provider: str, operation: str) -> bool:
    """Whether a call generates tokens (an aborted one then gets a savings estimate).

    A provider no vendor module knows (a user's own ``Profile``) is asked about by
    operation name alone, against every vendor's generative operations.
    """
    registry = _registry.load()
    vendor = registry.providers.get(provider)
    return operation in (registry.any_generative if vendor is None else vendor.generative)


def gen_ai_operation(provider: str, operation: str) -> str | None:
    """The call's ``gen_ai.operation.name``, or None when its vendor has no name for it."""
    registry = _registry.load()
    vendor = registry.providers.get(provider)
    return (registry.any_gen_ai if vendor is None else vendor.gen_ai_operations).get(operation)


def plan_stream(request: Any) -> StreamPlan | None:
    """``always_stream``: the streamed form of a non-streamed generation request, or None to send it as it is.

    Each vendor with a stream plan recognises its own endpoints (their paths differ).
    """
    if request.method != "POST":
        return None
    for plan in _registry.load().planners:
        planned = plan(request)
        if planned is not None:
            return planned
    return None
