"""arq: a scoped job, cancelled by ``job.abort()`` or the bus."""

from __future__ import annotations

from typing import Any, ClassVar

# --8<-- [start:job]
from scoped_clients.arq import scoped_job
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.redis import RedisCancelBus

bus = RedisCancelBus.from_url("redis://redis:6379/0")
client = AsyncOpenAI()


@scoped_job(bus=bus)  # bare @scoped_job works too (a LocalCancelBus)
async def summarize(ctx: dict[str, Any], doc_id: str) -> str:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize {doc_id}"}], max_tokens=800
    )
    return completion.choices[0].message.content or ""


class WorkerSettings:
    functions: ClassVar = [summarize]
    allow_abort_jobs = True


# --8<-- [end:job]
