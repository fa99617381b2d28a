"""The local provider in a separate process, so it does not share the measured client's GIL."""

from __future__ import annotations

import subprocess
import sys
import time
from types import TracebackType
from typing import Any

import httpx


class RemoteProvider:
    def __init__(self, token_interval: float = 0.01, default_tokens: int = 50) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scoped_clients.provider",
                "--token-interval",
                str(token_interval),
                "--default-tokens",
                str(default_tokens),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.url = self._process.stdout.readline().strip()
        self._http = httpx.Client(base_url=self.url, timeout=30)

    def __enter__(self) -> RemoteProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(10)

    def log(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._http.get("/_provider/log").json()
        return result

    def reset(self) -> None:
        self._http.post("/_provider/reset")

    def wait(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll the log until ``predicate(log)`` holds (a benchmark, not a test: polling is fine here)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if predicate(log):
                return log
            if time.monotonic() > deadline:
                raise TimeoutError("the remote provider did not reach the expected state")
            time.sleep(0.005)


def units_after(entry: dict[str, Any], t: float) -> int:
    return sum(1 for u in entry["units"] if u > t)


__all__ = ["RemoteProvider", "TracebackType", "units_after"]
