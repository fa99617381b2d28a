"""The vendor wire protocols the local provider speaks, close enough for the real SDKs.

Conventions: model ``"local-80"`` produces 80 tokens (others: ``default_tokens``),
capped by the request's ``max_tokens``-like field; models ``"error-400"``,
``"error-401"``, ``"error-429"``, ``"error-500"`` answer with that status in the
vendor's error shape; model ``"malformed"`` streams three events and then one
that is not JSON; model ``"not-json"`` answers 200 with a JSON content type and a body
that is not JSON.  Tokens are ``"tok0 "``, ``"tok1 "``... one per stream event.
Scripted answers (text and tool calls, several choices) take precedence: ``_script.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import _gemini, _openai_like, _scripted
from ._script import Reply, sse, words
from ._server import ClientGone, Exchange

if TYPE_CHECKING:
    from . import LocalProvider

Handler = Callable[[Exchange], Awaitable[None]]


_sse = sse
_words = words


class Vendors:
    """Route table and handlers, reading the provider's live settings."""

    def __init__(self, provider: LocalProvider) -> None:
        self.p = provider
        self.collections: dict[str, dict[str, Any]] = {}
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/units"): self.units,
            ("GET", "/slow"): self.slow,
            ("POST", "/echo"): self.echo,
            ("POST", "/v1/chat/completions"): self.openai_chat,
            ("POST", "/v1/responses"): self.openai_responses,
            ("POST", "/v1/messages"): self.anthropic_messages,
            ("POST", "/v2/chat"): self.cohere_chat_v2,
            ("POST", "/v1/chat"): self.cohere_chat_v1,
            ("POST", "/v2/rerank"): self.cohere_rerank,
            ("POST", "/v1/rerank"): self.cohere_rerank,
            ("POST", "/v2/embed"): self.cohere_embed,
            ("POST", "/openai/v1/chat/completions"): self.groq_chat,
            ("POST", "/mistral/v1/chat/completions"): self.mistral_chat,
            ("POST", "/mistral/v1/embeddings"): self.mistral_embeddings,
            ("GET", "/"): self.qdrant_root,
            ("GET", "/_provider/log"): self.dump_log,
            ("POST", "/_provider/reset"): self.reset_log,
        }

    def route(self, method: str, path: str) -> Handler | None:
        handler = self.routes.get((method, path))
        if handler is not None:
            return handler
        gemini = re.fullmatch(r"/v1(?:beta|alpha)?/models/([^/:]+):(\w+)", path)
        if gemini and method == "POST" and gemini.group(2) in _gemini.METHODS:
            model, action = gemini.group(1), gemini.group(2)

            async def gemini_handler(exchange: Exchange) -> None:
                await self.gemini(exchange, model, action)

            return gemini_handler
        match = re.fullmatch(r"/collections/([^/]+)(/exists|/points|/points/query|/points/search)?", path)
        if match:
            name, rest = match.group(1), match.group(2) or ""

            async def qdrant(exchange: Exchange) -> None:
                await self.qdrant(exchange, method, name, rest)

            return qdrant
        return None

    # ------------------------------------------------------------ helpers

    def _plan(self, body: dict[str, Any], *bound_keys: str) -> tuple[int, bool]:
        """How many tokens to produce, and whether the request's bound cut them."""
        model = str(body.get("model", ""))
        match = re.fullmatch(r"local-(\d+)", model)
        natural = int(match.group(1)) if match else self.p.default_tokens
        bounds = [int(body[k]) for k in bound_keys if isinstance(body.get(k), int)]
        n = min([natural, *bounds])
        return n, n < natural

    async def _error(self, exchange: Exchange, shape: str, model: str | None = None) -> bool:
        if model is None:
            model = str((exchange.json or {}).get("model", ""))
        if model == "not-json":  # a proxy's error page with a 200 and a JSON content type
            await exchange.respond(200, b"<html>upstream proxy error</html>")
            return True
        match = re.fullmatch(r"error-(\d{3})", model)
        if not match:
            return False
        status = int(match.group(1))
        message = f"local provider error {status}"
        if shape == "openai":
            err: Any = {"error": {"message": message, "type": "server_error", "param": None, "code": str(status)}}
        elif shape == "anthropic":
            kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(
                status, "api_error"
            )
            err = {"type": "error", "error": {"type": kind, "message": message}}
        elif shape == "gemini":
            err = _gemini.error_body(status, message)
        elif shape == "mistral":
            err = _openai_like.error_body("mistral", status, message)
        else:
            err = {"message": message}
        await exchange.respond_json(status, err)
        return True

    async def _tick(self, exchange: Exchange) -> None:
        exchange.unit()
        await exchange.sleep(self.p.token_interval)

    async def _generate(self, exchange: Exchange, n: int) -> str:
        """Produce ``n`` tokens before answering (a non-streamed completion)."""
        for _ in range(n):
            await self._tick(exchange)
        return "".join(f"tok{i} " for i in range(n))

    # ------------------------------------------------------------ generic

    async def units(self, exchange: Exchange) -> None:
        n = int(exchange.log.query.get("n", "100"))
        interval = float(exchange.log.query.get("interval", "0.01"))
        await exchange.start(200, "text/plain")
        for i in range(n):
            exchange.unit()
            await exchange.send(b"unit %d\n" % i)
            await exchange.sleep(interval)
        await exchange.end()

    async def slow(self, exchange: Exchange) -> None:
        await exchange.sleep(float(exchange.log.query.get("delay", "5")))
        await exchange.respond_json(200, {"ok": True})

    async def echo(self, exchange: Exchange) -> None:
        body = exchange.log.body
        await exchange.respond_json(200, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    # ---------------------------------------- control (for a provider in another process)

    async def dump_log(self, exchange: Exchange) -> None:
        """Every request but the control ones, with its timestamps (``time.monotonic()``, system-wide on Linux)."""
        logs = [
            {
                "id": log.id,
                "path": log.path,
                "started_at": log.started_at,
                "disconnected_at": log.disconnected_at,
                "completed_at": log.completed_at,
                "units": list(log.units),
            }
            for log in self.p.requests
            if not log.path.startswith("/_provider/")
        ]
        await exchange.respond_json(200, logs)

    async def reset_log(self, exchange: Exchange) -> None:
        self.p.reset()
        await exchange.respond_json(200, {"ok": True})

    # ------------------------------------------------------------- openai

    async def openai_chat(self, exchange: Exchange) -> None:
        if await self._error(exchange, "openai"):
            return
        body = exchange.json or {}
        answer = self.p._take_script(body.get("model"))
        if answer is not None:
            await _scripted.openai_chat(exchange, body, answer, self.p.token_interval)
            return
        n, cut = self._plan(body, "max_tokens", "max_completion_tokens")
        model = body.get("model", "local")
        usage_in = _words(body.get("messages", []))
        finish = "length" if cut else "stop"
        base = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        usage = {"prompt_tokens": usage_in, "completion_tokens": n, "total_tokens": usage_in + n}
        if not body.get("stream"):
            text = await self._generate(exchange, n)
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            await exchange.respond_json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        await exchange.start(200, "text/event-stream")

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return _sse({**base, "choices": [choice]})

        await exchange.send(chunk({"role": "assistant", "content": ""}))
        for i in range(n):
            exchange.unit()
            if body.get("model") == "malformed" and i == 3:
                await exchange.send(b'data: {"id": "broken", "choices": [\n\n')
                await exchange.end()
                return
            await exchange.send(chunk({"content": f"tok{i} "}))
            await exchange.sleep(self.p.token_interval)
        await exchange.send(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            await exchange.sleep(self.p.token_interval)  # a real provider takes a moment to total the usage
            await exchange.send(_sse({**base, "choices": [], "usage": usage}))
        await exchange.send(_sse("[DONE]"))
        await exchange.end()

    async def openai_responses(self, exchange: Exchange) -> None:
        if await self._error(exchange, "openai"):
            return
        body = exchange.json or {}
        answer = self.p._take_script(body.get("model"))
        if answer is not None:
            await _scripted.openai_responses(exchange, body, answer, self.p.token_interval)
            return
        n, cut = self._plan(body, "max_output_tokens")
        usage_in = _words(body.get("input", []))
        created = int(time.time())

        def response(status: str, output: list[Any], usage: Any) -> dict[str, Any]:
            return {
                "id": "resp_local",
                "object": "response",
                "created_at": created,
                "model": body.get("model", "local"),
                "status": status,
                "output": output,
                "usage": usage,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "incomplete_details": {"reason": "max_output_tokens"} if cut and status != "in_progress" else None,
                "max_output_tokens": body.get("max_output_tokens"),
                "error": None,
            }

        def usage(out: int) -> dict[str, Any]:
            return {
                "input_tokens": usage_in,
                "output_tokens": out,
                "total_tokens": usage_in + out,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }

        final_status = "incomplete" if cut else "completed"

        def item(text: str, status: str) -> dict[str, Any]:
            part = {"type": "output_text", "text": text, "annotations": []}
            return {
                "id": "msg_local",
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [part] if status != "in_progress" else [],
            }

        if not body.get("stream"):
            text = await self._generate(exchange, n)
            await exchange.respond_json(200, response(final_status, [item(text, "completed")], usage(n)))
            return
        await exchange.start(200, "text/event-stream")
        seq = 0

        async def event(kind: str, data: dict[str, Any]) -> None:
            nonlocal seq
            await exchange.send(_sse({"type": kind, "sequence_number": seq, **data}, kind))
            seq += 1

        await event("response.created", {"response": response("in_progress", [], None)})
        await event("response.in_progress", {"response": response("in_progress", [], None)})
        await event("response.output_item.added", {"output_index": 0, "item": item("", "in_progress")})
        ids = {"item_id": "msg_local", "output_index": 0, "content_index": 0}
        await event(
            "response.content_part.added", {**ids, "part": {"type": "output_text", "text": "", "annotations": []}}
        )
        for i in range(n):
            exchange.unit()
            await event("response.output_text.delta", {**ids, "delta": f"tok{i} ", "logprobs": []})
            await exchange.sleep(self.p.token_interval)
        text = "".join(f"tok{i} " for i in range(n))
        await event("response.output_text.done", {**ids, "text": text, "logprobs": []})
        part = {"type": "output_text", "text": text, "annotations": []}
        await event("response.content_part.done", {**ids, "part": part})
        await event("response.output_item.done", {"output_index": 0, "item": item(text, "completed")})
        final = response(final_status, [item(text, "completed")], usage(n))
        await event("response.incomplete" if cut else "response.completed", {"response": final})
        await exchange.end()

    # ---------------------------------------------------------- anthropic

    async def anthropic_messages(self, exchange: Exchange) -> None:
        if await self._error(exchange, "anthropic"):
            return
        body = exchange.json or {}
        answer = self.p._take_script(body.get("model"))
        if answer is not None:
            await _scripted.anthropic_messages(exchange, body, answer, self.p.token_interval)
            return
        n, cut = self._plan(body, "max_tokens")
        usage_in = _words(body.get("messages", []))
        stop = "max_tokens" if cut else "end_turn"
        message = {
            "id": "msg_local",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "local"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage_in, "output_tokens": 1},
        }
        if not body.get("stream"):
            text = await self._generate(exchange, n)
            final = {
                **message,
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop,
                "usage": {"input_tokens": usage_in, "output_tokens": n},
            }
            await exchange.respond_json(200, final)
            return
        await exchange.start(200, "text/event-stream")

        async def event(kind: str, data: dict[str, Any]) -> None:
            await exchange.send(_sse({"type": kind, **data}, kind))

        await event("message_start", {"message": message})
        await event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for i in range(n):
            exchange.unit()
            if body.get("model") == "malformed" and i == 3:
                await exchange.send(b"event: content_block_delta\ndata: {broken\n\n")
                await exchange.end()
                return
            await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"tok{i} "}})
            await exchange.sleep(self.p.token_interval)
        await event("content_block_stop", {"index": 0})
        await event(
            "message_delta",
            {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": n}},
        )
        await event("message_stop", {})
        await exchange.end()

    # ------------------------------------------------------------- cohere

    async def cohere_chat_v2(self, exchange: Exchange) -> None:
        if await self._error(exchange, "cohere"):
            return
        body = exchange.json or {}
        n, cut = self._plan(body, "max_tokens")
        usage_in = _words(body.get("messages", []))
        finish = "MAX_TOKENS" if cut else "COMPLETE"
        usage = {
            "billed_units": {"input_tokens": usage_in, "output_tokens": n},
            "tokens": {"input_tokens": usage_in + 5, "output_tokens": n},
        }
        if not body.get("stream"):
            text = await self._generate(exchange, n)
            message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
            await exchange.respond_json(
                200, {"id": "chat-local", "finish_reason": finish, "message": message, "usage": usage}
            )
            return
        # SSE, unless the client accepts only JSON (LiteLLM's cohere/): then one JSON object a line
        lines = exchange.log.headers.get("accept", "").split(";")[0].strip() == "application/json"
        await exchange.start(200, "application/stream+json" if lines else "text/event-stream")

        async def event(kind: str, data: dict[str, Any]) -> None:
            payload = {"type": kind, **data}
            await exchange.send(json.dumps(payload).encode() + b"\n" if lines else _sse(payload, kind))

        await event("message-start", {"id": "chat-local", "delta": {"message": {"role": "assistant"}}})
        await event("content-start", {"index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})
        for i in range(n):
            exchange.unit()
            if body.get("model") == "malformed" and i == 3:
                await exchange.send(b"event: content-delta\ndata: {broken\n\n")
                await exchange.end()
                return
            await event("content-delta", {"index": 0, "delta": {"message": {"content": {"text": f"tok{i} "}}}})
            await exchange.sleep(self.p.token_interval)
        await event("content-end", {"index": 0})
        await event("message-end", {"delta": {"finish_reason": finish, "usage": usage}})
        await exchange.end()

    async def cohere_chat_v1(self, exchange: Exchange) -> None:
        if await self._error(exchange, "cohere"):
            return
        body = exchange.json or {}
        n, cut = self._plan(body, "max_tokens")
        usage_in = _words(body.get("message", ""))
        finish = "MAX_TOKENS" if cut else "COMPLETE"
        meta = {"billed_units": {"input_tokens": usage_in, "output_tokens": n}}
        if not body.get("stream"):
            text = await self._generate(exchange, n)
            await exchange.respond_json(
                200,
                {"text": text, "generation_id": "gen-local", "finish_reason": finish, "meta": meta, "chat_history": []},
            )
            return
        await exchange.start(200, "application/stream+json")

        async def line(data: dict[str, Any]) -> None:
            await exchange.send(json.dumps(data, separators=(",", ":")).encode() + b"\n")

        await line({"is_finished": False, "event_type": "stream-start", "generation_id": "gen-local"})
        for i in range(n):
            exchange.unit()
            await line({"is_finished": False, "event_type": "text-generation", "text": f"tok{i} "})
            await exchange.sleep(self.p.token_interval)
        text = "".join(f"tok{i} " for i in range(n))
        response = {"text": text, "generation_id": "gen-local", "finish_reason": finish, "meta": meta}
        await line({"is_finished": True, "event_type": "stream-end", "finish_reason": finish, "response": response})
        await exchange.end()

    async def _searching(self, exchange: Exchange) -> None:
        """``search_delay`` seconds of work, one unit per 10 ms, stopping if the client leaves."""
        remaining = self.p.search_delay
        while remaining > 0:
            exchange.unit()
            step = min(0.01, remaining)
            await exchange.sleep(step)
            remaining -= step

    async def cohere_rerank(self, exchange: Exchange) -> None:
        if await self._error(exchange, "cohere"):
            return
        body = exchange.json or {}
        documents = body.get("documents") or []
        query = str(body.get("query", ""))
        await self._searching(exchange)
        query_words = set(query.lower().split())

        def score(doc: Any) -> float:
            text = doc if isinstance(doc, str) else json.dumps(doc)
            words = set(text.lower().split())
            overlap = len(words & query_words) / (len(query_words) or 1)
            digest = int(hashlib.sha256(text.encode()).hexdigest()[:6], 16) / 0xFFFFFF
            return round(0.5 * overlap + 0.5 * digest, 6)

        ranked = sorted(((score(d), i) for i, d in enumerate(documents)), reverse=True)
        top_n = body.get("top_n") or len(ranked)
        results = [{"index": i, "relevance_score": s} for s, i in ranked[:top_n]]
        await exchange.respond_json(
            200, {"id": "rerank-local", "results": results, "meta": {"billed_units": {"search_units": 1}}}
        )

    async def cohere_embed(self, exchange: Exchange) -> None:
        if await self._error(exchange, "cohere"):
            return
        body = exchange.json or {}
        texts = [str(t) for t in body.get("texts") or []]
        vectors = [embed(t) for t in texts]
        tokens = sum(len(t.split()) for t in texts)
        await exchange.respond_json(
            200,
            {
                "id": "embed-local",
                "response_type": "embeddings_by_type",
                "embeddings": {"float": vectors},
                "texts": texts,
                "meta": {"billed_units": {"input_tokens": tokens}},
            },
        )

    # ------------------------------------------------- groq, mistral, gemini

    def _answer(self, model: str) -> list[Reply]:
        """The scripted answer for ``model``, else ``tok0 tok1 ...`` as many as the model name says."""
        scripted = self.p._take_script(model)
        if scripted is not None:
            return scripted
        match = re.fullmatch(r"local-(\d+)", model)
        natural = int(match.group(1)) if match else self.p.default_tokens
        return [Reply(text="".join(f"tok{i} " for i in range(natural)))]

    async def groq_chat(self, exchange: Exchange) -> None:
        if await self._error(exchange, "openai"):
            return
        body = exchange.json or {}
        answer = self._answer(str(body.get("model", "")))
        await _openai_like.chat(exchange, "groq", body, answer, self.p.token_interval)

    async def mistral_chat(self, exchange: Exchange) -> None:
        if await self._error(exchange, "mistral"):
            return
        body = exchange.json or {}
        answer = self._answer(str(body.get("model", "")))
        await _openai_like.chat(exchange, "mistral", body, answer, self.p.token_interval)

    async def mistral_embeddings(self, exchange: Exchange) -> None:
        if await self._error(exchange, "mistral"):
            return
        await _openai_like.mistral_embeddings(exchange, exchange.json or {}, embed)

    async def gemini(self, exchange: Exchange, model: str, action: str) -> None:
        if await self._error(exchange, "gemini", model):
            return
        body = exchange.json or {}
        if action == "countTokens":
            await _gemini.count_tokens(exchange, body)
        elif action == "embedContent":
            await _gemini.embed_content(exchange, body, embed)
        elif action == "batchEmbedContents":
            await _gemini.batch_embed_contents(exchange, body, embed)
        else:
            stream = action == "streamGenerateContent"
            await _gemini.generate(exchange, model, body, self._answer(model), self.p.token_interval, stream)

    # ------------------------------------------------------------- qdrant

    async def qdrant_root(self, exchange: Exchange) -> None:
        info = {"title": "qdrant - vector search engine (local provider)", "version": "1.20.0"}
        await exchange.respond_json(200, info)

    async def _qdrant_ok(self, exchange: Exchange, result: Any) -> None:
        await exchange.respond_json(200, {"result": result, "status": "ok", "time": 0.0001})

    async def _qdrant_error(self, exchange: Exchange, status: int, message: str) -> None:
        await exchange.respond_json(status, {"status": {"error": message}, "time": 0.0})

    async def qdrant(self, exchange: Exchange, method: str, name: str, rest: str) -> None:
        body = exchange.json or {}
        collection = self.collections.get(name)
        if rest == "/exists":
            await self._qdrant_ok(exchange, {"exists": collection is not None})
            return
        if rest == "" and method == "PUT":
            vectors = body.get("vectors") or {}
            self.collections[name] = {"size": int(vectors.get("size", 0)), "points": {}, "config": body}
            await self._qdrant_ok(exchange, True)
            return
        if rest == "" and method == "DELETE":
            self.collections.pop(name, None)
            await self._qdrant_ok(exchange, True)
            return
        if collection is None:
            await self._qdrant_error(exchange, 404, f"Not found: Collection `{name}` doesn't exist!")
            return
        if rest == "" and method == "GET":
            await self._qdrant_ok(exchange, _collection_info(collection))
        elif rest == "/points" and method == "PUT":
            await self._upsert(exchange, collection, body)
        elif rest in ("/points/query", "/points/search") and method == "POST":
            await self._query(exchange, collection, body)
        else:
            await self._qdrant_error(exchange, 404, f"Not found: {method} {exchange.log.path}")

    async def _upsert(self, exchange: Exchange, collection: dict[str, Any], body: dict[str, Any]) -> None:
        for point in body.get("points") or []:
            vector = point.get("vector")
            if not isinstance(vector, list) or len(vector) != collection["size"]:
                got = len(vector) if isinstance(vector, list) else type(vector).__name__
                await self._qdrant_error(
                    exchange,
                    400,
                    f"Wrong input: Vector dimension error: expected dim: {collection['size']}, got {got}",
                )
                return
            collection["points"][point["id"]] = (vector, point.get("payload") or {})
        await self._qdrant_ok(exchange, {"operation_id": 0, "status": "completed"})

    async def _query(self, exchange: Exchange, collection: dict[str, Any], body: dict[str, Any]) -> None:
        query = body.get("query", body.get("vector"))
        if isinstance(query, dict):
            query = query.get("nearest", query.get("vector"))
        if not isinstance(query, list) or len(query) != collection["size"]:
            got = len(query) if isinstance(query, list) else type(query).__name__
            await self._qdrant_error(
                exchange, 400, f"Wrong input: Vector dimension error: expected dim: {collection['size']}, got {got}"
            )
            return
        await self._searching(exchange)
        scored = sorted(
            ((_cosine(query, vec), pid, payload) for pid, (vec, payload) in collection["points"].items()),
            key=lambda t: t[0],
            reverse=True,
        )
        limit = int(body.get("limit") or body.get("top") or 10)
        with_payload = bool(body.get("with_payload", False))
        points = [
            {"id": pid, "version": 0, "score": score, "payload": payload if with_payload else None, "vector": None}
            for score, pid, payload in scored[:limit]
        ]
        result: Any = {"points": points} if exchange.log.path.endswith("/query") else points
        await self._qdrant_ok(exchange, result)


def embed(text: str, dim: int = 8) -> list[float]:
    """A deterministic unit vector of ``dim`` dimensions for ``text`` (for the embed endpoints and the demo's data)."""
    digest = hashlib.sha256(text.encode()).digest()
    block = 1
    while len(digest) < dim:  # dimensions beyond 32: more hashes of the text (the first 32 do not change)
        digest += hashlib.sha256(b"%d:" % block + text.encode()).digest()
        block += 1
    raw = [(b / 255.0) - 0.5 for b in digest[:dim]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(y * y for y in b)) or 1.0
    return round(dot / (na * nb), 6)


def _collection_info(collection: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "green",
        "optimizer_status": "ok",
        "points_count": len(collection["points"]),
        "indexed_vectors_count": 0,
        "segments_count": 1,
        "config": {
            "params": {"vectors": collection["config"].get("vectors", {}), "shard_number": 1, "replication_factor": 1},
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
            "optimizer_config": {
                "deleted_threshold": 0.2,
                "vacuum_min_vector_number": 1000,
                "default_segment_number": 0,
                "flush_interval_sec": 5,
            },
            "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
        },
        "payload_schema": {},
    }


__all__ = ["ClientGone", "Vendors", "embed"]
