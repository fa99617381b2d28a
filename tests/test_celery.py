"""A real Celery worker (prefork and threads pools) on the test's redis-server: each way of
cancelling a job stops its in-flight LLM call at the provider, and the worker runs the next job.

The worker is ``celery -A _jobs_celery worker`` in a subprocess, started once per pool for the
module; the tasks call this process's embedded provider through a scoped sync OpenAI client.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("celery")
redis = pytest.importorskip("redis")

from celery.contrib.abortable import AbortableAsyncResult  # noqa: E402
from celery.exceptions import TaskRevokedError  # noqa: E402

from _helpers import job_worker, logged_reports  # noqa: E402
from _redis import RedisServer  # noqa: E402
from scoped_clients.provider import LocalProvider, RequestLog  # noqa: E402
from scoped_clients.redis import DEFAULT_CHANNEL, RedisCancelBus  # noqa: E402

CELERY = Path(sys.executable).with_name("celery")


@dataclass
class Worker:
    pool: str
    jobs: ModuleType  # tests/_jobs_celery.py, imported here with the worker's settings
    bus: RedisCancelBus
    log_path: Path

    def reports(self) -> dict[str, dict[str, Any]]:
        """The scope reports the worker logged, by scope id."""
        return logged_reports(self.log_path)


@pytest.fixture(scope="module")
def _jobs(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ModuleType, dict[str, str]]]:
    if redis.VERSION < (6, 1):
        pytest.skip(
            "kombu's Redis broker needs redis-py >= 6.1 (celery[redis]); this environment has "
            f"{redis.__version__} (arq pins redis-py < 6: its tests run in scripts/compat.py's venv)"
        )
    env = {"SCOPED_JOBS_REDIS": redis_server.url.rsplit("/", 1)[0] + "/1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    sys.modules.pop("_jobs_celery", None)
    try:
        yield importlib.import_module("_jobs_celery"), env
    finally:
        sys.modules.pop("_jobs_celery", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module", params=["prefork", "threads"])
def worker(
    request: pytest.FixtureRequest, _jobs: tuple[ModuleType, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    jobs, env = _jobs
    pool = str(request.param)
    log_path = tmp_path_factory.mktemp(f"celery-{pool}") / "worker.log"
    name = f"{pool}-{os.getpid()}@127.0.0.1"
    args = [str(CELERY), "-A", "_jobs_celery", "worker", "-P", pool, "-c", "2", "-n", name, "--loglevel=INFO"]
    with job_worker(args, log_path, env) as process:  # on exit: SIGTERM, a warm shutdown
        bus = RedisCancelBus.from_url(env["SCOPED_JOBS_REDIS"])
        try:
            deadline = time.monotonic() + 45
            while not jobs.app.control.ping(destination=[name], timeout=0.5):
                # a worker that is starting: no event to wait on
                assert process.poll() is None, f"the worker exited: {log_path.read_text()}"
                assert time.monotonic() < deadline, f"the worker did not answer a ping in 45 s: {log_path.read_text()}"
            assert bus.wait_connected(10)
            # every worker process's bus is subscribed (prefork: the main process and 2 children)
            subscribers = 1 + (3 if pool == "prefork" else 1)
            client = redis.Redis.from_url(env["SCOPED_JOBS_REDIS"])
            try:
                while client.pubsub_numsub(DEFAULT_CHANNEL)[0][1] < subscribers:
                    assert time.monotonic() < deadline, f"the worker's bus did not connect: {log_path.read_text()}"
                    time.sleep(0.05)
            finally:
                client.close()
            yield Worker(pool, jobs, bus, log_path)
            assert process.poll() is None, f"the worker died: {log_path.read_text()}"
        finally:
            bus.close()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def start_long_job(worker: Worker, provider: LocalProvider) -> tuple[Any, RequestLog]:
    result = worker.jobs.complete.delay(provider.url + "/v1", "local-400", 400)
    (log,) = provider.wait_for_requests(1, timeout=30)
    log.wait_units(3)
    return result, log


def assert_stopped_and_next_job_runs(
    worker: Worker, provider: LocalProvider, result: Any, log: RequestLog, t_cancel: float, code: str
) -> None:
    seen = log.wait_disconnect(10)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1  # the provider stopped at its next token
    assert len(log.units) < 400
    with pytest.raises(TaskRevokedError, match=code):
        result.get(timeout=20)
    assert result.state == "REVOKED"
    report = worker.reports()[result.id]
    assert report["outcome"] == "cancelled" and report["reason"] == code
    assert report["aborted"] == 1 and report["tokens_saved_max"] > 0

    # the worker process survived and takes the next job
    assert worker.jobs.complete.delay(provider.url + "/v1", "local-3", 3).get(timeout=20) == "tok0 tok1 tok2 "
    assert provider.requests[-1].completed_at is not None


def test_abort_stops_the_llm_call(worker: Worker, slow_provider: LocalProvider) -> None:
    result, log = start_long_job(worker, slow_provider)
    t_cancel = time.monotonic()
    AbortableAsyncResult(result.id, app=worker.jobs.app).abort()
    assert_stopped_and_next_job_runs(worker, slow_provider, result, log, t_cancel, "aborted")


def test_revoke_without_terminate_stops_the_llm_call(worker: Worker, slow_provider: LocalProvider) -> None:
    result, log = start_long_job(worker, slow_provider)
    t_cancel = time.monotonic()
    worker.jobs.app.control.revoke(result.id)
    assert_stopped_and_next_job_runs(worker, slow_provider, result, log, t_cancel, "revoked")


def test_bus_cancel_stops_the_llm_call(worker: Worker, slow_provider: LocalProvider) -> None:
    result, log = start_long_job(worker, slow_provider)
    t_cancel = time.monotonic()
    worker.bus.cancel_sync(result.id, "user_stopped", "the user pressed Stop")
    assert_stopped_and_next_job_runs(worker, slow_provider, result, log, t_cancel, "user_stopped")


def test_cancel_before_the_job_starts_refuses_its_call(worker: Worker, provider: LocalProvider) -> None:
    task_id = f"job-cancelled-early-{worker.pool}"
    worker.bus.cancel_sync(task_id, "user_stopped")
    result = worker.jobs.complete.apply_async((provider.url + "/v1", "local-400", 400), task_id=task_id)
    with pytest.raises(TaskRevokedError, match="user_stopped"):
        result.get(timeout=20)
    assert provider.requests == []  # the call was refused: it never reached the provider
    report = worker.reports()[task_id]
    assert report["refused"] == 1 and report["reason"] == "user_stopped"


# ----------------------------------------------- the abort watcher alone (no worker)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _watched_scope(app: Any, task_id: str) -> tuple[Any, Any, threading.Event]:
    from scoped_clients import RequestScope
    from scoped_clients.celery import _watch_aborts

    scope = RequestScope("watched", id=task_id)
    cancelled = threading.Event()
    scope.on_cancel(cancelled.set)
    return scope, _watch_aborts(app.backend, scope), cancelled


def test_abort_watcher_sees_earlier_aborts_and_survives_a_redis_restart(own_redis: RedisServer) -> None:
    from celery import Celery

    app = Celery("watcher-test", broker="memory://", backend=own_redis.url)
    try:
        # stored before the watch started: found when the subscription is confirmed
        AbortableAsyncResult("early", app=app).abort()
        scope, unwatch, cancelled = _watched_scope(app, "early")
        with scope:
            assert cancelled.wait(10)
        unwatch()
        assert scope.cancel_reason is not None and scope.cancel_reason.code == "aborted"

        own_redis.stop()  # Redis goes away while a task is watched, and comes back
        scope, unwatch, cancelled = _watched_scope(app, "across-restart")
        with scope:
            own_redis.start()
            AbortableAsyncResult("across-restart", app=app).abort()
            assert cancelled.wait(15)  # resubscribed (and looked the key up) after the reconnect
        unwatch()

        # the watcher still serves after the restart
        scope, unwatch, cancelled = _watched_scope(app, "later")
        with scope:
            AbortableAsyncResult("later", app=app).abort()
            assert cancelled.wait(10)
        unwatch()
    finally:
        app.close()
