"""The scoped transport: what every HTTP call made under a scope goes through.

Layers, each importing only the ones below it::

    scoped_clients.httpx / httpx2 / openai ...   public shims: re-export
    scoped_clients._dropin                        the drop-in names (vendor instances, scoped)
    _transport._base                              the library-neutral transport and client scoping;
                                                  one thin class per HTTP library, built from it
    _transport._call                              one call: admitted, aborted, metered, recorded
    _transport._record / _sockets                 its record and savings; the socket under it
    _vendors                                      what each vendor's calls are (names, meters, plans)
    _scope                                        the RequestScope that owns the calls

See ``_call`` for how a call is aborted wherever it is.
"""

from __future__ import annotations

from typing import Literal

FinishPolicy = Literal["abort", "finish_if_done"]


def check_options(finish_policy: object, always_stream: object) -> None:
    """Validate the two options scoped clients add to the vendor's."""
    if finish_policy not in ("abort", "finish_if_done"):
        raise ValueError(f"finish_policy must be 'abort' or 'finish_if_done', not {finish_policy!r}")
    if not isinstance(always_stream, bool):
        raise TypeError(f"always_stream must be True or False, not {always_stream!r}")
