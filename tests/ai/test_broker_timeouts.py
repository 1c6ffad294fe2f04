"""A Redis that accepts connections and never answers costs one short timeout, then is
skipped (events are delivered locally) until a probe finds it answering: the circuit breaker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from atlas_gql.ai.broker import RedisBroker
from atlas_gql.ai.events import MessageDelta
from atlas_gql.circuit import CircuitBreaker, CircuitOpenError
from atlas_gql.errors import BrokerUnavailable

THREAD = uuid.uuid4()


def _delta(sequence: int) -> MessageDelta:
    return MessageDelta(sequence=sequence, thread_id=THREAD, message_id=THREAD, delta="x")


@dataclass
class SilentRedis:
    url: str
    connections: int = 0


@pytest.fixture
async def silent_redis() -> AsyncIterator[SilentRedis]:
    silent = SilentRedis(url="")
    held: set[asyncio.StreamWriter] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.connections += 1
        held.add(writer)
        await reader.read()  # never answers; returns when the client hangs up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    silent.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    yield silent
    for writer in held:
        writer.close()
    server.close()


async def test_a_hung_redis_is_skipped_after_one_timeout(silent_redis: SilentRedis) -> None:
    broker = RedisBroker(silent_redis.url, timeout=0.1)
    local = broker._fanout.add(THREAD)  # a subscriber of this worker
    try:
        await broker.publish(THREAD, _delta(1))  # queued for Redis: does not wait
        assert not broker.breaker.is_open
        await broker.flush()  # the sender waited out the timeout (and did not raise)
        assert broker.breaker.is_open
        assert broker.breaker.trips == 1
        asked = silent_redis.connections
        for sequence in range(2, 101):
            await broker.publish(THREAD, _delta(sequence))
        await broker.flush()
        # Redis was not asked again: each publish skipped it...
        assert silent_redis.connections == asked
        assert broker.breaker.skipped == 99
        assert broker.breaker.trips == 1
        # ...and delivered the event to this worker's subscribers, in order.
        received = [local.queue.get_nowait()[1] for _ in range(100)]
        assert [getattr(event, "sequence", None) for event in received] == list(range(1, 101))
        # What needs Redis says so, at once.
        with pytest.raises(BrokerUnavailable):
            await broker.publish_control({"action": "cancel", "messageId": str(THREAD)})
        with pytest.raises(BrokerUnavailable):
            await anext(broker.subscribe(uuid.uuid4()))
    finally:
        await broker.close()


async def test_a_redis_that_hangs_while_subscribing_is_broker_unavailable(
    silent_redis: SilentRedis,
) -> None:
    broker = RedisBroker(silent_redis.url, timeout=0.1)
    broker.subscribe_timeout = 0.2
    try:
        with pytest.raises(BrokerUnavailable):
            await anext(broker.subscribe(THREAD))
        assert broker.breaker.is_open
        assert THREAD not in broker._fanout.subscribers
    finally:
        await broker.close()


async def test_the_app_starts_while_redis_hangs(silent_redis: SilentRedis) -> None:
    broker = RedisBroker(silent_redis.url, timeout=0.1)
    broker.subscribe_timeout = 0.2
    try:
        await broker.start()  # does not raise: events stay local until Redis answers
        assert broker.breaker.is_open
    finally:
        await broker.close()


# -- the breaker on its own ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_one_incident_is_one_failure_and_the_pause_doubles_up_to_its_cap() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        name="dep", timeout=1, failures=(ConnectionError,), base_pause=0.5, max_pause=3,
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    assert not breaker.is_open

    async def hang() -> None:
        await asyncio.Event().wait()

    async def refuse() -> None:
        raise ConnectionRefusedError("refused")

    breaker.timeout = 0.01
    # Many calls waiting when the dependency hangs: one trip, one pause.
    results = await asyncio.gather(*[breaker.call(hang) for _ in range(5)], return_exceptions=True)
    assert all(isinstance(result, CircuitOpenError) for result in results)
    assert breaker.trips == 1
    assert breaker.retry_at == clock.now + 0.5
    with pytest.raises(CircuitOpenError):
        await breaker.call(refuse)
    assert breaker.skipped == 1

    pauses: list[float] = []
    five_failed = asyncio.Event()

    async def failing_probe() -> None:
        pauses.append(breaker.pause)
        if len(pauses) == 5:
            five_failed.set()
            await asyncio.Event().wait()
        raise ConnectionRefusedError("still down")

    prober = asyncio.create_task(breaker.run_probes(failing_probe))
    try:
        await asyncio.wait_for(five_failed.wait(), 30)  # a hang guard (the clock is fake)
    finally:
        prober.cancel()
    assert pauses == [0.5, 1, 2, 3, 3]
    assert breaker.is_open

    answered = asyncio.Event()

    async def ok() -> str:
        answered.set()
        return "pong"

    prober = asyncio.create_task(breaker.run_probes(ok))
    try:
        await asyncio.wait_for(answered.wait(), 30)
        await asyncio.sleep(0)
    finally:
        prober.cancel()
    assert not breaker.is_open
    assert await breaker.call(ok) == "pong"
    # A bug is not the dependency failing: it propagates and leaves the circuit closed.
    with pytest.raises(ZeroDivisionError):
        await breaker.call(lambda: asyncio.sleep(0, 1 / 0))
    assert not breaker.is_open
