"""LiteLLM's acompletion, its call owned by the scope: cancelled, it stops at the provider."""

from __future__ import annotations

# --8<-- [start:litellm]
from scoped_clients.litellm import acompletion  # was: from litellm import acompletion


async def answer(question: str) -> str:
    # LiteLLM's own function and arguments; inside a scope the call goes through a scoped transport
    response = await acompletion(
        model="openai/gpt-4o-mini", max_tokens=400, messages=[{"role": "user", "content": question}]
    )
    return response.choices[0].message.content or ""


# --8<-- [end:litellm]


def check(provider: object) -> None:
    import time

    import anyio

    from scoped_clients import RequestScope

    async def main() -> None:
        async with RequestScope(name="litellm") as scope, anyio.create_task_group() as tg:
            tg.start_soon(answer, "tell me a long story")
            log = (await anyio.to_thread.run_sync(provider.wait_for_requests, 1))[0]  # type: ignore[attr-defined]
            await anyio.to_thread.run_sync(log.wait_units, 3)
            t_cancel = time.monotonic()
            scope.cancel("client_disconnected")  # the user left
        log.wait_disconnect()
        assert log.units_after(t_cancel) <= 1 and len(provider.requests) == 1  # type: ignore[attr-defined]
        assert [(c.provider, c.outcome) for c in scope.report.calls] == [("openai", "aborted")]  # type: ignore[union-attr]
        from scoped_clients.litellm import close_litellm_async_clients

        await close_litellm_async_clients()

    anyio.run(main)
