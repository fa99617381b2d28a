"""Reports: the default log line, and sinks of your own."""

from __future__ import annotations

# --8<-- [start:sink]
import json
import logging

from scoped_clients import ScopeReport, add_report_sink

logging.basicConfig(level=logging.INFO)  # the default sink: one line on the "scoped_clients" logger
billing: list[dict[str, object]] = []


def to_billing(report: ScopeReport) -> None:  # runs once per scope, when it ends
    if report.tokens_saved_max:
        billing.append(report.summary())  # the logged line as a dict, JSON-ready
    json.dumps(report.to_dict())  # ...and every call record


remove = add_report_sink(to_billing)  # returns the function that removes it
# --8<-- [end:sink]


def check(provider: object) -> None:
    import anyio

    from scoped_clients import RequestScope
    from scoped_clients.openai import AsyncOpenAI

    provider.token_interval = 0.05  # type: ignore[attr-defined]

    async def left() -> None:
        async with AsyncOpenAI() as client, RequestScope(name="chat") as scope:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=400, stream=True
            )
            async for _ in stream:
                scope.cancel("client_disconnected")

    try:
        anyio.run(left)
    finally:
        remove()
    (line,) = billing
    # the keys of the log line docs/guides/savings.md shows
    for key in ("scope", "outcome", "reason", "tokens_saved", "tokens_saved_max", "tokens_saved_source"):
        assert key in line, key
    assert line["outcome"] == "cancelled" and line["reason"] == "client_disconnected"
    assert line["tokens_saved_max_source"] == "upper_bound" and line["tokens_produced"] is not None
