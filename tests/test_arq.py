"""A real arq worker on the test's redis-server: ``Job.abort()`` and ``bus.cancel(job_id)`` stop
the job's in-flight LLM call at the provider, and the worker runs the next job.

The worker is ``arq _jobs_arq.WorkerSettings`` in a subprocess, started once for the module;
the jobs call this process's embedded provider through a scoped async OpenAI client.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip(
    "arq", reason="arq pins redis-py < 6, which Celery's Redis broker cannot use: run in python scripts/compat.py"
)

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from _helpers import job_worker, logged_reports, wait
from _redis import RedisServer
from scoped_clients.arq import JobCancelled
from scoped_clients.provider import LocalProvider, RequestLog
from scoped_clients.redis import RedisCancelBus

ARQ = Path(sys.executable).with_name("arq")


@dataclass
class ArqWorker:
    url: str
    log_path: Path

    def reports(self) -> dict[str, dict[str, Any]]:
        return logged_reports(self.log_path)


@pytest.fixture(scope="module")
def arq_worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArqWorker]:
    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    log_path = tmp_path_factory.mktemp("arq") / "worker.log"
    with job_worker([str(ARQ), "_jobs_arq.WorkerSettings"], log_path, {"SCOPED_JOBS_REDIS": url}) as process:
        deadline = time.monotonic() + 45
        while "Starting worker" not in log_path.read_text(errors="replace"):
            # a worker that is starting: no event to wait on
            assert process.poll() is None, f"the worker exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"the worker did not start in 45 s: {log_path.read_text()}"
            time.sleep(0.05)
        yield ArqWorker(url, log_path)
        assert process.poll() is None, f"the worker died: {log_path.read_text()}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # arq's client is asyncio-only


@pytest.fixture
async def arq_pool(arq_worker: ArqWorker) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(arq_worker.url))
    try:
        yield pool
    finally:
        await pool.aclose()


async def start_long_job(pool: ArqRedis, provider: LocalProvider, function: str = "complete") -> tuple[Job, RequestLog]:
    job = await pool.enqueue_job(function, provider.url + "/v1", "local-400", 400)
    assert job is not None
    (log,) = await wait(provider.wait_for_requests, 1, 30)
    await wait(log.wait_units, 3)
    return job, log


async def assert_next_job_runs(pool: ArqRedis, provider: LocalProvider) -> None:
    job = await pool.enqueue_job("complete", provider.url + "/v1", "local-3", 3)
    assert job is not None
    assert await job.result(timeout=20) == "tok0 tok1 tok2 "
    assert provider.requests[-1].completed_at is not None


@pytest.mark.anyio
async def test_abort_stops_the_llm_call(
    arq_worker: ArqWorker, arq_pool: ArqRedis, slow_provider: LocalProvider
) -> None:
    job, log = await start_long_job(arq_pool, slow_provider)
    t_cancel = time.monotonic()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            aborted: list[bool] = []

            async def abort() -> None:
                aborted.append(await job.abort(timeout=20, poll_delay=0.05))

            tg.start_soon(abort)
            seen = await wait(log.wait_disconnect, 10)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1  # our abort poll, not arq's (every 0.5 s), stopped it
    assert aborted == [True]  # arq recorded the abort as its own
    with pytest.raises(asyncio.CancelledError):
        await job.result(timeout=5)
    report = arq_worker.reports()[job.job_id]
    # "aborted": our 20 ms poll saw it; "job_cancelled": arq's own poll (every 0.5 s) happened to come
    # first and cancelled the task (it removes the id from its abort set as it does, so that case
    # cannot be told from a timeout); either way the call stopped at the socket (asserted above)
    assert report["outcome"] == "cancelled" and report["reason"] in ("aborted", "job_cancelled")
    assert report["aborted"] == 1
    await assert_next_job_runs(arq_pool, slow_provider)


@pytest.mark.anyio
async def test_abort_left_to_arq_still_cancels_the_scope(
    arq_worker: ArqWorker, arq_pool: ArqRedis, slow_provider: LocalProvider
) -> None:
    job, log = await start_long_job(arq_pool, slow_provider, "complete_arq_polls")
    t_cancel = time.monotonic()
    assert await job.abort(timeout=20, poll_delay=0.05) is True
    seen = await wait(log.wait_disconnect, 10)
    assert seen >= t_cancel and len(log.units) < 400
    report = arq_worker.reports()[job.job_id]
    assert report["outcome"] == "cancelled" and report["reason"] == "job_cancelled"
    await assert_next_job_runs(arq_pool, slow_provider)


@pytest.mark.anyio
async def test_bus_cancel_stops_the_llm_call(
    arq_worker: ArqWorker, arq_pool: ArqRedis, slow_provider: LocalProvider
) -> None:
    job, log = await start_long_job(arq_pool, slow_provider)
    async with RedisCancelBus.from_url(arq_worker.url) as bus:
        t_cancel = time.monotonic()
        await bus.cancel(job.job_id, "user_stopped", "the user pressed Stop")
        seen = await wait(log.wait_disconnect, 10)
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1
    with pytest.raises(JobCancelled, match="user_stopped") as caught:
        await job.result(timeout=20)
    assert caught.value.code == "user_stopped" and caught.value.job_id == job.job_id
    report = arq_worker.reports()[job.job_id]
    assert report["reason"] == "user_stopped" and report["aborted"] == 1
    await assert_next_job_runs(arq_pool, slow_provider)
