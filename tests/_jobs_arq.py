"""The arq worker the job tests run (``arq _jobs_arq.WorkerSettings``), on ``SCOPED_JOBS_REDIS``.

The job calls the test's embedded provider, whose URL it is given, through a scoped
async OpenAI client, so that the provider's log shows when the call stopped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from arq.connections import RedisSettings

import scoped_clients.openai as scoped_openai
from scoped_clients.arq import scoped_job
from scoped_clients.redis import RedisCancelBus

REDIS_URL = os.environ.get("SCOPED_JOBS_REDIS", "redis://127.0.0.1:6379/2")
#: seconds between two looks at arq's abort set by our poll (env: the benchmark compares)
ABORT_POLL = os.environ.get("SCOPED_JOBS_ABORT_POLL", "0.02")

bus = RedisCancelBus.from_url(REDIS_URL)

# arq configures its own logger only: show the scopes' report lines too (a deployment does this
# in its logging config)
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
logging.getLogger("scoped_clients").addHandler(_handler)
logging.getLogger("scoped_clients").setLevel(logging.INFO)


@scoped_job(bus=bus, abort_poll=None if ABORT_POLL == "off" else float(ABORT_POLL))
async def complete(ctx: dict[str, Any], base_url: str, model: str, max_tokens: int) -> str:
    """One non-streamed chat completion."""
    async with scoped_openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0) as client:
        completion = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "summarize"}], max_tokens=max_tokens
        )
    return completion.choices[0].message.content or ""


@scoped_job(bus=bus, abort_poll=None)
async def complete_arq_polls(ctx: dict[str, Any], base_url: str, model: str, max_tokens: int) -> str:
    """The same job, leaving aborts to arq's own poll (every ``poll_delay``)."""
    return await complete.__wrapped__(ctx, base_url, model, max_tokens)  # type: ignore[attr-defined]


class WorkerSettings:
    functions = (complete, complete_arq_polls)
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    allow_abort_jobs = True
    max_jobs = 2
