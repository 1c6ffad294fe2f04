"""REDIS_URL set: two app instances share thread events and cancels through the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from atlas_gql.ai.broker import Event, RedisBroker
from atlas_gql.ai.events import MessageDelta, decode_event
from atlas_gql.errors import BrokerUnavailable
from tests.ai.conftest import TEST_REDIS_TIMEOUT, StartServer
from tests.ai.fake_openai import Behaviour
from tests.ai.tcp_proxy import ConfirmationDelayProxy
from tests.live import HANG_GUARD, aclose, wait_until

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def two_workers(start_ai_server: StartServer) -> tuple:  # type: ignore[type-arg]
    first = await start_ai_server(redis_url=REDIS_URL)
    second = await start_ai_server(redis_url=REDIS_URL)
    return first, second


async def test_subscriber_on_another_worker_sees_the_same_stream(two_workers: tuple) -> None:  # type: ignore[type-arg]
    first, second = two_workers
    thread_id = await first.new_thread()
    async with (
        first.client.subscribe(first.people.member, thread_id) as local,
        second.client.subscribe(second.people.manager, thread_id) as remote,
    ):
        body = await first.send(thread_id, "Across workers")
        assert "errors" not in body, body
        local_events = await local.until_final()
        remote_events = await remote.until_final()
    assert remote_events == local_events
    assert remote_events[-1]["__typename"] == "MessageCompleted"
    deltas = "".join(e["delta"] for e in remote_events if e["__typename"] == "MessageDelta")
    assert deltas == remote_events[-1]["message"]["content"]

    # A late subscriber on the other worker replays the kept events from Redis.
    async with second.client.subscribe(second.people.member, thread_id, after_sequence=0) as late:
        replayed = await late.until_final()
    assert replayed == local_events


async def test_cancel_through_another_worker(two_workers: tuple) -> None:  # type: ignore[type-arg]
    first, second = two_workers
    # The upstream sends one delta, then holds: the cancel must not wait for its end.
    first.fake.delta_permits = asyncio.Semaphore(1)
    first.fake.then(Behaviour(deltas=tuple(f"r{i} " for i in range(200))))
    thread_id = await first.new_thread()
    async with second.client.subscribe(second.people.member, thread_id) as subscription:
        payload = (await first.send(thread_id))["data"]["sendMessage"]
        while (await subscription.event())["__typename"] != "MessageDelta":
            pass
        body = await second.client.gql(
            "mutation($id: ID!) { cancelMessage(id: $id) { status content } }",
            {"id": payload["assistantMessage"]["id"]},
            token=second.people.manager,
        )
        events = await subscription.until_final()
    assert "errors" not in body, body
    assert body["data"]["cancelMessage"]["status"] == "CANCELLED"
    assert body["data"]["cancelMessage"]["content"] == "r0 "
    assert events[-1]["__typename"] == "MessageCancelled"
    assert events[-1]["message"]["status"] == "CANCELLED"
    assert body["data"]["cancelMessage"]["content"] == events[-1]["message"]["content"]
    # The worker running the reply closed its upstream stream (it did not run to its end).
    await wait_until(lambda: first.fake.open_streams == 0)
    assert first.fake.closed_early == 1


async def _receives(broker: RedisBroker, thread: uuid.UUID, sequence: int) -> bool:
    """Whether a new subscriber gets an event published after it subscribed."""
    stream = broker.subscribe(thread, after_sequence=None)
    before = broker.listeners.total(thread)
    first = asyncio.ensure_future(anext(stream))
    try:
        try:  # subscribed (confirmed by Redis) before publishing; the timeout is a hang guard
            async with asyncio.timeout(30):
                await broker.listeners.wait_total(thread, before + 1)
        except TimeoutError:
            return False
        await broker.publish(
            thread, MessageDelta(sequence=sequence, thread_id=thread, message_id=thread, delta="x")
        )
        try:
            event = await asyncio.wait_for(first, 30)
        except TimeoutError:
            return False
        return bool(event.sequence == sequence)
    finally:
        first.cancel()
        with contextlib.suppress(BaseException):
            await first
        await aclose(stream)


@pytest.mark.parametrize("fault", ["error", "timeout"])
async def test_a_failed_subscribe_leaves_nothing_behind(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RedisBroker(REDIS_URL, timeout=TEST_REDIS_TIMEOUT)
    await broker.start()
    try:
        thread = uuid.uuid4()
        channel = broker.channel(thread)

        async def refused(*channels: str) -> None:
            if fault == "error":
                raise RedisConnectionError("Redis went away")
            # "timeout": sent, but Redis never confirms.

        monkeypatch.setattr(broker._pubsub, "subscribe", refused)
        broker.subscribe_timeout = 0.2
        failing = broker.subscribe(thread)
        # Said as such (not as a database or server error), whatever Redis did.
        with pytest.raises(BrokerUnavailable):
            await anext(failing)
        assert thread not in broker._fanout.subscribers
        assert channel not in broker._confirmed
        monkeypatch.undo()

        # Redis is skipped until a probe finds it answering; then the thread's next
        # subscriber here subscribes again and gets events.
        assert broker.breaker.is_open
        with pytest.raises(BrokerUnavailable):
            await anext(broker.subscribe(thread))
        await wait_until(lambda: not broker.breaker.is_open)
        assert await _receives(broker, thread, 1)
    finally:
        await broker.close()


async def test_a_late_subscribe_confirmation_is_waited_for_while_redis_answers() -> None:
    """A confirmation later than the subscribe timeout (this worker's listener is busy; here
    it is held in a control handler) is not BROKER_UNAVAILABLE while Redis answers a PING:
    the subscriber waits again, and gets its events once the confirmation is read."""
    broker = RedisBroker(REDIS_URL, timeout=TEST_REDIS_TIMEOUT, subscribe_timeout=0.05)
    # Enough rounds for any machine: the test releases the listener once one ran out.
    broker.subscribe_attempts = 100_000
    held = asyncio.Event()
    release = asyncio.Event()

    async def busy(message: dict[str, object]) -> None:
        held.set()
        await release.wait()

    broker.set_control_handler(busy)
    await broker.start()
    thread = uuid.uuid4()
    stream = broker.subscribe(thread, after_sequence=None)
    first: asyncio.Future[Event] | None = None
    try:
        # The listener is held first; then the SUBSCRIBE's confirmation waits behind it.
        await broker.publish_control({"action": "hold"})
        async with asyncio.timeout(30):
            await held.wait()
        first = asyncio.ensure_future(anext(stream))
        subscribing = asyncio.ensure_future(broker.listeners.wait_total(thread, 1))
        await wait_until(lambda: broker.late_confirmations >= 1, timeout=30)
        assert not subscribing.done()  # not in place: its confirmation was not read yet
        assert not first.done()  # and not refused either
        release.set()
        async with asyncio.timeout(30):
            await subscribing
        await broker.publish(
            thread, MessageDelta(sequence=1, thread_id=thread, message_id=thread, delta="x")
        )
        async with asyncio.timeout(30):
            event = await first
        assert event.sequence == 1
        assert not broker.breaker.is_open
    finally:
        release.set()
        if first is not None:
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
        await aclose(stream)
        await broker.close()


async def test_a_late_confirmation_holds_up_its_own_thread_only() -> None:
    """Redis confirms one thread's SUBSCRIBE late (a proxy holds that confirmation back):
    the subscriptions of other threads on this worker are in place meanwhile, a second
    subscriber of that thread waits for it too, and both get events once it comes."""
    proxy = ConfirmationDelayProxy("127.0.0.1", 6379)
    await proxy.start()
    # Rounds far longer than the test's hang guard: a subscription that waited behind the
    # late one would not be in place within it.
    broker = RedisBroker(proxy.url, timeout=TEST_REDIS_TIMEOUT, subscribe_timeout=HANG_GUARD)
    await broker.start()
    slow, quick = uuid.uuid4(), uuid.uuid4()
    proxy.hold(broker.channel(slow))
    streams = [broker.subscribe(slow), broker.subscribe(slow), broker.subscribe(quick)]
    firsts = [asyncio.ensure_future(anext(stream)) for stream in streams]
    try:
        async with asyncio.timeout(HANG_GUARD):
            await proxy.holding.wait()
            await broker.listeners.wait_total(quick, 1)
        await broker.publish(
            quick, MessageDelta(sequence=1, thread_id=quick, message_id=quick, delta="x")
        )
        async with asyncio.timeout(HANG_GUARD):
            assert (await firsts[2]).sequence == 1
        # The late thread's subscribers are neither in place nor refused.
        assert broker.listeners.total(slow) == 0
        assert not firsts[0].done()
        assert not firsts[1].done()
        proxy.release()
        async with asyncio.timeout(HANG_GUARD):
            await broker.listeners.wait_total(slow, 2)
        await broker.publish(
            slow, MessageDelta(sequence=7, thread_id=slow, message_id=slow, delta="x")
        )
        async with asyncio.timeout(HANG_GUARD):
            assert [(await first).sequence for first in firsts[:2]] == [7, 7]
        assert not broker.breaker.is_open
    finally:
        proxy.release()
        for first in firsts:
            first.cancel()
        # Bounded: a subscription stuck behind the lock (the failure this test catches) must
        # not hang the teardown.
        await asyncio.wait(firsts, timeout=HANG_GUARD)
        for stream in streams:
            with contextlib.suppress(RuntimeError):  # still running: left to the loop's end
                await aclose(stream)
        await broker.close()
        await proxy.stop()


async def test_events_queued_for_redis_go_in_order_in_shared_round_trips() -> None:
    publisher, other = RedisBroker(REDIS_URL), RedisBroker(REDIS_URL)
    threads = [uuid.uuid4(), uuid.uuid4()]
    await publisher.start()
    await other.start()
    remote = other.subscribe(threads[0], after_sequence=None)
    before = other.listeners.total(threads[0])
    received = asyncio.ensure_future(anext(remote))
    try:
        async with asyncio.timeout(10):
            await other.listeners.wait_total(threads[0], before + 1)
        sent: list[tuple[uuid.UUID, str]] = []
        original_send = publisher._send

        async def send(batch: list[tuple[uuid.UUID, str]]) -> None:
            sent.extend(batch)
            batches.append(len(batch))
            await original_send(batch)

        batches: list[int] = []
        publisher._send = send  # type: ignore[method-assign]
        # Published back to back (no wait on Redis in between): one round trip carries them.
        # (Each of another message: consecutive deltas of one would reach a subscriber that
        # is behind merged.)
        for sequence in range(1, 41):
            await publisher.publish(
                threads[sequence % 2],
                MessageDelta(
                    sequence=sequence,
                    thread_id=threads[sequence % 2],
                    message_id=uuid.uuid4(),
                    delta=f"d{sequence}",
                ),
            )
        # A subscriber of the publishing worker replaying right away finds them all (it waits
        # for the queue to be sent before it reads the list).
        local = publisher.subscribe(threads[1], after_sequence=0)
        async with asyncio.timeout(10):
            replayed = [(await anext(local)).sequence for _ in range(20)]
        await aclose(local)
        assert replayed == list(range(1, 41, 2))
        assert batches == [40]
        assert [data for _, data in sent] == [
            data for _, data in sorted(sent, key=lambda item: decode_sequence(item[1]))
        ]
        # The other worker got them live, in order.
        async with asyncio.timeout(10):
            seen = [(await received).sequence]
            while len(seen) < 20:
                seen.append((await anext(remote)).sequence)
        assert seen == list(range(2, 41, 2))
    finally:
        received.cancel()
        with contextlib.suppress(BaseException):
            await received
        await aclose(remote)
        for thread in threads:
            await publisher._redis.delete(publisher.history_key(thread))
        await publisher.close()
        await other.close()


def decode_sequence(data: str) -> int:
    return int(decode_event(data).sequence)


async def test_a_batch_that_fails_unexpectedly_leaves_the_sender_running() -> None:
    """An error other than Redis's own in a batch is logged; the sender goes on, `flush`
    returns, and the next events reach Redis."""
    broker = RedisBroker(REDIS_URL)
    thread = uuid.uuid4()
    await broker.start()
    original_send = broker._send
    failures = 0

    async def send(batch: list[tuple[uuid.UUID, str]]) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bug in a batch")
        await original_send(batch)

    broker._send = send  # type: ignore[method-assign]
    try:
        await broker.publish(
            thread, MessageDelta(sequence=1, thread_id=thread, message_id=thread, delta="a")
        )
        async with asyncio.timeout(30):
            await broker.flush()
        await broker.publish(
            thread, MessageDelta(sequence=2, thread_id=thread, message_id=thread, delta="b")
        )
        async with asyncio.timeout(30):
            await broker.flush()
        kept = await broker._redis.lrange(broker.history_key(thread), 0, -1)
        assert [
            decode_sequence(raw.decode() if isinstance(raw, bytes) else raw) for raw in kept
        ] == [2]
        assert failures == 1
    finally:
        await broker._redis.delete(broker.history_key(thread))
        await broker.close()
