"""Tool-calling turns: the embedded provider answers with tool calls in each vendor's wire
format, the real SDKs parse them, and an aborted tool-calling turn is metered."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

import scoped_clients.anthropic as scoped_anthropic
import scoped_clients.cohere as scoped_cohere
import scoped_clients.openai as scoped_openai
from _helpers import wait
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.provider import LocalProvider, Reply, ToolCall

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "what is the weather in Paris"}]
WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = ToolCall("get_time", {"tz": "Europe/Paris"})
TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("get_weather", "get_time")
]
ANTHROPIC_TOOLS = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "get_time")]
RESPONSES_TOOLS = [
    {"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("get_weather", "get_time")
]

_open: list[Any] = []


@pytest.fixture(autouse=True)
async def _close_clients(anyio_backend: object) -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().close()


def openai_client(p: LocalProvider) -> Any:
    client = scoped_openai.AsyncOpenAI(base_url=p.url + "/v1", api_key="test", max_retries=0)
    _open.append(client)
    return client


def anthropic_client(p: LocalProvider) -> Any:
    client = scoped_anthropic.AsyncAnthropic(base_url=p.url, api_key="test", max_retries=0)
    _open.append(client)
    return client


def _units_of(*calls: ToolCall, text: str = "") -> int:
    return len(text.split()) + sum(len(c.pieces()) for c in calls)


# ----------------------------------------------------------- the SDK parses them


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream-helper"])
async def test_openai_chat_tool_calls(provider: LocalProvider, streamed: bool) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(text="Let me check.", tool_calls=[WEATHER, TIME]))
    client = openai_client(provider)
    async with RequestScope() as scope:
        if streamed:
            async with client.chat.completions.stream(model="gpt", messages=MESSAGES, tools=TOOLS) as stream:
                async for _ in stream:
                    pass
                completion = await stream.get_final_completion()
        else:
            completion = await client.chat.completions.create(model="gpt", messages=MESSAGES, tools=TOOLS)
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_0", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("call_1", "get_time", {"tz": "Europe/Paris"}),
    ]
    units = _units_of(WEATHER, TIME, text="Let me check.")
    (log,) = provider.requests
    assert len(log.units) == units
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "completed" and record.finish_reason == "tool_calls"
    if not streamed:  # the stream helper does not ask for usage
        assert completion.usage is not None and completion.usage.completion_tokens == units
        assert record.tokens_out == units and record.tokens_out_source == "provider"


async def test_openai_chat_several_choices_usage_and_stop_reasons(provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    provider.script(
        [Reply(text="one two three"), Reply(tool_calls=[WEATHER]), Reply(text="x", stop_reason="content_filter")],
        model="gpt-n",
    )
    client = openai_client(provider)
    stream = await client.chat.completions.create(
        model="gpt-n", messages=MESSAGES, tools=TOOLS, n=3, stream=True, stream_options={"include_usage": True}
    )
    finish: dict[int, str] = {}
    arguments, texts, usage = "", {0: "", 2: ""}, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
            if choice.delta.content:
                texts[choice.index] += choice.delta.content
            for call in choice.delta.tool_calls or []:
                arguments += (call.function and call.function.arguments) or ""
    assert finish == {0: "stop", 1: "tool_calls", 2: "content_filter"}
    assert texts == {0: "one two three", 2: "x"} and json.loads(arguments) == WEATHER.arguments
    assert usage is not None and usage.completion_tokens == 3 + len(WEATHER.pieces()) + 1


async def test_max_tokens_cuts_a_tool_call(provider: LocalProvider) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(tool_calls=[WEATHER]))
    completion = await openai_client(provider).chat.completions.create(
        model="gpt", messages=MESSAGES, tools=TOOLS, max_tokens=3
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "length" and completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert choice.message.tool_calls is not None
    assert choice.message.tool_calls[0].function.arguments == "".join(WEATHER.pieces()[:3])


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream-helper"])
async def test_openai_responses_function_calls(provider: LocalProvider, streamed: bool) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(text="Checking.", tool_calls=[WEATHER]))
    client = openai_client(provider)
    async with RequestScope() as scope:
        if streamed:
            async with client.responses.stream(model="gpt", input="weather?", tools=RESPONSES_TOOLS) as stream:
                deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
                response = await stream.get_final_response()
            assert "".join(deltas) == json.dumps(WEATHER.arguments)
        else:
            response = await client.responses.create(model="gpt", input="weather?", tools=RESPONSES_TOOLS)
    assert response.status == "completed" and response.output_text == "Checking."
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_0", "get_weather", WEATHER.arguments)
    ]
    units = _units_of(WEATHER, text="Checking.")
    assert response.usage is not None and response.usage.output_tokens == units
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "completed" and record.tokens_out == units


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream-helper"])
async def test_anthropic_tool_use(provider: LocalProvider, streamed: bool) -> None:
    provider.token_interval = 0.0
    provider.script(Reply(text="Let me look.", tool_calls=[WEATHER, TIME]))
    client = anthropic_client(provider)
    kwargs: dict[str, Any] = {"model": "claude", "messages": MESSAGES, "max_tokens": 500, "tools": ANTHROPIC_TOOLS}
    async with RequestScope() as scope:
        if streamed:
            async with client.messages.stream(**kwargs) as stream:
                message = await stream.get_final_message()
        else:
            message = await client.messages.create(**kwargs)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    uses = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert uses == [("toolu_local_0", "get_weather", WEATHER.arguments), ("toolu_local_1", "get_time", TIME.arguments)]
    units = _units_of(WEATHER, TIME, text="Let me look.")
    assert message.usage.output_tokens == units
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "completed" and record.tokens_out == units and record.finish_reason == "tool_use"


async def test_several_choices_are_refused_where_the_vendor_has_none(provider: LocalProvider) -> None:
    import anthropic

    provider.script([Reply(text="a"), Reply(text="b")])
    with pytest.raises(anthropic.BadRequestError, match="several choices"):
        await anthropic_client(provider).messages.create(model="claude", messages=MESSAGES, max_tokens=10)


# ------------------------------------------------- an aborted tool-calling turn

MAX_TOKENS = 300
LONG = ToolCall("write_file", {"path": "notes.txt", "content": "lorem ipsum " * 200})  # 600+ pieces


async def _openai_chat_deltas(p: LocalProvider) -> AsyncIterator[object]:
    stream = await openai_client(p).chat.completions.create(
        model="gpt", messages=MESSAGES, tools=TOOLS, max_tokens=MAX_TOKENS, stream=True
    )
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.arguments:
                    yield call


async def _openai_responses_deltas(p: LocalProvider) -> AsyncIterator[object]:
    stream = await openai_client(p).responses.create(
        model="gpt", input="write it", tools=RESPONSES_TOOLS, max_output_tokens=MAX_TOKENS, stream=True
    )
    async for event in stream:
        if event.type == "response.function_call_arguments.delta":
            yield event


async def _anthropic_deltas(p: LocalProvider) -> AsyncIterator[object]:
    async with anthropic_client(p).messages.stream(
        model="claude", messages=MESSAGES, tools=ANTHROPIC_TOOLS, max_tokens=MAX_TOKENS
    ) as stream:
        async for event in stream:
            if event.type == "input_json":
                yield event


@pytest.mark.parametrize(
    "deltas",
    [
        pytest.param(_openai_chat_deltas, id="openai-chat"),
        pytest.param(_openai_responses_deltas, id="openai-responses"),
        pytest.param(_anthropic_deltas, id="anthropic"),
    ],
)
async def test_aborted_tool_call_turn_is_metered(
    provider: LocalProvider, deltas: Callable[[LocalProvider], AsyncIterator[object]]
) -> None:
    provider.token_interval = 0.05  # the cancel lands long before the next piece
    provider.script(Reply(tool_calls=[LONG]))
    received = 0
    ten = anyio.Event()
    errors: list[BaseException] = []

    async def consume() -> None:
        nonlocal received
        try:
            async for _ in deltas(provider):
                received += 1
                if received == 10:
                    ten.set()
        except ScopeCancelled as exc:
            errors.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, RequestScope("agent") as scope:
            tg.start_soon(consume)
            await ten.wait()
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")
        (log,) = provider.requests
        await wait(log.wait_disconnect)
    assert [type(e) for e in errors] == [ScopeCancelled]
    assert log.units_after(t_cancel) <= 1  # the provider stopped producing the call's arguments
    produced = len(log.units) - log.units_after(t_cancel)
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "aborted" and record.tokens_out_source == "estimated"
    # every argument piece received is counted (OpenAI chat also counts the call's opening chunk)
    assert produced <= record.tokens_out <= produced + 1 and received == 10
    assert record.tokens_saved_max == MAX_TOKENS - record.tokens_out < MAX_TOKENS
    assert record.tokens_saved is not None and record.tokens_saved < MAX_TOKENS


# ------------------------------------------ records agree with what the caller saw


async def test_a_200_that_is_not_json_is_failed_as_the_sdk_raised(provider: LocalProvider) -> None:
    caught: list[BaseException] = []
    async with RequestScope() as scope:
        for call in (
            lambda: openai_client(provider).chat.completions.create(model="not-json", messages=MESSAGES),
            lambda: anthropic_client(provider).messages.create(model="not-json", messages=MESSAGES, max_tokens=5),
        ):
            try:
                await call()
            except Exception as exc:
                caught.append(exc)
    assert len(caught) == 2  # both SDKs raise on the body
    assert [(c.outcome, c.error) for c in scope.report.calls] == [  # type: ignore[union-attr]
        ("failed", "the response body is not JSON")
    ] * 2


async def test_a_malformed_cohere_event_is_skipped_and_the_call_completes(
    provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.token_interval = 0.0
    client = scoped_cohere.AsyncClientV2(base_url=provider.url, api_key="x", max_retries=0)
    try:
        with caplog.at_level(logging.WARNING):
            async with RequestScope() as scope:
                events = [e.type async for e in client.chat_stream(model="malformed", messages=MESSAGES)]
    finally:
        await client._client_wrapper.httpx_client.httpx_client.aclose()
    assert events.count("content-delta") == 3  # no exception: the SDK skipped the broken event
    (record,) = scope.report.calls  # type: ignore[union-attr]
    assert record.outcome == "completed" and record.error is None
