"""Google Gemini's REST wire format (the Gemini Developer API that ``google-genai`` and LiteLLM's ``gemini/`` call).

Routes: ``POST /{v1,v1beta,v1alpha}/models/{model}:{method}`` with ``generateContent``,
``streamGenerateContent`` (server-sent events, as with ``?alt=sse``, which every SDK asks for),
``countTokens``, ``embedContent`` and ``batchEmbedContents``.  ``google-genai`` 3.x calls
``/v1/...`` unless ``api_version`` says otherwise; LiteLLM calls ``{api_base}/models/...``.

Shapes follow the SDK's types (``GenerateContentResponse``: ``candidates[].content.parts[]``
with ``text`` or ``functionCall`` parts, ``finishReason``, ``usageMetadata`` with
``promptTokenCount`` / ``candidatesTokenCount`` / ``totalTokenCount``).  As the service does,
a function call is sent whole (its ``args`` an object) once its pieces are produced, its
finish reason is ``STOP``, and a stream's chunks carry only the prompt's usage until the last
one, which has the finish reason and the full usage.  The request's bound is
``generationConfig.maxOutputTokens`` (proto names such as ``max_output_tokens`` are read too);
several scripted replies answer several candidates.
"""

from __future__ import annotations

import json
from typing import Any

from ._script import Part, Reply, arguments_object, plan
from ._server import Exchange

#: the methods of ``/models/{model}:{method}`` the provider answers
METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents")

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def field(obj: Any, name: str) -> Any:
    """A request field by its JSON name or its proto name (the service accepts both:
    ``maxOutputTokens`` / ``max_output_tokens``; LiteLLM sends the latter)."""
    if not isinstance(obj, dict):
        return None
    if name in obj:
        return obj[name]
    return obj.get("".join(f"_{c.lower()}" if c.isupper() else c for c in name))


def error_body(status: int, message: str) -> dict[str, Any]:
    """Google's error envelope (``google.rpc.Status``)."""
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}


def event(data: Any) -> bytes:
    """One server-sent event as Gemini frames it (CRLF line ends)."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\r\n\r\n"


def prompt_tokens(body: dict[str, Any]) -> int:
    """Words in the text parts of ``contents`` and ``systemInstruction``."""
    contents = body.get("contents") or []
    if isinstance(contents, dict):
        contents = [contents]
    system = field(body, "systemInstruction")
    if isinstance(system, dict):
        contents = [*contents, system]
    return sum(
        len(str(part.get("text", "")).split())
        for content in contents
        if isinstance(content, dict)
        for part in content.get("parts") or []
        if isinstance(part, dict)
    )


def _usage(prompt: int, candidates: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = prompt + (candidates or 0)
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return usage


def _finish(part: Part) -> str:
    return part.reply.stop_reason or ("MAX_TOKENS" if part.cut else "STOP")


def _call_part(call_name: str, call_id: str | None, pieces: list[str]) -> dict[str, Any]:
    function_call: dict[str, Any] = {"name": call_name, "args": arguments_object("".join(pieces))}
    if call_id is not None:
        function_call["id"] = call_id
    return {"functionCall": function_call}


def _parts(part: Part) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": part.text}] if part.tokens else []
    parts += [_call_part(call.name, call.id, pieces) for call, _, pieces in part.calls]
    return parts


async def generate(
    exchange: Exchange, model: str, body: dict[str, Any], answer: list[Reply], interval: float, stream: bool
) -> None:
    """``generateContent`` and ``streamGenerateContent``: the answer's units, then (or as) the response."""
    bound = field(field(body, "generationConfig"), "maxOutputTokens")
    parts = [plan(reply, bound if isinstance(bound, int) else None, "") for reply in answer]
    prompt = prompt_tokens(body)
    units = sum(p.units for p in parts)
    base = {"modelVersion": model, "responseId": "local-gemini"}
    if not stream:
        for _ in range(units):
            exchange.unit()
            await exchange.sleep(interval)
        candidates = [
            {"content": {"parts": _parts(p), "role": "model"}, "finishReason": _finish(p), "index": i}
            for i, p in enumerate(parts)
        ]
        await exchange.respond_json(200, {"candidates": candidates, "usageMetadata": _usage(prompt, units), **base})
        return
    await exchange.start(200, "text/event-stream")

    async def chunk(data: dict[str, Any]) -> None:
        await exchange.send(event(data))

    def candidate(i: int, content_parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"candidates": [{"content": {"parts": content_parts, "role": "model"}, "index": i, **extra}]}

    for i, p in enumerate(parts):
        for n, token in enumerate(p.tokens):
            exchange.unit()
            if model == "malformed" and n == 3:
                await exchange.send(b"data: {broken\r\n\r\n")
                await exchange.end()
                return
            await chunk({**candidate(i, [{"text": token}]), "usageMetadata": _usage(prompt, None), **base})
            await exchange.sleep(interval)
        for call, _, pieces in p.calls:
            for _ in pieces:  # the service sends a call whole, once its arguments are generated
                exchange.unit()
                await exchange.sleep(interval)
            call_part = _call_part(call.name, call.id, pieces)
            await chunk({**candidate(i, [call_part]), "usageMetadata": _usage(prompt, None), **base})
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        data = candidate(i, [{"text": ""}], finishReason=_finish(p))
        usage = _usage(prompt, units) if last else _usage(prompt, None)
        await chunk({**data, "usageMetadata": usage, **base})
    await exchange.end()


async def count_tokens(exchange: Exchange, body: dict[str, Any]) -> None:
    request = field(body, "generateContentRequest")
    total = prompt_tokens(request if isinstance(request, dict) else body)
    await exchange.respond_json(
        200, {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
    )


def _embedding(request: dict[str, Any], vector: Any) -> dict[str, Any]:
    content = request.get("content") or {}
    text = " ".join(str(p.get("text", "")) for p in content.get("parts") or [] if isinstance(p, dict))
    dim = field(request, "outputDimensionality") or 8
    return {"values": vector(text, int(dim))}


async def embed_content(exchange: Exchange, body: dict[str, Any], vector: Any) -> None:
    await exchange.respond_json(200, {"embedding": _embedding(body, vector)})


async def batch_embed_contents(exchange: Exchange, body: dict[str, Any], vector: Any) -> None:
    requests = [r for r in body.get("requests") or [] if isinstance(r, dict)]
    await exchange.respond_json(200, {"embeddings": [_embedding(r, vector) for r in requests]})


__all__ = [
    "METHODS",
    "batch_embed_contents",
    "count_tokens",
    "embed_content",
    "error_body",
    "event",
    "generate",
    "prompt_tokens",
]
