"""Groq's and Mistral's chat completions: OpenAI's shape with each vendor's differences.

- **Groq** (``POST /openai/v1/chat/completions``, what the ``groq`` SDK and LiteLLM's ``groq/``
  call): OpenAI's fields plus ``x_groq``: its ``id`` in the first and last chunk of a stream,
  and the usage in the last one (``x_groq.usage``, with Groq's timing fields) whether or not
  ``stream_options.include_usage`` asked for OpenAI's separate usage chunk.
- **Mistral** (``POST /v1/chat/completions`` and ``/v1/embeddings``, served under the
  ``/mistral`` prefix because OpenAI owns that path here: ``Mistral(server_url=url + "/mistral")``,
  LiteLLM ``api_base=url + "/mistral/v1"``): the usage always arrives in the chunk with the
  finish reason, tool-call ids are nine alphanumerics, errors are ``{"object": "error", ...}``.

Both send a streamed tool call whole, in one delta (``function.name`` and all of
``arguments``) once its pieces are produced, as the services do; Mistral's SDK requires
``function.name`` in every tool-call delta.  Several scripted choices answer ``n`` choices.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from ._script import Part, Reply, plan, sse, words
from ._server import Exchange

Dialect = Literal["groq", "mistral"]


def error_body(dialect: Dialect, status: int, message: str) -> dict[str, Any]:
    if dialect == "mistral":
        return {"object": "error", "message": message, "type": "invalid_request_error", "param": None, "code": None}
    return {"error": {"message": message, "type": "server_error", "code": str(status)}}


def _bound(body: dict[str, Any]) -> int | None:
    bounds = [int(body[k]) for k in ("max_tokens", "max_completion_tokens") if isinstance(body.get(k), int)]
    return min(bounds) if bounds else None


def _finish(part: Part) -> str:
    return part.reply.stop_reason or ("length" if part.cut else "tool_calls" if part.calls else "stop")


def _tool_calls(part: Part) -> list[dict[str, Any]]:
    """Each call on the wire (``wire``) with its streamed pieces (``pieces``)."""
    return [
        {
            "wire": {
                "id": cid,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(pieces)},
                "index": k,
            },
            "pieces": pieces,
        }
        for k, (call, cid, pieces) in enumerate(part.calls)
    ]


def _usage(dialect: Dialect, prompt: int, completion: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if dialect == "groq":
        usage |= {"queue_time": 0.0001, "prompt_time": 0.0001, "completion_time": 0.001, "total_time": 0.0012}
    return usage


def _message(dialect: Dialect, part: Part) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": part.text or None}
    if dialect == "mistral":
        message["content"] = part.text
        message["prefix"] = False
    message["tool_calls"] = [call["wire"] for call in _tool_calls(part)] or None
    return message


async def chat(
    exchange: Exchange, dialect: Dialect, body: dict[str, Any], answer: list[Reply], interval: float
) -> None:
    several = len(answer) > 1
    parts = [plan(reply, _bound(body), f"call_{i}_" if several else "call_") for i, reply in enumerate(answer)]
    if dialect == "mistral":
        parts = [_mistral_ids(i, part) for i, part in enumerate(parts)]
    prompt = words(body.get("messages", []))
    units = sum(part.units for part in parts)
    model = body.get("model", "local")
    base: dict[str, Any] = {"id": f"chatcmpl-local-{dialect}", "created": int(time.time()), "model": model}
    usage = _usage(dialect, prompt, units)
    if not body.get("stream"):
        for _ in range(units):
            exchange.unit()
            await exchange.sleep(interval)
        choices = [
            {"index": i, "message": _message(dialect, part), "finish_reason": _finish(part), "logprobs": None}
            for i, part in enumerate(parts)
        ]
        extra: dict[str, Any] = {}
        if dialect == "groq":  # LiteLLM's groq/ reads service_tier
            extra = {"system_fingerprint": "fp_local", "service_tier": "on_demand", "x_groq": {"id": "req_local"}}
        await exchange.respond_json(
            200, {**base, "object": "chat.completion", "choices": choices, "usage": usage, **extra}
        )
        return
    await exchange.start(200, "text/event-stream")
    base["object"] = "chat.completion.chunk"

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None
    ) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse({**base, "choices": [choice], **(extra or {})})

    opening = {"x_groq": {"id": "req_local"}} if dialect == "groq" else {}
    for i in range(len(parts)):
        await exchange.send(chunk(i, {"role": "assistant", "content": ""}, None, opening))
    deltas = [_deltas(part) for part in parts]
    for step in range(max(len(d) for d in deltas)):  # several choices interleave
        for i, choice_deltas in enumerate(deltas):
            if step >= len(choice_deltas):
                continue
            units_before, delta = choice_deltas[step]
            if units_before == 0:  # a text token: sent as it is produced
                exchange.unit()
                if model == "malformed" and len(exchange.log.units) == 4:
                    await exchange.send(b'data: {"id": "broken", "choices": [\n\n')
                    await exchange.end()
                    return
                await exchange.send(chunk(i, delta))
                await exchange.sleep(interval)
                continue
            for _ in range(units_before):  # a tool call: sent whole once its pieces are produced
                exchange.unit()
                await exchange.sleep(interval)
            await exchange.send(chunk(i, delta))
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if dialect == "groq":
            closing = {"x_groq": {"id": "req_local", "usage": usage}} if last else {}
            await exchange.send(chunk(i, {}, _finish(part), closing))
        else:
            await exchange.send(chunk(i, {"content": ""}, _finish(part), {"usage": usage} if last else None))
    if dialect == "groq" and (body.get("stream_options") or {}).get("include_usage"):
        await exchange.send(sse({**base, "choices": [], "usage": usage}))
    await exchange.send(sse("[DONE]"))
    await exchange.end()


def _deltas(part: Part) -> list[tuple[int, dict[str, Any]]]:
    """A choice's deltas after its first, each with the units produced before it is sent:
    0 for a text token (one unit, sent at once), the number of pieces for a tool call."""
    deltas: list[tuple[int, dict[str, Any]]] = [(0, {"content": token}) for token in part.tokens]
    for call in _tool_calls(part):
        deltas.append((len(call["pieces"]), {"tool_calls": [call["wire"]]}))
    return deltas


def _mistral_ids(choice: int, part: Part) -> Part:
    """Mistral's tool-call ids are nine characters of [a-zA-Z0-9]."""
    calls = [(call, call.id or f"call{choice}{n:04d}", pieces) for n, (call, _, pieces) in enumerate(part.calls)]
    return Part(part.reply, part.tokens, calls, part.cut)


async def mistral_embeddings(exchange: Exchange, body: dict[str, Any], vector: Any) -> None:
    inputs = body.get("input") or body.get("inputs") or []
    texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs]
    dim = int(body.get("output_dimension") or 8)
    data = [{"object": "embedding", "embedding": vector(t, dim), "index": i} for i, t in enumerate(texts)]
    tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    await exchange.respond_json(
        200, {"id": "embd-local", "object": "list", "data": data, "model": body.get("model", "local"), "usage": usage}
    )


__all__ = ["Dialect", "chat", "error_body", "mistral_embeddings"]
