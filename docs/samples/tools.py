"""Tools owned by the scope: functions, threads and subprocess groups."""

from __future__ import annotations

# --8<-- [start:tools]
from scoped_clients import RequestScope, ScopeReport
from scoped_clients.tools import run_command, run_tool, tool


@tool  # a sync tool runs in a worker thread; the caller is released at once on cancel
def lookup_weather(city: str) -> str:
    return f"sunny in {city}"


async def fetch_page(url: str) -> str:  # an async tool is cancelled with the scope
    return f"<html>{url}</html>"


async def main() -> ScopeReport:
    async with RequestScope(name="agent", timeout=2.0) as scope:
        print(await lookup_weather("Paris"))
        print(await run_tool(fetch_page, "https://example.com"))
        listing = await run_command(["ls", "-l"])  # its own process group
        print(listing.returncode, listing.stdout)
        # The scope's timeout ends this one: SIGTERM to the whole group, then SIGKILL after `grace`.
        await run_command(["sleep", "30"], grace=0.5)
    assert scope.report is not None
    return scope.report


# --8<-- [end:tools]


def check(provider: object) -> None:
    import anyio

    report = anyio.run(main)
    assert report.cancel_reason == "timeout"
    assert [c.outcome for c in report.calls] == ["completed", "completed", "completed", "aborted"]
    assert report.calls[-1].duration < 5  # not the command's 30 s
