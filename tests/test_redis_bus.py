"""RedisCancelBus against a real redis-server, measured at the embedded provider.

Other processes are real processes: a ``python -c`` that publishes a cancel, two
uvicorn replicas sharing one Redis.  "Redis went away" is a SIGKILL of the
server, then a start on the same port.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from _helpers import cancel_sync_call, chat_app, held_open, wait
from _redis import RedisServer, free_port
from scoped_clients import RequestScope, ScopeCancelled
from scoped_clients.openai import AsyncOpenAI, OpenAI
from scoped_clients.provider import LocalProvider, RequestLog

redis = pytest.importorskip("redis", reason='the Redis bus needs redis-py: pip install "scoped-clients[redis]"')
from scoped_clients.redis import RedisCancelBus  # noqa: E402

MESSAGES: Any = [{"role": "user", "content": "tell me a long story"}]
TESTS = Path(__file__).parent
FAST_RECONNECT = (0.01, 0.1)

#: another process: connect, print time.monotonic() (the same clock as ours on Linux), cancel
PUBLISHER = """
import sys, time
from scoped_clients.redis import RedisCancelBus
bus = RedisCancelBus.from_url(sys.argv[1])
assert bus.wait_connected(10), "the publisher could not reach Redis"
print(time.monotonic(), flush=True)
print(bus.cancel_sync(sys.argv[2], "user_stopped", "from another process"), flush=True)
bus.close()
"""


def publish_from_another_process(url: str, scope_id: str) -> tuple[float, int]:
    """Cancel ``scope_id`` from a fresh Python process; returns (when it cancelled, how many it cancelled there)."""
    done = subprocess.run(
        [sys.executable, "-c", PUBLISHER, url, scope_id], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    t_cancel, count = done.stdout.split()
    return float(t_cancel), int(count)


@pytest.fixture
def bus(redis_url: str) -> Iterator[RedisCancelBus]:
    with RedisCancelBus.from_url(redis_url, reconnect_delay=FAST_RECONNECT) as b:
        assert b.wait_connected(10)
        yield b


@pytest.fixture
def provider(provider: LocalProvider) -> LocalProvider:
    """A token every 50 ms: a cancel crosses processes and Redis, so "at most one token in flight
    after the cancel" gets a margin a loaded machine keeps (the latency itself is benchmarked)."""
    provider.token_interval = 0.05
    return provider


async def stream_until_cancelled(llm: AsyncOpenAI, scope: RequestScope) -> None:
    async with scope:
        chunks = await llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)
        async for _ in chunks:
            pass
    assert scope.cancelled, "the stream ran to its end: the cancel never came"


async def busy_request(provider: LocalProvider, units: int = 3) -> RequestLog:
    (log,) = await wait(provider.wait_for_requests, 1)
    await wait(log.wait_units, units)
    return log


Cancel = Callable[[RequestScope], Awaitable[float]]


async def cancel_a_stream(provider: LocalProvider, llm: AsyncOpenAI, scope: RequestScope, cancel: Cancel) -> None:
    """Stream under ``scope`` and, once the provider has produced 3 units, ``await cancel(scope)`` (it
    returns when it sent the cancel): the provider sees the client go after that, with at most the
    one unit already in flight produced after it."""
    sent: list[tuple[RequestLog, float]] = []

    async def cancel_when_busy() -> None:
        log = await busy_request(provider)
        sent.append((log, await cancel(scope)))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_busy)
            await stream_until_cancelled(llm, scope)
    ((log, t_cancel),) = sent
    seen = await wait(log.wait_disconnect)
    assert seen >= t_cancel and log.units_after(t_cancel) <= 1


def cancel_here(bus: RedisCancelBus) -> Cancel:
    """A cancel in this process: ``bus.cancel`` cancels the one scope at once."""

    async def cancel(scope: RequestScope) -> float:
        t_cancel = time.monotonic()
        assert await bus.cancel(scope.id, "user_stopped") == 1
        return t_cancel

    return cancel


def cancel_elsewhere(redis_url: str) -> Cancel:
    """A cancel published by another process (``publish_from_another_process``)."""

    async def cancel(scope: RequestScope) -> float:
        t_cancel, there = await anyio.to_thread.run_sync(publish_from_another_process, redis_url, scope.id)
        assert there == 0  # the publisher runs no scope with that id
        return t_cancel

    return cancel


# ------------------------------------------------------------------ across processes


@pytest.mark.anyio
async def test_a_cancel_from_another_process_stops_a_stream_here(
    bus: RedisCancelBus, redis_url: str, provider: LocalProvider, llm: AsyncOpenAI
) -> None:
    scope = RequestScope("chat", bus=bus)
    await cancel_a_stream(provider, llm, scope, cancel_elsewhere(redis_url))
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "user_stopped"
    assert scope.cancel_reason.message == "from another process"
    assert [c.outcome for c in scope.report.calls] == ["aborted"]
    assert len(provider.requests) == 1


def test_a_sync_scope_in_a_thread_is_cancelled_through_the_bus(
    bus: RedisCancelBus, redis_url: str, provider: LocalProvider
) -> None:
    scope = RequestScope("sync-job", bus=bus)
    with OpenAI(base_url=provider.url + "/v1", api_key="test") as llm:
        result = cancel_sync_call(
            provider,
            lambda: list(llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True)),
            units=3,
            scope=scope,
            cancel=lambda scope: publish_from_another_process(redis_url, scope.id)[0],
        )
    assert not result.thread_alive
    assert result.seen >= result.t_cancel and result.log.units_after(result.t_cancel) <= 1
    assert [type(e) for e in result.errors] == [ScopeCancelled]
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "user_stopped"


@pytest.mark.anyio
async def test_one_subscription_per_process_whatever_the_number_of_scopes(redis_url: str) -> None:
    channel = f"test-{uuid.uuid4().hex}"  # no other test's bus listens on it
    client = redis.Redis.from_url(redis_url)
    try:
        async with RedisCancelBus.from_url(redis_url, channel=channel) as bus:
            await one_subscription(bus, client, channel)
    finally:
        client.close()


async def one_subscription(bus: RedisCancelBus, client: Any, channel: str) -> None:
    scopes = [RequestScope(bus=bus) for _ in range(50)]
    async with held_open(scopes):
        assert await anyio.to_thread.run_sync(bus.wait_connected, 10)
        ((_, subscribers),) = client.pubsub_numsub(channel)
        assert subscribers == 1
        for scope in scopes:
            assert await bus.cancel(scope.id, "done") == 1
    assert all(s.cancelled for s in scopes)


# ----------------------------------------------------------------- before open, after end


@pytest.mark.anyio
async def test_a_cancel_that_arrives_before_the_scope_opens_is_applied_when_it_does(
    bus: RedisCancelBus, redis_url: str, provider: LocalProvider, llm: AsyncOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = threading.Event()
    on_message = bus._on_message

    def spy(data: bytes | str) -> None:
        on_message(data)
        received.set()

    monkeypatch.setattr(bus, "_on_message", spy)
    # Published by another process while this one listens: kept here, applied with no round trip at open.
    await anyio.to_thread.run_sync(publish_from_another_process, redis_url, "job-7")
    assert await anyio.to_thread.run_sync(received.wait, 10)
    scope = RequestScope("late", id="job-7", bus=bus)
    async with scope:
        assert scope.cancelled  # at once, on entry
        with pytest.raises(ScopeCancelled):
            await llm.chat.completions.create(model="local-10", messages=MESSAGES)
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "user_stopped"
    assert provider.requests == []  # the upstream call never started


@pytest.mark.anyio
async def test_a_process_that_was_not_listening_applies_a_cancel_when_the_scope_opens(
    redis_url: str, provider: LocalProvider
) -> None:
    await anyio.to_thread.run_sync(publish_from_another_process, redis_url, "queued-job")
    # A process that starts after the cancel was published (a worker that picks the job up).
    async with RedisCancelBus.from_url(redis_url, reconnect_delay=FAST_RECONNECT) as late_bus:
        scope = RequestScope("job", id="queued-job", bus=late_bus)
        with anyio.fail_after(10):
            async with scope:
                await anyio.sleep(60)  # stopped by the cancel found in Redis
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "user_stopped"


@pytest.mark.anyio
async def test_a_cancel_after_the_scope_ended_is_a_no_op(bus: RedisCancelBus, redis_url: str) -> None:
    scope = RequestScope("done", bus=bus)
    async with scope:
        pass
    before = scope.report
    assert await bus.cancel(scope.id, "too_late") == 0
    _, there = await anyio.to_thread.run_sync(publish_from_another_process, redis_url, scope.id)
    assert there == 0
    assert not scope.cancelled and scope.cancel_reason is None
    assert scope.report is before and before.outcome == "completed"
    assert scope.id not in bus._pending  # not kept to hit a later scope in this process
    async with RequestScope("other", bus=bus) as other:
        pass
    assert not other.cancelled


# ---------------------------------------------------------------------- two replicas


REPLICA = """
import sys
sys.path.insert(0, sys.argv[4])
from test_redis_bus import run_replica
run_replica(int(sys.argv[1]), sys.argv[2], sys.argv[3])
"""


def run_replica(port: int, redis_url: str, provider_url: str) -> None:
    """One replica: ``_helpers.chat_app`` on uvicorn, in its own process."""
    import uvicorn

    bus = RedisCancelBus.from_url(redis_url)
    assert bus.wait_connected(10)
    uvicorn.run(chat_app(provider_url, bus), host="127.0.0.1", port=port, log_level="error")
    bus.close()


class Replica:
    def __init__(self, redis_url: str, provider_url: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", REPLICA, str(self.port), redis_url, provider_url, str(TESTS)],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:  # a process that is starting: no event to wait on
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the replica did not start")
            time.sleep(0.02)

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode()


@pytest.fixture
def replicas(redis_url: str, provider: LocalProvider) -> Iterator[tuple[Replica, Replica]]:
    first = Replica(redis_url, provider.url)
    try:
        second = Replica(redis_url, provider.url)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        errors = first.stop() + second.stop()
        assert "Traceback" not in errors, errors


def test_a_cancel_on_replica_2_stops_the_stream_on_replica_1(
    replicas: tuple[Replica, Replica], provider: LocalProvider
) -> None:
    first, second = replicas
    import httpx

    with httpx.Client(timeout=30) as http:
        with http.stream("GET", f"http://127.0.0.1:{first.port}/chat") as response:
            scope_id = response.headers["x-request-id"]
            assert len(scope_id) == 32  # unguessable: 128 random bits, as hex
            chunks = response.iter_text()
            next(chunks)
            log = provider.requests[0]
            log.wait_units(3)
            t_cancel = time.monotonic()
            answer = http.post(f"http://127.0.0.1:{second.port}/cancel/{scope_id}")
            t_answered = time.monotonic()
            seen = log.wait_disconnect()
            rest = ""
            with contextlib.suppress(httpx.RemoteProtocolError):  # cut short, without its last chunk
                for text in chunks:  # the stream on replica 1 ends
                    rest += text
        assert answer.status_code == 200 and answer.json() == {"cancelled_here": 0, "published": True}
    assert seen >= t_cancel
    assert log.units_after(t_answered) <= 1  # once replica 2 answered, at most a token in flight
    assert log.completed_at is None and len(log.units) < 100
    assert len(rest) < 1000
    assert len(provider.requests) == 1


# --------------------------------------------------------------- Redis goes away


@pytest.mark.anyio
async def test_redis_killed_and_restarted(
    provider: LocalProvider, llm: AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="scoped_clients.redis")
    with RedisServer() as server:
        bus = RedisCancelBus.from_url(server.url, reconnect_delay=FAST_RECONNECT)
        assert await anyio.to_thread.run_sync(bus.wait_connected, 10)
        server.stop()  # SIGKILL

        # While Redis is down: a request runs to its end without an error ...
        async with RequestScope("while-down", bus=bus) as quiet:
            completion = await llm.chat.completions.create(model="local-5", messages=MESSAGES)
        assert completion.choices[0].message.content and not quiet.cancelled
        # ... and a local cancel stops a stream at once; it is queued for the other processes.
        scope = RequestScope("chat", bus=bus)
        provider.reset()
        await cancel_a_stream(provider, llm, scope, cancel_here(bus))
        assert not bus.connected

        # Redis is back: the bus reconnects by itself and a cross-process cancel works again.
        server.start()
        assert await anyio.to_thread.run_sync(bus.wait_connected, 10)
        # The cancel that could not be published was sent on reconnect: a process that opens that id sees it.
        async with RedisCancelBus.from_url(server.url) as other_process:
            async with RequestScope(id=scope.id, bus=other_process) as again:
                with anyio.fail_after(10):
                    await anyio.sleep(60)
            assert again.cancelled
        provider.reset()
        await cancel_a_stream(provider, llm, RequestScope("chat-again", bus=bus), cancel_elsewhere(server.url))
        await bus.aclose()

    messages = [r.getMessage() for r in caplog.records if r.name == "scoped_clients.redis"]
    assert len([m for m in messages if "cannot reach Redis" in m]) == 1, messages  # logged once, not per retry
    assert len([m for m in messages if "reconnected" in m]) == 1, messages


# ------------------------------------------------------------------ one process, forked


def _child(provider_url: str, conn: Any, bus: RedisCancelBus) -> None:
    with (
        OpenAI(base_url=provider_url + "/v1", api_key="test") as llm,
        RequestScope("job", id="forked", bus=bus) as scope,
    ):
        try:
            for _ in llm.chat.completions.create(model="local-1000", messages=MESSAGES, stream=True):
                pass
        except ScopeCancelled:
            pass
    conn.send(scope.cancel_reason.code if scope.cancel_reason else "not cancelled")


def test_a_forked_child_has_its_own_subscription(bus: RedisCancelBus, redis_url: str, provider: LocalProvider) -> None:
    """Celery's prefork pool forks a parent whose bus thread is running: the child starts its own."""
    with RequestScope(bus=bus):
        pass  # the parent's bus thread runs
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_child, args=(provider.url, child_end, bus))
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a process with threads may deadlock: Celery's prefork pool
        # does exactly that, which is what this test is about.
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    try:
        (log,) = provider.wait_for_requests(1, 30)
        log.wait_units(3)
        t_cancel, there = publish_from_another_process(redis_url, "forked")
        seen = log.wait_disconnect()
        assert parent_end.poll(30)
        assert parent_end.recv() == "user_stopped"
    finally:
        child.join(10)
        parent_end.close()
        child_end.close()
    assert child.exitcode == 0
    assert there == 0 and seen >= t_cancel and log.units_after(t_cancel) <= 1
    assert bus.scopes("forked") == []  # the parent never saw the child's scope


# ----------------------------------------------------------------------- the API


def test_from_url_errors_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match="Redis URL"):
        RedisCancelBus.from_url("")
    with pytest.raises(ValueError, match="redis://"):
        RedisCancelBus.from_url("http://example.com")
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis.*from_url"):
        RedisCancelBus(redis.Redis())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pending_ttl"):
        RedisCancelBus.from_url("redis://127.0.0.1:1/0", pending_ttl=-1)
    with pytest.raises(ValueError, match="reconnect_delay"):
        RedisCancelBus.from_url("redis://127.0.0.1:1/0", reconnect_delay=(2.0, 1.0))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a redis.asyncio client needs an asyncio loop
async def test_a_ready_asyncio_client_is_copied_not_used(redis_url: str) -> None:
    import redis.asyncio

    mine = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with RedisCancelBus(mine) as b:
            scope = RequestScope(bus=b)
            assert await anyio.to_thread.run_sync(b.wait_connected, 10)
            _, _ = await anyio.to_thread.run_sync(publish_from_another_process, redis_url, scope.id)
            with anyio.fail_after(10):
                async with scope:
                    await anyio.sleep(60)
            assert scope.cancelled
    finally:
        await mine.aclose()


def test_without_redis_py_the_error_says_what_to_install() -> None:
    code = "import sys; sys.modules['redis'] = None; import scoped_clients.redis"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert 'pip install "scoped-clients[redis]"' in done.stderr


def test_a_closed_bus_still_cancels_locally(redis_url: str) -> None:
    b = RedisCancelBus.from_url(redis_url)
    b.close()
    with RequestScope(bus=b) as scope:
        assert b.cancel_sync(scope.id, "stop") == 1
    assert scope.cancel_reason is not None and scope.cancel_reason.code == "stop"
    assert "closed" in repr(b)


class _Logged(logging.Handler):
    """Sets an event when a record containing ``text`` is logged (from any thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_redis_that_stops_answering_is_noticed_and_left(
    monkeypatch: pytest.MonkeyPatch, provider: LocalProvider
) -> None:
    """A Redis that hangs (SIGSTOP: no FIN, no RST, like a network partition) is noticed by PING."""
    import scoped_clients.redis as module

    monkeypatch.setattr(module, "_PING_INTERVAL", 0.2)
    lost, back = _Logged("cannot reach Redis"), _Logged("reconnected")
    log = logging.getLogger("scoped_clients.redis")
    log.addHandler(lost)
    log.addHandler(back)
    try:
        with RedisServer() as server, RedisCancelBus.from_url(server.url, reconnect_delay=FAST_RECONNECT) as b:
            assert b.wait_connected(10)
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                assert lost.event.wait(10)
                assert not b.connected
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert back.event.wait(30) and b.wait_connected(10)
            scope = RequestScope("after", bus=b)
            publish_from_another_process(server.url, scope.id)
            with scope:  # the message, or the key in Redis, reaches it
                fired = threading.Event()
                scope.on_cancel(fired.set)
                assert scope.cancelled or fired.wait(10)
            assert scope.cancel_reason is not None and scope.cancel_reason.code == "user_stopped"
    finally:
        log.removeHandler(lost)
        log.removeHandler(back)


@pytest.mark.anyio
async def test_a_redis_that_is_not_there_leaves_local_cancels_working(
    provider: LocalProvider, llm: AsyncOpenAI
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with RedisCancelBus.from_url(url, reconnect_delay=FAST_RECONNECT) as nowhere:
        async with RequestScope("request", bus=nowhere) as quiet:  # joins without an error
            completion = await llm.chat.completions.create(model="local-3", messages=MESSAGES)
        assert completion.choices[0].message.content and not quiet.cancelled
        provider.reset()  # a local cancel stops a stream at once (nowhere.cancel() raises no error: it is queued)
        await cancel_a_stream(provider, llm, RequestScope("chat", bus=nowhere), cancel_here(nowhere))
        assert not nowhere.connected


def _mget_calls(client: Any) -> int:
    return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


@pytest.mark.anyio
async def test_opening_scopes_are_looked_up_in_batches_not_one_round_trip_each(redis_url: str) -> None:
    ids = [f"batch-{i}" for i in range(200)]
    # Cancelled by another process before this one listened: only the lookup can find it.
    await anyio.to_thread.run_sync(publish_from_another_process, redis_url, ids[-1])
    client = redis.Redis.from_url(redis_url)
    try:
        async with RedisCancelBus.from_url(redis_url) as b:
            assert await anyio.to_thread.run_sync(b.wait_connected, 10)
            before = _mget_calls(client)
            scopes = [RequestScope(id=i, bus=b) for i in ids]
            last_cancelled = anyio.Event()

            async def hold(scope: RequestScope) -> None:
                async with scope:
                    await last_cancelled.wait()

            async def last(scope: RequestScope) -> None:
                async with scope:
                    await anyio.sleep(60)  # stopped by the cancel the lookup finds
                last_cancelled.set()  # its batch was looked up: every earlier one too (in order)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for scope in scopes[:-1]:
                        tg.start_soon(hold, scope)
                    tg.start_soon(last, scopes[-1])
            lookups = _mget_calls(client) - before
    finally:
        client.close()
    assert scopes[-1].cancel_reason is not None and scopes[-1].cancel_reason.code == "user_stopped"
    assert not any(s.cancelled for s in scopes[:-1])
    assert 1 <= lookups <= 20, lookups  # 200 scopes opened together: a few MGETs, not 200
