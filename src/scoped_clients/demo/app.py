"""The demo's sample app: identical handlers on the raw SDKs or on scoped_clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

Mode = Literal["raw", "scoped"]
MODEL = "local-300"
MAX_TOKENS = 400
QUESTION: Any = [{"role": "user", "content": "Explain request scoped cancellation in detail please"}]
COLLECTION = "docs"
DIM = 8
QUERY_VECTOR = [0.1 * (i + 1) for i in range(DIM)]

#: a tool that works until it is stopped: one timestamped line per tick in the file it is given
TICKS = 300
TICKER = (
    "import os, sys, time\n"
    "with open(sys.argv[1], 'a', buffering=1) as f:\n"
    "    f.write(f'pid {os.getpid()}\\n')\n"
    f"    for i in range({TICKS}):\n"
    "        f.write(f'{time.monotonic()}\\n')\n"
    "        time.sleep(0.01)\n"
)


class TaskProbe:
    """Counts the app's live asyncio tasks from another thread (the benchmark's "tasks left in the app")."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def count(self) -> int:
        if self.loop is None:
            raise RuntimeError("the app has not started: serve it first")
        loop = self.loop
        result: concurrent.futures.Future[int] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: result.set_result(len(asyncio.all_tasks(loop))))
        return result.result(timeout=5)


def build_app(mode: Mode, provider_url: str, tick_file: str, probe: TaskProbe | None = None) -> ASGIApp:
    """The sample app.  ``mode="scoped"`` swaps the imports and adds one middleware: nothing else differs."""
    import anthropic
    import cohere
    import openai
    import qdrant_client
    from google import genai

    if mode == "raw":
        llm = openai.AsyncOpenAI(base_url=provider_url + "/v1", api_key="demo")
        claude = anthropic.AsyncAnthropic(base_url=provider_url, api_key="demo")
        gemini = genai.Client(api_key="demo", http_options={"base_url": provider_url})
        rerank = cohere.AsyncClientV2(base_url=provider_url, api_key="demo")
        vectors = qdrant_client.AsyncQdrantClient(url=provider_url, check_compatibility=False)
    else:  # the one change a user makes: the imports
        from scoped_clients.anthropic import AsyncAnthropic
        from scoped_clients.cohere import AsyncClientV2
        from scoped_clients.google_genai import Client
        from scoped_clients.openai import AsyncOpenAI
        from scoped_clients.qdrant import AsyncQdrantClient

        llm = AsyncOpenAI(base_url=provider_url + "/v1", api_key="demo")
        claude = AsyncAnthropic(base_url=provider_url, api_key="demo")
        gemini = Client(api_key="demo", http_options={"base_url": provider_url})
        rerank = AsyncClientV2(base_url=provider_url, api_key="demo")
        vectors = AsyncQdrantClient(url=provider_url, check_compatibility=False)
    litellm_acompletion: Any = None
    if importlib.util.find_spec("litellm") is not None:  # optional: its scenario runs when it is installed
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price map fetched from GitHub
        import litellm

        # LiteLLM prints its provider list to stdout on every failed call (the dropped ones, raw and scoped
        # alike); the demo's output is its table
        litellm.suppress_debug_info = True
        if mode == "raw":
            from litellm import acompletion as litellm_acompletion
        else:
            from scoped_clients.litellm import acompletion as litellm_acompletion
    background: set[asyncio.Task[Any]] = set()

    async def complete() -> str:
        completion = await llm.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=MAX_TOKENS)
        return completion.choices[0].message.content or ""

    async def stream(request: Request) -> Response:
        chunks = await llm.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=MAX_TOKENS, stream=True)

        async def body() -> Any:
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(body(), media_type="text/plain")

    async def non_streaming(request: Request) -> Response:
        return JSONResponse({"answer": await complete()})

    async def non_streaming_anthropic(request: Request) -> Response:
        message = await claude.messages.create(model=MODEL, messages=QUESTION, max_tokens=MAX_TOKENS)
        return JSONResponse({"answer": "".join(b.text for b in message.content if b.type == "text")})

    async def non_streaming_gemini(request: Request) -> Response:
        config = genai.types.GenerateContentConfig(max_output_tokens=MAX_TOKENS)
        response = await gemini.aio.models.generate_content(model=MODEL, contents=QUESTION[0]["content"], config=config)
        return JSONResponse({"answer": response.text})

    async def non_streaming_litellm(request: Request) -> Response:
        if litellm_acompletion is None:
            return JSONResponse({"error": "LiteLLM is not installed"}, status_code=501)
        response = await litellm_acompletion(
            model=f"anthropic/{MODEL}", messages=QUESTION, max_tokens=MAX_TOKENS, api_base=provider_url, api_key="demo"
        )
        return JSONResponse({"answer": response.choices[0].message.content})

    async def rag(request: Request) -> Response:
        hits = await vectors.query_points(COLLECTION, query=QUERY_VECTOR, limit=5, with_payload=True)
        documents = [str((point.payload or {}).get("text", "")) for point in hits.points]
        ranked = await rerank.rerank(model="rerank-local", query="scoped cancellation", documents=documents, top_n=3)
        context = " ".join(documents[r.index] for r in ranked.results)
        messages: Any = [{"role": "user", "content": f"{context} Answer the question please"}]
        completion = await llm.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS)
        return JSONResponse({"answer": completion.choices[0].message.content})

    async def fire_and_forget(request: Request) -> Response:
        # A summary "logged in the background": nobody awaits it, the classic create_task.
        task = asyncio.create_task(complete())
        background.add(task)
        task.add_done_callback(background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.sleep(1)  # the handler's own (non-LLM) work
        return JSONResponse({"ok": True})

    async def tool(request: Request) -> Response:
        argv = [sys.executable, "-c", TICKER, tick_file]
        if mode == "scoped":
            from scoped_clients.tools import run_command

            result = await run_command(argv)
            return JSONResponse({"returncode": result.returncode})
        process = await asyncio.create_subprocess_exec(*argv)
        return JSONResponse({"returncode": await process.wait()})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if probe is not None:
            probe.loop = asyncio.get_running_loop()
        yield
        for task in list(background):  # the raw app's forgotten work, still running at shutdown
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await llm.close()
        await claude.close()
        await gemini.aio.aclose()
        gemini.close()
        await vectors.close()
        await rerank._client_wrapper.httpx_client.httpx_client.aclose()
        if "litellm" in sys.modules:  # LiteLLM's cached clients (the raw app's), our pools (the scoped one's)
            from scoped_clients.litellm import close_litellm_async_clients

            await close_litellm_async_clients()

    app: ASGIApp = Starlette(
        lifespan=lifespan,
        routes=[
            Route("/stream", stream),
            Route("/complete", non_streaming),
            Route("/complete-anthropic", non_streaming_anthropic),
            Route("/complete-gemini", non_streaming_gemini),
            Route("/complete-litellm", non_streaming_litellm),
            Route("/rag", rag),
            Route("/fire", fire_and_forget),
            Route("/tool", tool),
        ],
    )
    if mode == "scoped":
        from scoped_clients.asgi import ScopeMiddleware

        app = ScopeMiddleware(app)
    return app
