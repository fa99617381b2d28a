"""Sync code: ``with RequestScope()``; a cancel from another thread unblocks the blocking read."""

from __future__ import annotations

# --8<-- [start:sync]
import threading

from scoped_clients import RequestScope
from scoped_clients.openai import OpenAI

client = OpenAI()


def summarize(text: str, stop: threading.Event) -> str | None:
    with RequestScope(name="summarize", timeout=60.0) as scope:
        # Another thread cancels: a Stop button, a shutdown, a supervisor...
        threading.Thread(target=lambda: stop.wait() and scope.cancel("user_stopped")).start()
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize: {text}"}], max_tokens=400
        )
        return completion.choices[0].message.content
    return None  # cancelled: the blocking read was released with ScopeCancelled, absorbed by the block


# --8<-- [end:sync]


def check(provider: object) -> None:
    import time

    from _harness import assert_stopped, reports

    stop = threading.Event()
    result: list[str | None] = []
    with reports() as seen:
        worker = threading.Thread(target=lambda: result.append(summarize("a long text", stop)))
        worker.start()
        (log,) = provider.wait_for_requests(1)  # type: ignore[attr-defined]
        log.wait_units(3)
        t_cancel = time.monotonic()
        stop.set()
        worker.join(10)
        report = seen.wait()
    assert result == [None]
    assert_stopped(log, t_cancel)
    assert report.cancel_reason == "user_stopped" and [c.outcome for c in report.calls] == ["aborted"]
