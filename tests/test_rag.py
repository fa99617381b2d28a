"""Qdrant, Cohere and the retrieval -> rerank -> LLM pipeline, measured at the provider."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import cohere
import pytest
import qdrant_client
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse

import scoped_clients.cohere as scoped_cohere
import scoped_clients.qdrant as scoped_qdrant
from _helpers import cancel_sync_call, wait
from scoped_clients import RequestScope, ScopeCancelled, UnsupportedError
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, embed

DIM = 8
COLLECTION = "docs"
DOCS = [f"document number {i} about cancellation" for i in range(10)]


@pytest.fixture
def collection(provider: LocalProvider) -> Iterator[None]:
    client = qdrant_client.QdrantClient(url=provider.url, check_compatibility=False)
    if client.collection_exists(COLLECTION):
        client.delete_collection(COLLECTION)
    client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    points = [models.PointStruct(id=i, vector=embed(d), payload={"text": d}) for i, d in enumerate(DOCS)]
    client.upsert(COLLECTION, points)
    client.close()
    provider.reset()
    yield


@pytest.fixture
async def clients(provider: LocalProvider, anyio_backend: object) -> AsyncIterator[dict[str, Any]]:
    made = {
        "qdrant": scoped_qdrant.AsyncQdrantClient(url=provider.url, check_compatibility=False),
        "cohere": scoped_cohere.AsyncClientV2(base_url=provider.url, api_key="x", max_retries=0),
        "llm": AsyncOpenAI(base_url=provider.url + "/v1", api_key="x"),
    }
    yield made
    await made["qdrant"].close()
    await made["llm"].close()
    await made["cohere"]._client_wrapper.httpx_client.httpx_client.aclose()


async def pipeline(c: dict[str, Any]) -> str:
    hits = await c["qdrant"].query_points(COLLECTION, query=embed("cancellation"), limit=5, with_payload=True)
    docs = [p.payload["text"] for p in hits.points]
    ranked = await c["cohere"].rerank(model="rerank-local", query="cancellation", documents=docs, top_n=2)
    answer = await c["llm"].chat.completions.create(
        model="local-5", messages=[{"role": "user", "content": docs[ranked.results[0].index]}]
    )
    return answer.choices[0].message.content or ""


@pytest.mark.anyio
async def test_pipeline_completes(provider: LocalProvider, collection: None, clients: dict[str, Any]) -> None:
    async with RequestScope("rag") as scope:
        assert await pipeline(clients) == "tok0 tok1 tok2 tok3 tok4 "
    calls = scope.report.calls  # type: ignore[union-attr]
    assert [(c.provider, c.operation, c.outcome) for c in calls] == [
        ("qdrant", "query_points", "completed"),
        ("cohere", "rerank", "completed"),
        ("openai", "chat.completions", "completed"),
    ]
    assert calls[1].units["search_units"] == 1


@pytest.mark.anyio
async def test_pipeline_cancelled_during_retrieval_makes_one_upstream_call(
    provider: LocalProvider, collection: None, clients: dict[str, Any]
) -> None:
    provider.search_delay = 30.0
    errors: list[BaseException] = []
    scope = RequestScope("rag")

    async def request() -> None:
        try:
            await pipeline(clients)
        except ScopeCancelled as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(request)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 3)  # the search is running
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel
    assert log.units_after(t_cancel) <= 1
    assert [r.path for r in provider.requests] == [f"/collections/{COLLECTION}/points/query"]  # no rerank, no LLM
    assert len(errors) == 1
    assert [c.outcome for c in scope.report.calls] == ["aborted"]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_rerank_cancelled(provider: LocalProvider, clients: dict[str, Any]) -> None:
    provider.search_delay = 30.0
    scope = RequestScope()

    async def call() -> None:
        with pytest.raises(ScopeCancelled):
            await clients["cohere"].rerank(model="rerank-local", query="q", documents=DOCS)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(call)
            (log,) = await wait(provider.wait_for_requests, 1)
            await wait(log.wait_units, 3)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        await wait(log.wait_disconnect)
    assert log.units_after(t_cancel) <= 1 and len(provider.requests) == 1


@pytest.mark.anyio
async def test_cohere_chat_stream_cancelled_and_metered(provider: LocalProvider, clients: dict[str, Any]) -> None:
    provider.token_interval = 0.05
    scope = RequestScope()
    ten = anyio.Event()

    async def call() -> None:
        n = 0
        with pytest.raises(ScopeCancelled):
            async for event in clients["cohere"].chat_stream(
                model="local-1000", messages=[{"role": "user", "content": "hi"}], max_tokens=100
            ):
                if event.type == "content-delta":
                    n += 1
                    if n == 10:
                        ten.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, scope:
            tg.start_soon(call)
            await ten.wait()
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        (log,) = provider.requests
        await wait(log.wait_disconnect)
    assert log.units_after(t_cancel) <= 1 and len(provider.requests) == 1
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.operation == "chat_stream" and record.outcome == "aborted"
    assert record.tokens_out == 10 and record.tokens_saved_max == 90


@pytest.mark.anyio
async def test_cohere_completed_calls_read_billed_units(provider: LocalProvider, clients: dict[str, Any]) -> None:
    async with RequestScope() as scope:
        await clients["cohere"].chat(model="local-7", messages=[{"role": "user", "content": "a b c"}])
        await clients["cohere"].embed(
            model="embed-local", texts=["x y"], input_type="search_document", embedding_types=["float"]
        )
    chat, emb = scope.report.calls  # type: ignore[union-attr]
    assert chat.outcome == "completed" and chat.tokens_out == 7 and chat.tokens_out_source == "provider"
    assert chat.units["billed_output_tokens"] == 7
    assert emb.operation == "embed" and emb.units["billed_input_tokens"] == 2


@pytest.mark.anyio
async def test_vendor_errors_reach_the_caller(
    provider: LocalProvider, collection: None, clients: dict[str, Any]
) -> None:
    async with RequestScope() as scope:
        with pytest.raises(UnexpectedResponse) as unknown:
            await clients["qdrant"].query_points("missing", query=embed("x"), limit=3)
        with pytest.raises(UnexpectedResponse) as malformed:
            await clients["qdrant"].query_points(COLLECTION, query=[0.1, 0.2], limit=3)
        with pytest.raises(cohere.core.api_error.ApiError):
            await clients["cohere"].chat(model="error-400", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.status_code == 404 and malformed.value.status_code == 400
    assert [c.outcome for c in scope.report.calls] == ["failed"] * 3  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_qdrant_timeout_is_the_scopes_remaining_deadline(
    provider: LocalProvider, collection: None, clients: dict[str, Any]
) -> None:
    async with RequestScope(timeout=7.5):
        await clients["qdrant"].query_points(COLLECTION, query=embed("x"), limit=1)
        await clients["qdrant"].query_points(COLLECTION, query=embed("x"), limit=1, timeout=3)
    first, second = provider.requests
    assert first.query["timeout"] in ("7", "8")
    assert second.query["timeout"] == "3"  # the caller's own value wins


def test_sync_qdrant_cancelled_from_another_thread(provider: LocalProvider, collection: None) -> None:
    provider.search_delay = 30.0
    client = scoped_qdrant.QdrantClient(url=provider.url, check_compatibility=False)
    result = cancel_sync_call(provider, lambda: client.query_points(COLLECTION, query=embed("x"), limit=1), units=3)
    client.close()
    assert result.log.units_after(result.t_cancel) <= 1 and len(result.errors) == 1


def test_unsupported_modes_say_so() -> None:
    with pytest.raises(UnsupportedError, match="gRPC"):
        scoped_qdrant.QdrantClient(url="http://127.0.0.1:1", prefer_grpc=True)
    local = scoped_qdrant.QdrantClient(":memory:")  # local mode still works, unscoped
    local.create_collection("x", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    assert local.collection_exists("x")
    assert isinstance(local, qdrant_client.QdrantClient)
    assert isinstance(scoped_cohere.ClientV2(api_key="x"), cohere.ClientV2)
