"""Shared helpers for the benchmark scripts: statistics, Markdown tables, the machine line,
a redis-server and job workers of their own."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Sequence[float], digits: int = 0) -> str:
    """``median [min-max]``, each with ``digits`` decimals."""
    return f"{median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = []
    for name in ("scoped-clients", "anyio", "httpx", "httpx2", "openai", "trio"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]} on {platform.system()}; " + ", ".join(
        versions
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(ready: Callable[[], object], what: str, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    """Poll ``ready()`` until it is true; ``RuntimeError`` if ``process`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, process: subprocess.Popen[Any], what: str) -> None:
    wait_for(lambda: port_open(port), what, process, timeout=30)


@contextmanager
def redis_server(db: int = 0) -> Iterator[str]:
    """A redis-server of its own on 127.0.0.1 (Debian's, on PATH), saving nothing; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        process = subprocess.Popen([*args, "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            wait_port(port, process, "redis-server")
            yield f"redis://127.0.0.1:{port}/{db}"
        finally:
            process.kill()
            process.wait()


@contextmanager
def job_worker(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A job worker's process, ``args`` run in ``benchmarks/`` (importable) with ``env`` added; yields it
    and the file its stderr goes to.  On exit, SIGTERM (a warm shutdown), killed if it has not ended
    in 30 s; its log is deleted, or kept and named on stderr if the block failed."""
    work = Path(tempfile.mkdtemp(prefix="worker-"))
    log_path = work / "worker.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            args,
            cwd=HERE,
            env={**os.environ, **env, "PYTHONPATH": str(HERE)},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )
    failed = True
    try:
        yield process, log_path
        failed = False
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if failed:
            print(f"the worker's log: {log_path}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
