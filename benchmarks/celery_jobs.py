"""A Celery job cancelled mid-call: tokens the provider produced after the cancel, ours vs
Celery's ``AbortableTask`` polling ``is_aborted()`` between steps (same worker, same run).

    .venv/bin/python benchmarks/celery_jobs.py [--runs 8] [--pool prefork]

The job is a 3-step pipeline, each step a non-streamed chat completion of 100 tokens
(10 ms per token) on the embedded provider.  The cancel comes while step 1 generates,
after 10-70 tokens (the same points for every row).  Rows:

- ``AbortableTask`` + raw ``openai.OpenAI``, ``AbortableAsyncResult.abort()``: the
  documented pattern, ``if self.is_aborted(): return`` before each step;
- ``ScopedTask`` + ``scoped_clients.openai.OpenAI``, cancelled by ``abort()``,
  ``app.control.revoke()`` (no terminate) and ``bus.cancel_sync()``.

A real worker (``celery -A celery_jobs worker``, this file) on a redis-server of its own
(Debian's ``redis-server`` on PATH): Redis broker and result backend (kombu's Redis transport
needs redis-py >= 6.1: ``pip install "celery[redis]"``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import openai
from _common import job_worker, machine, redis_server, spread, table, wait_for
from celery import Celery
from celery.contrib.abortable import AbortableAsyncResult, AbortableTask

import scoped_clients.openai as scoped_openai
from scoped_clients.celery import ScopedTask, setup

STEPS = 3
TOKENS = 100
REDIS_URL = os.environ.get("CELERY_JOBS_REDIS", "redis://127.0.0.1:6379/3")


def _app() -> Celery:
    app = Celery("celery_jobs", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(worker_prefetch_multiplier=1, worker_hijack_root_logger=False)
    return app


app = _app()
if "CELERY_JOBS_REDIS" in os.environ:
    from scoped_clients.redis import RedisCancelBus

    setup(app, bus=RedisCancelBus.from_url(REDIS_URL))


def _ask(client: openai.OpenAI, step: int) -> str:
    completion = client.chat.completions.create(
        model=f"local-{TOKENS}", messages=[{"role": "user", "content": f"step {step}"}], max_tokens=TOKENS
    )
    return completion.choices[0].message.content or ""


@app.task(base=AbortableTask, bind=True, name="bench.abortable")
def abortable_pipeline(self: AbortableTask, base_url: str) -> str:
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
    try:
        for step in range(STEPS):
            if self.is_aborted():  # Celery's documented pattern: poll between steps
                return "aborted"
            _ask(client, step)
    finally:
        client.close()
    return "done"


@app.task(base=ScopedTask, name="bench.scoped")
def scoped_pipeline(base_url: str) -> str:
    client = scoped_openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
    try:
        for step in range(STEPS):
            _ask(client, step)
    finally:
        client.close()
    return "done"


# ------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="cancels per row (default 8)")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads"])
    args = parser.parse_args()

    from scoped_clients.provider import LocalProvider
    from scoped_clients.redis import RedisCancelBus

    with redis_server(db=3) as url:
        os.environ["CELERY_JOBS_REDIS"] = url
        # this module, imported again with the worker's settings (the one running is __main__)
        sys.modules.pop("celery_jobs", None)
        import celery_jobs as jobs

        celery = str(Path(sys.executable).with_name("celery"))
        argv = [celery, "-A", "celery_jobs", "worker", "-P", args.pool, "-c", "2"]
        with job_worker(argv, {"CELERY_JOBS_REDIS": url}) as (worker, _):
            wait_for(lambda: jobs.app.control.ping(timeout=0.5), "the worker", worker)
            bus = RedisCancelBus.from_url(url)
            bus.wait_connected(10)
            rows = _measure(jobs, bus, LocalProvider, args.runs)
            bus.close()

    print(f"Machine: {machine()}; celery {_version('celery')}, redis-py {_version('redis')}")
    print(f"Pool: {args.pool}, -c 2; broker: Redis")
    print(
        f"{args.runs} cancels per row, interleaved; job: {STEPS} steps x {TOKENS} tokens at 10 ms; medians [min-max]\n"
    )
    headers = [
        "job",
        "cancel",
        "tokens after the cancel",
        "cancel -> upstream stopped (ms)",
        "calls started after",
        "final state",
    ]
    body = []
    for label, cancel, samples in rows:
        tokens = [s[0] for s in samples]
        stop = [s[1] for s in samples]
        late = [s[2] for s in samples]
        states = sorted({s[3] for s in samples})
        body.append([label, cancel, spread(tokens), spread(stop, 1), spread(late), "/".join(states)])
    print(table(headers, body))


def _version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def _measure(
    jobs: Any, bus: Any, provider_cls: Any, runs: int
) -> list[tuple[str, str, list[tuple[int, float, int, str]]]]:
    kinds = [
        ("`AbortableTask`, polls `is_aborted()` between steps", "`abort()`", jobs.abortable_pipeline, "abort"),
        ("`ScopedTask`", "`abort()`", jobs.scoped_pipeline, "abort"),
        ("`ScopedTask`", "`revoke()`", jobs.scoped_pipeline, "revoke"),
        ("`ScopedTask`", "`bus.cancel_sync()`", jobs.scoped_pipeline, "bus"),
    ]
    results: dict[int, list[tuple[int, float, int, str]]] = {i: [] for i in range(len(kinds))}
    points = [10 + (60 * i) // max(1, runs - 1) for i in range(runs)]
    with provider_cls(token_interval=0.01, default_tokens=TOKENS) as provider:
        for run in range(runs):
            for index, (_, _, task, how) in enumerate(kinds):
                provider.reset()
                result = task.delay(provider.url + "/v1")
                (log,) = provider.wait_for_requests(1, timeout=30)
                log.wait_units(points[run])
                t_cancel = time.monotonic()
                if how == "abort":
                    AbortableAsyncResult(result.id, app=jobs.app).abort()
                elif how == "revoke":
                    jobs.app.control.revoke(result.id)
                else:
                    bus.cancel_sync(result.id, "user_stopped")
                try:
                    result.get(timeout=30, propagate=False)
                except Exception:
                    pass
                logs = provider.requests
                for each in logs:
                    each.wait_done(30)
                tokens = sum(each.units_after(t_cancel) for each in logs)
                stopped = max((each.disconnected_at or each.completed_at or t_cancel) for each in logs)
                late = sum(1 for each in logs if each.started_at > t_cancel)
                results[index].append((tokens, (stopped - t_cancel) * 1000, late, str(result.state)))
    return [(label, cancel, results[i]) for i, (label, cancel, _, _) in enumerate(kinds)]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
