"""Celery: every run of a ScopedTask is a scope whose id is the task id."""

from __future__ import annotations

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://redis:6379/0")

# --8<-- [start:app]
from celery import Celery  # noqa: E402

from scoped_clients.celery import ScopedTask, setup  # noqa: E402
from scoped_clients.openai import OpenAI  # noqa: E402
from scoped_clients.redis import RedisCancelBus  # noqa: E402

app = Celery("jobs", broker=REDIS_URL, backend=REDIS_URL)
bus = RedisCancelBus.from_url(REDIS_URL)
setup(app, bus=bus)  # the bus, and revoke() forwarding in the workers
client = OpenAI()


@app.task(base=ScopedTask)  # or Celery(..., task_cls=ScopedTask) for every task
def summarize(doc_id: str) -> str:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize {doc_id}"}], max_tokens=800
    )
    return completion.choices[0].message.content or ""


# --8<-- [end:app]


def check(provider: object, redis_url: str) -> None:
    import threading
    import time

    from _harness import assert_stopped, reports

    outcome: list[object] = []
    try:
        with reports() as seen:
            # eagerly, in this process (a worker runs it the same way): the scope's id is the task id
            worker = threading.Thread(target=lambda: outcome.append(summarize.apply(("doc-1",), task_id="job-1")))
            worker.start()
            (log,) = provider.wait_for_requests(1)  # type: ignore[attr-defined]
            log.wait_units(3)
            t_cancel = time.monotonic()
            assert bus.cancel_sync("job-1", "user_stopped") == 1  # from any process on the bus's Redis
            worker.join(10)
            report = seen.wait()
        assert_stopped(log, t_cancel)
        assert report.scope_id == "job-1" and report.cancel_reason == "user_stopped"
        assert [c.outcome for c in report.calls] == ["aborted"]
    finally:
        bus.close()
