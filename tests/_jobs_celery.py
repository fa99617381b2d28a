"""The Celery app the job tests run in a real worker (``celery -A _jobs_celery worker``).

Broker and result backend: ``SCOPED_JOBS_REDIS`` (the test's redis-server).  The tasks
call the test's embedded provider, whose URL they are given as an argument, through a
scoped sync OpenAI client, so that the provider's log shows when the call stopped.
"""

from __future__ import annotations

import os

from celery import Celery

import scoped_clients.openai as scoped_openai
from scoped_clients.celery import ScopedTask, setup

REDIS_URL = os.environ.get("SCOPED_JOBS_REDIS", "redis://127.0.0.1:6379/1")
app = Celery("_jobs_celery", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    task_acks_late=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)


def _bus() -> object:
    try:
        from scoped_clients.redis import RedisCancelBus
    except ImportError:  # the Redis bus is not there yet: each process's local bus
        return None
    return RedisCancelBus.from_url(REDIS_URL)


setup(app, bus=_bus())  # type: ignore[arg-type]


@app.task(base=ScopedTask, name="jobs.complete")
def complete(base_url: str, model: str, max_tokens: int) -> str:
    """One non-streamed chat completion (the shape a cancel cannot stop without the socket)."""
    client = scoped_openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    try:
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "summarize"}], max_tokens=max_tokens
        )
    finally:
        client.close()
    return completion.choices[0].message.content or ""
