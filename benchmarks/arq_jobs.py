"""An arq job aborted mid-call: how soon the provider stops, arq's own abort vs a scoped job.

    .venv/bin/python benchmarks/arq_jobs.py [--runs 8]

The job is one non-streamed chat completion of 300 tokens (10 ms per token) on the embedded
provider; the cancel comes after 20-60 tokens (the same points for every row).  arq notices
``Job.abort()`` when its poll loop next reads the ``arq:abort`` set (``poll_delay``, 0.5 s by
default) and cancels the job's task; cancelling the task closes the connection, so a raw
client is stopped at the socket too, only late.  Rows:

- raw ``openai.AsyncOpenAI``, ``Job.abort()``: arq alone;
- ``@scoped_job(abort_poll=None)``, ``Job.abort()``: the same timing, the scope reports it;
- ``@scoped_job`` (``abort_poll=0.02``), ``Job.abort()``: our look at the abort set;
- ``@scoped_job``, ``await bus.cancel(job_id)``: a push on the Redis bus.

A real worker (``arq arq_jobs.WorkerSettings``, this file) on a redis-server of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import openai
from _common import job_worker, machine, redis_server, spread, table, wait_for
from arq.connections import RedisSettings

import scoped_clients.openai as scoped_openai
from scoped_clients.arq import scoped_job

TOKENS = 300
REDIS_URL = os.environ.get("ARQ_JOBS_REDIS", "redis://127.0.0.1:6379/4")


async def _ask(client: openai.AsyncOpenAI) -> str:
    completion = await client.chat.completions.create(
        model=f"local-{TOKENS}", messages=[{"role": "user", "content": "summarize"}], max_tokens=TOKENS
    )
    return completion.choices[0].message.content or ""


async def raw(ctx: dict[str, Any], base_url: str) -> str:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        return await _ask(client)


async def _scoped(base_url: str) -> str:
    async with scoped_openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        return await _ask(client)


def _bus() -> Any:
    from scoped_clients.redis import RedisCancelBus

    return RedisCancelBus.from_url(REDIS_URL)


_worker_bus = _bus() if "ARQ_JOBS_REDIS" in os.environ else None


@scoped_job(bus=_worker_bus, abort_poll=None)
async def scoped_arq_poll(ctx: dict[str, Any], base_url: str) -> str:
    return await _scoped(base_url)


@scoped_job(bus=_worker_bus)
async def scoped(ctx: dict[str, Any], base_url: str) -> str:
    return await _scoped(base_url)


class WorkerSettings:
    functions = (raw, scoped_arq_poll, scoped)
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    allow_abort_jobs = True
    max_jobs = 2


# ------------------------------------------------------------------ driver


async def _measure(url: str, runs: int) -> list[tuple[str, str, list[tuple[int, float, str]]]]:
    from arq import create_pool

    from scoped_clients.provider import LocalProvider
    from scoped_clients.redis import RedisCancelBus

    kinds = [
        ("raw `openai.AsyncOpenAI`", "`Job.abort()` (arq's poll, 0.5 s)", "raw", "abort"),
        ("`@scoped_job(abort_poll=None)`", "`Job.abort()` (arq's poll, 0.5 s)", "scoped_arq_poll", "abort"),
        ("`@scoped_job` (`abort_poll=0.02`)", "`Job.abort()`", "scoped", "abort"),
        ("`@scoped_job`", "`await bus.cancel(job_id)`", "scoped", "bus"),
    ]
    results: dict[int, list[tuple[int, float, str]]] = {i: [] for i in range(len(kinds))}
    points = [20 + (40 * i) // max(1, runs - 1) for i in range(runs)]
    pool = await create_pool(RedisSettings.from_dsn(url))
    bus = RedisCancelBus.from_url(url)
    await asyncio.to_thread(bus.wait_connected, 10)
    try:
        with LocalProvider(token_interval=0.01) as provider:
            for run in range(runs):
                for index, (_, _, function, how) in enumerate(kinds):
                    provider.reset()
                    job = await pool.enqueue_job(function, provider.url + "/v1")
                    assert job is not None
                    (log,) = await asyncio.to_thread(provider.wait_for_requests, 1, 30)
                    await asyncio.to_thread(log.wait_units, points[run])
                    t_cancel = time.monotonic()
                    if how == "abort":
                        outcome = "aborted" if await job.abort(timeout=30, poll_delay=0.05) else "not aborted"
                    else:
                        await bus.cancel(job.job_id, "user_stopped")
                        try:
                            await job.result(timeout=30)
                            outcome = "completed"
                        except Exception as exc:
                            outcome = type(exc).__name__
                    await asyncio.to_thread(log.wait_done, 30)
                    stopped = log.disconnected_at or log.completed_at or t_cancel
                    results[index].append((log.units_after(t_cancel), (stopped - t_cancel) * 1000, outcome))
    finally:
        await bus.aclose()
        await pool.aclose()
    return [(label, cancel, results[i]) for i, (label, cancel, _, _) in enumerate(kinds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="cancels per row (default 8)")
    args = parser.parse_args()

    arq = [str(Path(sys.executable).with_name("arq")), "arq_jobs.WorkerSettings"]
    with redis_server(db=4) as url, job_worker(arq, {"ARQ_JOBS_REDIS": url}) as (worker, log_path):
        wait_for(lambda: "Starting worker" in log_path.read_text(errors="replace"), "the arq worker", worker)
        rows = asyncio.run(_measure(url, args.runs))

    from importlib import metadata

    print(f"Machine: {machine()}; arq {metadata.version('arq')}, redis-py {metadata.version('redis')}")
    print(f"{args.runs} cancels per row, interleaved; job: 1 call x {TOKENS} tokens at 10 ms; medians [min-max]\n")
    headers = ["job", "cancel", "tokens after the cancel", "cancel -> upstream stopped (ms)", "job ended"]
    body = [
        [label, cancel, spread([s[0] for s in samples]), spread([s[1] for s in samples], 1), _outcomes(samples)]
        for label, cancel, samples in rows
    ]
    print(table(headers, body))


def _outcomes(samples: list[tuple[int, float, str]]) -> str:
    return "/".join(sorted({s[2] for s in samples}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
