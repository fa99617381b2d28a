"""One call per vendor client, each owned by the scope (the same constructors as the vendors')."""

from __future__ import annotations

from scoped_clients import RequestScope, ScopeReport

# --8<-- [start:anthropic]
from scoped_clients.anthropic import AsyncAnthropic  # was: from anthropic import AsyncAnthropic

claude = AsyncAnthropic()  # type(claude) is anthropic.AsyncAnthropic: credential profiles included


async def ask_claude(question: str) -> str:
    message = await claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=400, messages=[{"role": "user", "content": question}]
    )
    return "".join(block.text for block in message.content if block.type == "text")


# --8<-- [end:anthropic]

# --8<-- [start:cohere]
import os  # noqa: E402

from scoped_clients.cohere import AsyncClientV2  # noqa: E402  # was: from cohere import AsyncClientV2

# The key comes from CO_API_KEY, as with the vendor's class; cohere reads CO_API_URL only once, when it
# is first imported (a default argument), so pass base_url= for a URL set later.
co = AsyncClientV2(base_url=os.environ["CO_API_URL"])


async def rank(query: str, documents: list[str]) -> list[int]:
    ranked = await co.rerank(model="rerank-v3.5", query=query, documents=documents, top_n=2)
    return [r.index for r in ranked.results]


# --8<-- [end:cohere]

# --8<-- [start:qdrant]
from qdrant_client import models  # noqa: E402

from scoped_clients.qdrant import AsyncQdrantClient  # noqa: E402  # was: from qdrant_client import ...

vectors = AsyncQdrantClient(url=os.environ["QDRANT_URL"], check_compatibility=False)


async def search(vector: list[float]) -> list[str]:
    # The scope's remaining time is sent as Qdrant's own `timeout`: the server gives up with it.
    hits = await vectors.query_points("docs", query=vector, limit=3, with_payload=True)
    return [str((point.payload or {}).get("text")) for point in hits.points]


# --8<-- [end:qdrant]

# --8<-- [start:httpx]
from scoped_clients.httpx2 import AsyncClient  # noqa: E402  # or scoped_clients.httpx for httpx 0.28

http = AsyncClient()  # any code built on httpx2: its calls are owned by the ambient scope


async def fetch(url: str) -> int:
    # also sends the scope's remaining time in x-scope-timeout-ms, for the next service's ScopeMiddleware
    return (await http.get(url)).status_code


# --8<-- [end:httpx]


async def main() -> ScopeReport:
    from scoped_clients.provider import embed

    # (setting up the collection the search reads)
    if await vectors.collection_exists("docs"):
        await vectors.delete_collection("docs")
    await vectors.create_collection(
        "docs", vectors_config=models.VectorParams(size=len(embed("x")), distance=models.Distance.COSINE)
    )
    points = [models.PointStruct(id=i, vector=embed(f"doc {i}"), payload={"text": f"doc {i}"}) for i in range(5)]
    await vectors.upsert("docs", points=points)
    try:
        async with co, RequestScope(name="vendors", timeout=30.0) as scope:  # (`co` closes its pool on exit)
            await ask_claude("Hello")
            await rank("scoped", ["a", "b", "c"])
            await search(embed("doc 1"))
            await fetch(os.environ["QDRANT_URL"] + "/collections/docs/exists")
    finally:
        await vectors.close()
        await claude.close()
        await http.aclose()
    assert scope.report is not None
    return scope.report


def check(provider: object) -> None:
    import anyio

    report = anyio.run(main)
    assert [(c.provider, c.outcome) for c in report.calls] == [
        ("anthropic", "completed"),
        ("cohere", "completed"),
        ("qdrant", "completed"),
        ("http", "completed"),
    ]
