"""The scoped transport builds each ``CallRecord`` through ``CallRecordDraft``: the result must be
exactly the record the dataclass's own constructor makes (every field set, equal, frozen)."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import AsyncIterator

import httpx2
import pytest

import scoped_clients.httpx2
from _collector import heap_frozen
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients._report import CallRecord, CallRecordDraft


def test_the_draft_has_the_records_slots() -> None:
    assert CallRecordDraft.__slots__ == CallRecord.__slots__
    assert [f.name for f in dataclasses.fields(CallRecord)] == list(CallRecord.__slots__)  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_records_built_by_the_transport_are_plain_call_records() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500 if request.url.path == "/fail" else 200, text="ok")

    client = scoped_clients.httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    async with client, RequestScope() as scope:
        await client.get("http://test/ok")
        await client.get("http://test/fail")
        scope.cancel("client_disconnected")
        with pytest.raises(ScopeCancelled):
            await client.get("http://test/refused")
    assert scope.report is not None
    records = scope.report.calls
    assert [r.outcome for r in records] == ["completed", "failed", "refused"]
    for record in records:
        assert type(record) is CallRecord
        fields = dataclasses.asdict(record)  # reads every field: none left unset
        rebuilt = CallRecord(**fields)
        assert rebuilt == record and repr(rebuilt) == repr(record)
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.outcome = "completed"  # type: ignore[misc]


class _Body(httpx2.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"unit\n"


@pytest.mark.anyio
async def test_a_finished_call_leaves_no_garbage_for_the_collector() -> None:
    """A settled call is freed by reference counting, as a raw call is: nothing waits for the cycle collector."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=_Body())  # a streamed body: the scoped transport wraps it

    async def garbage_of(client: httpx2.AsyncClient) -> int:
        await client.get("http://test/")  # warm
        with heap_frozen():  # the collection below counts the calls' own garbage, and scans nothing else
            gc.disable()
            try:
                for _ in range(20):
                    await client.get("http://test/")
            finally:
                gc.enable()
            return gc.collect()

    raw = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    scoped = scoped_clients.httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    async with raw, scoped, RequestScope() as scope:
        raw_garbage = await garbage_of(raw)
        scoped_garbage = await garbage_of(scoped)
    assert scope.report is not None and len(scope.report.calls) == 21
    assert scoped_garbage <= raw_garbage
