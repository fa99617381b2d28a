"""Scripted answers: the provider replies with given text and tool calls, in each vendor's wire format.

``LocalProvider.script(*answers, model=None)`` queues answers; each generation
request (OpenAI chat completions and Responses, Anthropic messages) takes the
next one queued for its model, else the next one queued for any model, else is
answered as usual (``tok0 tok1 ...``).  An answer is a ``Reply``, or a list of
``Reply`` for several choices (OpenAI chat only; the others answer 400).

Units: each text token (a word with its trailing space) and each streamed piece
of a tool call's arguments is one unit, produced ``token_interval`` apart,
streamed or not, and logged like any other.  The request's ``max_tokens``-like
bound cuts the units of each choice (the stop reason then says so: ``length``,
``max_tokens``, status ``incomplete``).  Usage: input = words of the request's
messages, output = units produced (all choices).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: characters per streamed piece of a tool call's arguments given as a dict or one string
ARGUMENT_PIECE = 4


@dataclass(frozen=True)
class ToolCall:
    """A tool call in a scripted reply.

    ``arguments``: a dict (sent as JSON), a JSON string, or a list of strings, which are
    then the exact streamed pieces.  ``id`` defaults to ``call_<n>`` / ``toolu_<n>``.
    ``name``: the tool's name.
    """

    name: str
    arguments: Mapping[str, Any] | str | Sequence[str] = field(default_factory=dict)
    id: str | None = None

    def pieces(self) -> list[str]:
        """The arguments as they are streamed, one unit each."""
        args = self.arguments
        if isinstance(args, Mapping):
            args = json.dumps(dict(args))
        if isinstance(args, str):
            return [args[i : i + ARGUMENT_PIECE] for i in range(0, len(args), ARGUMENT_PIECE)]
        return [str(piece) for piece in args]


@dataclass(frozen=True)
class Reply:
    """One scripted answer (one choice): ``text`` first, then ``tool_calls``.

    ``stop_reason`` replaces the vendor's own (OpenAI chat ``finish_reason``, Responses
    ``status``, Anthropic ``stop_reason``); by default it is what the vendor would say:
    ``tool_calls`` / ``tool_use`` with tool calls, ``length`` / ``max_tokens`` /
    ``incomplete`` when the bound cut the reply, else ``stop`` / ``end_turn`` / ``completed``.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    stop_reason: str | None = None


Answer = Reply | Sequence[Reply]


@dataclass
class Part:
    """What one choice produced: text tokens, then each call's argument pieces (``budget``-cut)."""

    reply: Reply
    tokens: list[str]
    calls: list[tuple[ToolCall, str, list[str]]]  # (call, id, pieces)
    cut: bool

    @property
    def units(self) -> int:
        return len(self.tokens) + sum(len(p) for _, _, p in self.calls)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def plan(reply: Reply, budget: int | None, id_prefix: str) -> Part:
    """The units ``reply`` produces under the request's bound (``None``: no bound)."""
    left = budget if budget is not None else 1 << 62
    tokens = re.findall(r"\S+\s*|\s+", reply.text)
    cut = len(tokens) > left
    tokens = tokens[:left]
    left -= len(tokens)
    calls: list[tuple[ToolCall, str, list[str]]] = []
    for n, call in enumerate(reply.tool_calls):
        if left <= 0 and (cut or call.pieces()):
            cut = True
            break
        pieces = call.pieces()
        if len(pieces) > left:
            cut, pieces = True, pieces[:left]
        left -= len(pieces)
        calls.append((call, call.id or f"{id_prefix}{n}", pieces))
    return Part(reply, tokens, calls, cut)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event, its JSON compact as the vendors send it."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def words(value: Any) -> int:
    """Input tokens: whitespace-separated words in every string of the request's messages."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(v) for v in value)
    if isinstance(value, dict):
        return sum(words(v) for k, v in value.items() if k in ("content", "text", "messages", "input", "message"))
    return 0


def arguments_object(text: str) -> dict[str, Any]:
    """Anthropic's ``input`` is an object: the arguments parsed, ``{}`` when cut short or not an object."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["ARGUMENT_PIECE", "Answer", "Part", "Reply", "ToolCall", "arguments_object", "plan", "sse", "words"]
