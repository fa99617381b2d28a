"""A scope opened by hand, outside a web framework: its child task's call is aborted by a cancel."""

from __future__ import annotations

# --8<-- [start:scope]
import anyio

from scoped_clients import RequestScope, ScopeReport
from scoped_clients.openai import AsyncOpenAI

client = AsyncOpenAI()


async def answer(question: str) -> str:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], max_tokens=400
    )
    return completion.choices[0].message.content or ""


async def main() -> ScopeReport:
    async with RequestScope(name="chat", timeout=30.0) as scope:
        scope.spawn(answer, "Why is the sky blue?")  # a child task owned by the scope
        await anyio.sleep(1.0)  # ... the user leaves (a disconnect, a Stop button) ...
        scope.cancel("client_disconnected")  # from any task or thread; idempotent
    # The cancel stopped the body and was absorbed when the block exited.
    print(scope.cancelled, scope.cancel_reason)  # True client_disconnected
    assert scope.report is not None  # final once the block has exited
    print(scope.report.summary())  # {"scope": "chat", "outcome": "cancelled", "tokens_saved": ...}
    return scope.report


if __name__ == "__main__":
    anyio.run(main)
# --8<-- [end:scope]


def check(provider: object) -> None:
    from _harness import assert_stopped

    provider.token_interval = 0.1  # type: ignore[attr-defined]  # the answer (5 s) outlasts the 1 s
    report = anyio.run(main)
    (log,) = provider.requests  # type: ignore[attr-defined]
    (call,) = report.calls
    assert call.outcome == "aborted" and call.cancelled_at is not None
    assert_stopped(log, call.cancelled_at)
    assert report.cancel_reason == "client_disconnected"
