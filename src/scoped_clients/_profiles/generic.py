"""The profile of any HTTP call: named by method, host and path; counts no tokens."""

from __future__ import annotations

from urllib.parse import urlsplit

from .._calls import CallInfo, Meter


class GenericProfile:
    provider = "http"

    def describe(self, method: str, url: str, body: bytes) -> CallInfo:
        parts = urlsplit(url)
        return CallInfo(provider=self.provider, operation=f"{method} {parts.hostname}{parts.path}")

    def meter(self, info: CallInfo, status_code: int, content_type: str) -> Meter:
        return Meter()
