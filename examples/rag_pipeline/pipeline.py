"""Retrieval -> rerank -> answer, all owned by one scope.

Run:  python examples/rag_pipeline/pipeline.py

Runs the pipeline twice against the embedded local provider: once to the end,
once cancelled 100 ms into the (slow) vector search.  The second run makes
exactly one upstream call: the rerank and the LLM call never start.
"""

from __future__ import annotations

import anyio
from qdrant_client import models

from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.cohere import AsyncClientV2
from scoped_clients.openai import AsyncOpenAI
from scoped_clients.provider import LocalProvider, embed
from scoped_clients.qdrant import AsyncQdrantClient

DOCS = [
    "Closing a tab drops the HTTP connection.",
    "A RequestScope owns every call made for one request.",
    "Cancelling the scope aborts calls at the socket.",
    "Vector search can take a second on a large collection.",
    "Reranking orders the retrieved passages by relevance.",
]


async def answer(question: str, vectors: AsyncQdrantClient, rerank: AsyncClientV2, llm: AsyncOpenAI) -> str:
    hits = await vectors.query_points("docs", query=embed(question), limit=4, with_payload=True)
    passages = [str((p.payload or {})["text"]) for p in hits.points]
    ranked = await rerank.rerank(model="rerank-local", query=question, documents=passages, top_n=2)
    context = " ".join(passages[r.index] for r in ranked.results)
    completion = await llm.chat.completions.create(
        model="local-20", messages=[{"role": "user", "content": f"{context}\n\n{question}"}], max_tokens=200
    )
    return completion.choices[0].message.content or ""


async def main() -> None:
    with LocalProvider(token_interval=0.01) as provider:
        vectors = AsyncQdrantClient(url=provider.url, check_compatibility=False)
        config = models.VectorParams(size=8, distance=models.Distance.COSINE)
        await vectors.create_collection("docs", vectors_config=config)
        points = [models.PointStruct(id=i, vector=embed(d), payload={"text": d}) for i, d in enumerate(DOCS)]
        await vectors.upsert("docs", points)
        rerank = AsyncClientV2(base_url=provider.url, api_key="local")
        llm = AsyncOpenAI(base_url=provider.url + "/v1", api_key="local")
        provider.search_delay = 1.0

        provider.reset()
        async with RequestScope("rag") as scope:
            text = await answer("What does a scope own?", vectors, rerank, llm)
        print(f"completed: {text!r}")
        print(f"  upstream calls: {[r.path for r in provider.requests]}")

        provider.reset()
        async with RequestScope("rag") as scope:
            with anyio.move_on_after(0.1):  # the user leaves 100 ms in
                await answer("What does a scope own?", vectors, rerank, llm)
            scope.cancel("client_disconnected")
        print(f"cancelled during the search: outcome {scope.report.outcome if scope.report else None}")
        print(f"  upstream calls: {[r.path for r in provider.requests]}  (no rerank, no LLM call)")
        try:
            scope.check()
        except ScopeCancelled as exc:
            print(f"  {exc}")
        await vectors.close()
        await llm.close()


if __name__ == "__main__":
    anyio.run(main)
