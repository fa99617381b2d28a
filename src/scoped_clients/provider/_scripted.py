"""Scripted answers (``_script.py``) written in each vendor's wire format, streamed and not.

The shapes follow the vendors' SDK types (openai 3.x ``ChatCompletion`` /
``ChatCompletionChunk``, ``Response`` and its stream events; anthropic 2.x
``Message`` and its stream events), so that the real SDKs parse them, their
stream helpers included.
"""

from __future__ import annotations

import time
from typing import Any

from ._script import Part, Reply, arguments_object, plan, sse, words
from ._server import Exchange

_ONE_CHOICE = "the local provider scripts several choices for OpenAI chat completions only"


def _bound(body: dict[str, Any], *keys: str) -> int | None:
    bounds = [int(body[k]) for k in keys if isinstance(body.get(k), int)]
    return min(bounds) if bounds else None


async def _produce(exchange: Exchange, interval: float, units: int) -> None:
    """A non-streamed answer: its units are produced before the body is sent."""
    for _ in range(units):
        exchange.unit()
        await exchange.sleep(interval)


async def _emit(exchange: Exchange, interval: float, data: bytes, unit: bool) -> None:
    """Send one event; a unit of output is logged before it and followed by ``interval``."""
    if unit:
        exchange.unit()
    await exchange.send(data)
    if unit:
        await exchange.sleep(interval)


# ------------------------------------------------------------------ openai chat


def _chat_finish(part: Part) -> str:
    return part.reply.stop_reason or ("length" if part.cut else "tool_calls" if part.calls else "stop")


def _chat_message(part: Part) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": part.text or None, "refusal": None}
    if part.calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": call.name, "arguments": "".join(pieces)}}
            for call, cid, pieces in part.calls
        ]
    return message


def _chat_deltas(part: Part) -> list[tuple[dict[str, Any], bool]]:
    """A choice's deltas after its first chunk, each with whether it is a unit of output."""
    deltas: list[tuple[dict[str, Any], bool]] = [({"content": token}, True) for token in part.tokens]
    for k, (call, cid, pieces) in enumerate(part.calls):
        head = {"index": k, "id": cid, "type": "function", "function": {"name": call.name, "arguments": ""}}
        deltas.append(({"tool_calls": [head]}, False))
        deltas += [({"tool_calls": [{"index": k, "function": {"arguments": piece}}]}, True) for piece in pieces]
    return deltas


async def openai_chat(exchange: Exchange, body: dict[str, Any], answer: list[Reply], interval: float) -> None:
    several = len(answer) > 1
    bound = _bound(body, "max_tokens", "max_completion_tokens")
    parts = [plan(reply, bound, f"call_{i}_" if several else "call_") for i, reply in enumerate(answer)]
    usage_in = words(body.get("messages", []))
    units = sum(part.units for part in parts)
    base = {"id": "chatcmpl-local", "created": int(time.time()), "model": body.get("model", "local")}
    usage = {"prompt_tokens": usage_in, "completion_tokens": units, "total_tokens": usage_in + units}
    if not body.get("stream"):
        await _produce(exchange, interval, units)
        choices = [
            {"index": i, "message": _chat_message(part), "finish_reason": _chat_finish(part), "logprobs": None}
            for i, part in enumerate(parts)
        ]
        await exchange.respond_json(200, {**base, "object": "chat.completion", "choices": choices, "usage": usage})
        return
    await exchange.start(200, "text/event-stream")

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse({**base, "object": "chat.completion.chunk", "choices": [choice]})

    for i, part in enumerate(parts):
        await exchange.send(chunk(i, {"role": "assistant", "content": "" if part.tokens else None}))
    deltas = [_chat_deltas(part) for part in parts]
    for step in range(max(len(d) for d in deltas)):  # several choices interleave, as OpenAI streams them
        for i, choice_deltas in enumerate(deltas):
            if step < len(choice_deltas):
                delta, unit = choice_deltas[step]
                await _emit(exchange, interval, chunk(i, delta), unit)
    for i, part in enumerate(parts):
        await exchange.send(chunk(i, {}, _chat_finish(part)))
    if (body.get("stream_options") or {}).get("include_usage"):
        await exchange.send(sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    await exchange.send(sse("[DONE]"))
    await exchange.end()


# ------------------------------------------------------------ openai responses


def _responses_items(part: Part, final: bool) -> list[dict[str, Any]]:
    """The output items: a message with the text (if any), then one ``function_call`` per call."""
    items: list[dict[str, Any]] = []
    if part.tokens:
        content = [{"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}]
        items.append(
            {
                "id": "msg_local",
                "type": "message",
                "role": "assistant",
                "status": "completed" if final else "in_progress",
                "content": content if final else [],
            }
        )
    for n, (call, cid, pieces) in enumerate(part.calls):
        items.append(
            {
                "id": f"fc_local_{n}",
                "type": "function_call",
                "call_id": cid,
                "name": call.name,
                "arguments": "".join(pieces) if final else "",
                "status": "completed" if final else "in_progress",
            }
        )
    return items


async def openai_responses(exchange: Exchange, body: dict[str, Any], answer: list[Reply], interval: float) -> None:
    if len(answer) != 1:
        err = {"error": {"message": _ONE_CHOICE, "type": "invalid_request_error", "param": None, "code": None}}
        await exchange.respond_json(400, err)
        return
    part = plan(answer[0], _bound(body, "max_output_tokens"), "call_")
    usage_in = words(body.get("input", []))
    created = int(time.time())
    status = part.reply.stop_reason or ("incomplete" if part.cut else "completed")

    def response(state: str, output: list[Any], out: int | None) -> dict[str, Any]:
        usage = None
        if out is not None:
            usage = {
                "input_tokens": usage_in,
                "output_tokens": out,
                "total_tokens": usage_in + out,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
        return {
            "id": "resp_local",
            "object": "response",
            "created_at": created,
            "model": body.get("model", "local"),
            "status": state,
            "output": output,
            "usage": usage,
            "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "incomplete_details": {"reason": "max_output_tokens"} if part.cut and state == "incomplete" else None,
            "max_output_tokens": body.get("max_output_tokens"),
            "error": None,
        }

    final = response(status, _responses_items(part, final=True), part.units)
    if not body.get("stream"):
        await _produce(exchange, interval, part.units)
        await exchange.respond_json(200, final)
        return
    await exchange.start(200, "text/event-stream")
    seq = 0

    async def event(kind: str, data: dict[str, Any], unit: bool = False) -> None:
        nonlocal seq
        await _emit(exchange, interval, sse({"type": kind, "sequence_number": seq, **data}, kind), unit)
        seq += 1

    await event("response.created", {"response": response("in_progress", [], None)})
    await event("response.in_progress", {"response": response("in_progress", [], None)})
    opening, closing = _responses_items(part, final=False), final["output"]
    index = 0
    if part.tokens:
        ids = {"item_id": "msg_local", "output_index": 0, "content_index": 0}
        await event("response.output_item.added", {"output_index": 0, "item": opening[0]})
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        await event("response.content_part.added", {**ids, "part": empty})
        for token in part.tokens:
            await event("response.output_text.delta", {**ids, "delta": token, "logprobs": []}, unit=True)
        await event("response.output_text.done", {**ids, "text": part.text, "logprobs": []})
        await event("response.content_part.done", {**ids, "part": closing[0]["content"][0]})
        await event("response.output_item.done", {"output_index": 0, "item": closing[0]})
        index = 1
    for n, (_, _, pieces) in enumerate(part.calls):
        at = index + n
        ids = {"item_id": f"fc_local_{n}", "output_index": at}
        await event("response.output_item.added", {"output_index": at, "item": opening[at]})
        for piece in pieces:
            await event("response.function_call_arguments.delta", {**ids, "delta": piece}, unit=True)
        await event("response.function_call_arguments.done", {**ids, "arguments": "".join(pieces)})
        await event("response.output_item.done", {"output_index": at, "item": closing[at]})
    kind = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(status, "response.completed")
    await event(kind, {"response": final})
    await exchange.end()


# -------------------------------------------------------------------- anthropic


def _anthropic_blocks(part: Part) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": part.text}] if part.tokens else []
    for call, cid, pieces in part.calls:
        blocks.append({"type": "tool_use", "id": cid, "name": call.name, "input": arguments_object("".join(pieces))})
    return blocks


async def anthropic_messages(exchange: Exchange, body: dict[str, Any], answer: list[Reply], interval: float) -> None:
    if len(answer) != 1:
        error = {"type": "invalid_request_error", "message": _ONE_CHOICE}
        await exchange.respond_json(400, {"type": "error", "error": error})
        return
    part = plan(answer[0], _bound(body, "max_tokens"), "toolu_local_")
    usage_in = words(body.get("messages", []))
    stop = part.reply.stop_reason or ("max_tokens" if part.cut else "tool_use" if part.calls else "end_turn")
    message: dict[str, Any] = {
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
        await _produce(exchange, interval, part.units)
        usage: dict[str, Any] = {"input_tokens": usage_in, "output_tokens": part.units}
        final = {**message, "content": _anthropic_blocks(part), "stop_reason": stop, "usage": usage}
        await exchange.respond_json(200, final)
        return
    await exchange.start(200, "text/event-stream")

    async def event(kind: str, data: dict[str, Any], unit: bool = False) -> None:
        await _emit(exchange, interval, sse({"type": kind, **data}, kind), unit)

    await event("message_start", {"message": message})
    index = 0
    if part.tokens:
        await event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for token in part.tokens:
            await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}}, True)
        await event("content_block_stop", {"index": 0})
        index = 1
    for n, (call, cid, pieces) in enumerate(part.calls):
        at = index + n
        block = {"type": "tool_use", "id": cid, "name": call.name, "input": {}}
        await event("content_block_start", {"index": at, "content_block": block})
        for piece in pieces:
            delta = {"type": "input_json_delta", "partial_json": piece}
            await event("content_block_delta", {"index": at, "delta": delta}, True)
        await event("content_block_stop", {"index": at})
    end: dict[str, Any] = {"stop_reason": stop, "stop_sequence": None}
    await event("message_delta", {"delta": end, "usage": {"output_tokens": part.units}})
    await event("message_stop", {})
    await exchange.end()
