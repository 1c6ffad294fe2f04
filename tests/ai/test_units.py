"""Pure logic: prices, and the memory broker's ordering, replay and catch-up merging."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from atlas_gql.ai.broker import (
    DISPATCH_BEHIND,
    MERGE_AFTER,
    MERGE_BACKLOG,
    MERGE_SPAN,
    Event,
    MemoryBroker,
    SubscriptionControl,
)
from atlas_gql.ai.events import (
    MessageCompleted,
    MessageCreated,
    MessageDelta,
    MessagePayload,
    ThreadEvent,
    decode_event,
    delta_event,
    encode_event,
)
from atlas_gql.ai.models import MessageRole, MessageStatus
from atlas_gql.ai.pricing import allowed_models, cost_usd
from atlas_gql.config import Settings
from tests.live import HANG_GUARD, aclose

THREAD = uuid.uuid4()


def test_cost_is_exact_decimal() -> None:
    settings = Settings(_env_file=None)
    # gpt-4o-mini: $0.15 / 1M input, $0.60 / 1M output.
    assert cost_usd(settings, model="gpt-4o-mini", input_tokens=1000, output_tokens=500) == (
        Decimal("0.000450")
    )
    # A dated snapshot costs what its family costs; an unknown model costs 0.
    assert cost_usd(
        settings, model="gpt-4o-mini-2024-07-18", input_tokens=1_000_000, output_tokens=0
    ) == Decimal("0.150000")
    assert cost_usd(settings, model="mystery", input_tokens=10, output_tokens=10) == 0


@pytest.mark.parametrize(
    "text", ["", "hello", 'é\n"quoted"', "\ufffd"], ids=["empty", "ascii", "escapes", "fffd"]
)
def test_a_delta_event_is_the_model_pydantic_would_build(text: str) -> None:
    message_id = uuid.uuid4()
    fast = delta_event(7, thread_id=THREAD, message_id=message_id, delta=text)
    built = MessageDelta(sequence=7, thread_id=THREAD, message_id=message_id, delta=text)
    assert fast == built
    assert hash(fast) == hash(built)
    assert fast.model_fields_set == {"sequence", "thread_id", "message_id", "delta"}
    assert encode_event(fast) == encode_event(built)
    assert decode_event(encode_event(fast)) == fast
    assert fast.model_copy(update={"delta": "x"}).delta == "x"
    with pytest.raises(ValueError, match="frozen"):
        fast.delta = "changed"  # type: ignore[misc]


def test_prices_and_models_follow_settings() -> None:
    settings = Settings(
        _env_file=None,
        atlas_model_prices={"local-llama": (1, 2)},
        atlas_allowed_models=["local-llama", "gpt-4o"],
    )
    assert cost_usd(settings, model="local-llama", input_tokens=500_000, output_tokens=500_000) == (
        Decimal("1.500000")
    )
    assert allowed_models(settings) == ["local-llama", "gpt-4o"]
    assert "gpt-4o-mini" in allowed_models(Settings(_env_file=None))


def message_id(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, name)


def _delta(sequence: int, text: str, message: str = "m1") -> MessageDelta:
    return MessageDelta(
        sequence=sequence, thread_id=THREAD, message_id=message_id(message), delta=text
    )


def _payload(message: str, content: str = "", role: MessageRole = MessageRole.ASSISTANT) -> Any:
    return MessagePayload(
        id=message_id(message), thread_id=THREAD, role=role, content=content,
        status=MessageStatus.COMPLETED, created_at="2026-01-01T00:00:00Z",
    )  # fmt: skip


def _completed(sequence: int, message: str = "m1", content: str = "") -> MessageCompleted:
    return MessageCompleted(
        sequence=sequence, thread_id=THREAD, message_id=message_id(message),
        message=_payload(message, content),
    )  # fmt: skip


async def _take(stream: Any, count: int) -> list[ThreadEvent]:
    return [await asyncio.wait_for(anext(stream), HANG_GUARD) for _ in range(count)]


async def test_live_events_in_order_without_duplicates() -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    for sequence in (1, 2):
        await broker.publish(thread, _delta(sequence, f"old{sequence}"))
    stream = broker.subscribe(thread, after_sequence=1)
    first = await _take(stream, 1)
    assert first == [_delta(2, "old2")]
    await broker.publish(thread, _delta(2, "again"))  # a duplicate number is dropped
    await broker.publish(thread, _delta(3, "new"))
    assert await _take(stream, 1) == [_delta(3, "new")]
    await aclose(stream)


async def test_a_subscriber_far_behind_gets_merged_deltas() -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    count = MERGE_BACKLOG * 3
    for sequence in range(1, count + 1):
        await broker.publish(thread, _delta(sequence, f"{sequence},"))
    # (The final event of another message: a message's own would drop its kept deltas.)
    await broker.publish(thread, _completed(count + 1, "another"))
    stream = broker.subscribe(thread, after_sequence=0)
    events: list[ThreadEvent] = []
    while not events or not isinstance(events[-1], MessageCompleted):
        events += await _take(stream, 1)
    await aclose(stream)
    deltas = [event for event in events if isinstance(event, MessageDelta)]
    assert len(deltas) < count
    assert "".join(event.delta for event in deltas) == "".join(f"{n}," for n in range(1, count + 1))
    sequences = [event.sequence for event in events]
    assert sequences == sorted(set(sequences))
    assert sequences[-1] == count + 1


@pytest.mark.parametrize("after", [None, 0])
async def test_a_subscriber_keeping_up_gets_every_delta(after: int | None) -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    stream = broker.subscribe(thread, after_sequence=after)
    received = asyncio.ensure_future(_take(stream, 5))
    await broker.listeners.wait_total(thread, 1)  # registered when its iteration starts
    for sequence in range(1, 6):
        await broker.publish(thread, _delta(sequence, "x"))
        await asyncio.sleep(0)
    assert [event.sequence for event in await received] == [1, 2, 3, 4, 5]
    await aclose(stream)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CostedWrites:
    """A subscription's direct writer of deltas, each write costing `cost` seconds of the
    fake clock (as the fan-out measures it); what it wrote, in order."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cost = 0.0
        self.written: list[MessageDelta] = []

    def __call__(self, event: ThreadEvent) -> bool:
        self.clock.now += self.cost
        if isinstance(event, MessageDelta):
            self.written.append(event)
            return True
        return False


async def _idle_reader(
    broker: MemoryBroker, thread: uuid.UUID, direct: Callable[[ThreadEvent], bool]
) -> tuple[AsyncIterator[Event], asyncio.Future[list[ThreadEvent]]]:
    """A live subscription writing through `direct`, its reader idle at its queue, taking its
    next (final) event."""
    stream = broker.subscribe(thread, control=SubscriptionControl(direct=direct))
    reading = asyncio.ensure_future(_take(stream, 1))
    await broker.listeners.wait_total(thread, 1)
    await asyncio.sleep(0)  # the reader reaches its queue (one step, no timing)
    return stream, reading


@pytest.mark.parametrize("late", [True, False], ids=["late", "in-time"])
async def test_deltas_that_waited_too_long_are_merged_numbered_as_the_last(late: bool) -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    thread = uuid.uuid4()
    stream = broker.subscribe(thread)
    first = asyncio.ensure_future(_take(stream, 1))
    await broker.listeners.wait_total(thread, 1)
    await broker.publish(thread, _delta(1, "a"))
    assert await first == [_delta(1, "a")]
    # The reader pauses: four deltas and another message's event wait for it.
    for sequence, text in ((2, "b"), (3, "c"), (4, "d"), (5, "e")):
        await broker.publish(thread, _delta(sequence, text))
    await broker.publish(thread, _delta(6, "other", message="m2"))
    other = _delta(6, "other", message="m2")
    if late:
        clock.now += 2 * MERGE_AFTER
        # Taken MERGE_AFTER late: the consecutive deltas of m1 come as one, numbered as the
        # last of them (so `afterSequence` 5 resumes right after "bcde"); m2's is not mixed in.
        assert await _take(stream, 2) == [_delta(5, "bcde"), other]
    else:
        # Fewer than MERGE_BACKLOG waiting, none for MERGE_AFTER: every delta as it came.
        expected = [_delta(2, "b"), _delta(3, "c"), _delta(4, "d"), _delta(5, "e"), other]
        assert await _take(stream, 5) == expected
    await aclose(stream)


async def test_subscribers_behind_together_merge_the_same_aligned_spans() -> None:
    """Merged deltas never cross a multiple of MERGE_SPAN numbers: two subscribers that fell
    behind at the same point get the same merged events (one rendering for both), whenever
    each of them catches up."""
    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    thread = uuid.uuid4()
    early, late = broker.subscribe(thread), broker.subscribe(thread)
    firsts = asyncio.ensure_future(asyncio.gather(_take(early, 1), _take(late, 1)))
    await broker.listeners.wait_total(thread, 2)
    start = MERGE_SPAN - 4
    await broker.publish(thread, _delta(start - 1, "go"))
    await firsts
    texts = {number: f"{number}," for number in range(start, 3 * MERGE_SPAN + 5)}
    middle = 2 * MERGE_SPAN + 2
    for number in range(start, middle):
        await broker.publish(thread, _delta(number, texts[number]))
    clock.now += 2 * MERGE_AFTER
    got_early = await _take(early, 3)  # catches up here
    for number in range(middle, 3 * MERGE_SPAN + 5):
        await broker.publish(thread, _delta(number, texts[number]))
    clock.now += 2 * MERGE_AFTER
    got_late = await _take(late, 4)  # catches up later, with more waiting

    def merged(first: int, last: int) -> MessageDelta:
        return _delta(last, "".join(texts[n] for n in range(first, last + 1)))

    first_span = merged(start, MERGE_SPAN - 1)
    second_span = merged(MERGE_SPAN, 2 * MERGE_SPAN - 1)
    assert got_early == [first_span, second_span, merged(2 * MERGE_SPAN, middle - 1)]
    assert got_late == [
        first_span,
        second_span,
        merged(2 * MERGE_SPAN, 3 * MERGE_SPAN - 1),
        merged(3 * MERGE_SPAN, 3 * MERGE_SPAN + 4),
    ]
    await aclose(early)
    await aclose(late)


async def test_a_worker_behind_fans_out_merged_deltas() -> None:
    """A fan-out that costs DISPATCH_BEHIND or more and outlasts the pause before the next
    delta: the next deltas of the message go out merged (numbered as the last), flushed by
    the next other event; a cheap fan-out is never held."""
    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    thread = uuid.uuid4()
    writes = CostedWrites(clock)
    written = writes.written
    stream, reading = await _idle_reader(broker, thread, writes)
    await broker.publish(thread, _delta(1, "a"))
    await broker.publish(thread, _delta(2, "b"))  # cheap fan-outs: never held
    assert written == [_delta(1, "a"), _delta(2, "b")]
    writes.cost = 2 * DISPATCH_BEHIND
    await broker.publish(thread, _delta(3, "c"))  # costly once: a first rendering, say
    writes.cost = 0.0
    await broker.publish(thread, _delta(4, "c2"))  # not held
    writes.cost = 2 * DISPATCH_BEHIND
    await broker.publish(thread, _delta(5, "c3"))
    await broker.publish(thread, _delta(6, "c4"))  # twice costly, and the next comes at once:
    for sequence, text in ((7, "d"), (8, "e"), (9, "f")):
        await broker.publish(thread, _delta(sequence, text))  # held, merged
    assert [event.sequence for event in written] == [1, 2, 3, 4, 5, 6]
    # A newcomer flushes what is held (to the others), and replays each delta as published.
    newcomer = broker.subscribe(thread, after_sequence=6)
    assert await _take(newcomer, 3) == [_delta(7, "d"), _delta(8, "e"), _delta(9, "f")]
    assert written[6:] == [_delta(9, "def")]
    await aclose(newcomer)
    writes.cost = 0.0
    await broker.publish(thread, _delta(10, "g"))
    await broker.publish(thread, _delta(11, "h"))
    await broker.publish(thread, _completed(12))  # flushes what is held first
    assert "".join(event.delta for event in written[7:]) == "gh"
    assert written[-1].sequence == 11
    assert [event.sequence for event in await reading] == [12]
    await aclose(stream)


async def test_a_merged_delta_never_repeats_text_a_subscriber_has() -> None:
    """A reply resumed from its checkpoint publishes numbers again while the worker is
    behind: the held deltas go to a subscriber that already has some of them one by one
    (its repeats dropped), so its text holds each delta once; and a subscriber still taking
    its replay in gets the parts too (replay and live overlap), never the merged span."""
    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    thread = uuid.uuid4()
    writes = CostedWrites(clock)
    written = writes.written
    stream, reading = await _idle_reader(broker, thread, writes)
    writes.cost = 2 * DISPATCH_BEHIND
    for sequence, text in ((1, "a"), (2, "b"), (3, "c")):
        await broker.publish(thread, _delta(sequence, text))  # costly fan-outs, in a row
    assert "".join(event.delta for event in written) == "ab"  # 3 is held
    # A newcomer flushes it. Then the reply, resumed from sequence 1, publishes 2 and 3
    # again, then 4: held (the worker is behind), merged.
    replaying = broker.subscribe(thread, after_sequence=0)
    replay = asyncio.ensure_future(_take(replaying, 5))
    await broker.listeners.wait_total(thread, 2)
    assert "".join(event.delta for event in written) == "abc"
    for sequence, text in ((2, "b"), (3, "c"), (4, "d")):
        await broker.publish(thread, _delta(sequence, text))
    await broker.publish(thread, _completed(5))  # flushes what is held
    assert "".join(event.delta for event in written) == "abcd"
    assert broker._fanout.merged_dispatches >= 1  # the merged path was taken
    replayed = await replay
    assert [event.sequence for event in replayed] == [1, 2, 3, 4, 5]
    assert "".join(e.delta for e in replayed if isinstance(e, MessageDelta)) == "abcd"
    assert [event.sequence for event in await reading] == [5]
    await aclose(replaying)
    await aclose(stream)


async def test_an_idle_reader_gets_deltas_written_at_once_in_order() -> None:
    """The direct path: while the reader waits with nothing queued, the publisher hands each
    event to `direct`; what it declines is queued, and from then on events wait behind it (no
    overtaking) until the reader is idle again; a repeated number is dropped."""
    broker = MemoryBroker()
    thread = uuid.uuid4()
    written: list[ThreadEvent] = []
    accept = True

    def direct(event: ThreadEvent) -> bool:
        if accept and isinstance(event, MessageDelta):
            written.append(event)
            return True
        return False

    stream = broker.subscribe(thread, control=SubscriptionControl(direct=direct))
    reading = asyncio.ensure_future(_take(stream, 2))
    await broker.listeners.wait_total(thread, 1)
    await asyncio.sleep(0)  # the reader reaches its queue (one step, no timing)
    for sequence in (1, 2, 3):
        await broker.publish(thread, _delta(sequence, f"{sequence}"))
    await broker.publish(thread, _delta(2, "again"))  # a repeat
    assert written == [_delta(1, "1"), _delta(2, "2"), _delta(3, "3")]
    assert broker.backlogs(thread) == [0]
    accept = False
    await broker.publish(thread, _delta(4, "4"))  # declined: queued
    accept = True
    await broker.publish(thread, _delta(5, "5"))  # behind a queued event: queued too
    assert broker.backlogs(thread) == [2]
    assert await reading == [_delta(4, "4"), _delta(5, "5")]
    assert written == [_delta(1, "1"), _delta(2, "2"), _delta(3, "3")]
    await aclose(stream)


async def test_a_failing_direct_write_falls_back_to_the_queue() -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()

    def direct(event: ThreadEvent) -> bool:
        raise RuntimeError("socket exploded")

    stream = broker.subscribe(thread, control=SubscriptionControl(direct=direct))
    reading = asyncio.ensure_future(_take(stream, 1))
    await broker.listeners.wait_total(thread, 1)
    await asyncio.sleep(0)
    await broker.publish(thread, _delta(1, "x"))
    assert await reading == [_delta(1, "x")]
    await aclose(stream)


MARKER = 10**9


async def _replayed(broker: MemoryBroker, thread: uuid.UUID) -> list[ThreadEvent]:
    """What a client reconnecting with `afterSequence: 0` gets before live events (a marker
    published after subscribing ends the replay)."""
    stream = broker.subscribe(thread, after_sequence=0)
    before = broker.listeners.total(thread)
    first = asyncio.ensure_future(anext(stream))
    await broker.listeners.wait_total(thread, before + 1)
    await broker.publish(thread, _delta(MARKER, "", "marker"))
    events = [await asyncio.wait_for(first, HANG_GUARD)]
    while events[-1].sequence != MARKER:
        events.append(await asyncio.wait_for(anext(stream), HANG_GUARD))
    await aclose(stream)
    return events[:-1]


async def _exchange(
    broker: MemoryBroker, thread: uuid.UUID, start: int, message: str, deltas: int
) -> int:
    """A finished exchange: two MessageCreated, `deltas` deltas, MessageCompleted (whose
    message carries the whole text); the next free sequence number."""
    sequence = start
    for role in (MessageRole.USER, MessageRole.ASSISTANT):
        name = f"{message}-{role}"
        await broker.publish(
            thread,
            MessageCreated(
                sequence=sequence, thread_id=THREAD, message_id=message_id(name),
                message=_payload(name, role=role),
            ),
        )  # fmt: skip
        sequence += 1
    for index in range(deltas):
        await broker.publish(thread, _delta(sequence, f"{index},", message))
        sequence += 1
    text = "".join(f"{index}," for index in range(deltas))
    await broker.publish(thread, _completed(sequence, message, text))
    return sequence + 1


async def test_a_finished_message_keeps_only_its_final_event_for_replay() -> None:
    broker = MemoryBroker()
    thread = uuid.uuid4()
    sequence = 1
    for index in range(3):
        sequence = await _exchange(broker, thread, sequence, f"m{index}", deltas=50)
    # A message still streaming keeps its deltas: a reconnecting client needs them.
    for index in range(5):
        await broker.publish(thread, _delta(sequence + index, "x", "running"))
    replay = await _replayed(broker, thread)
    kinds = [event.type for event in replay]
    assert (
        kinds == ["MessageCreated", "MessageCreated", "MessageCompleted"] * 3 + ["MessageDelta"] * 5
    )
    assert {event.message_id for event in replay[-5:]} == {message_id("running")}
    completed = replay[2]
    assert isinstance(completed, MessageCompleted)
    assert completed.message.content == "".join(f"{n}," for n in range(50))
    sequences = [event.sequence for event in replay]
    assert sequences == sorted(sequences)
    # 3 * 53 + 5 events published; 14 kept (9 carry a whole message): not the 150 finished
    # deltas (about 25 kB).
    assert broker.retained_bytes < 8000


async def test_memory_history_is_bounded_per_thread_in_all_and_in_time() -> None:
    clock = FakeClock()
    broker = MemoryBroker(thread_bytes=10_000, total_bytes=50_000, clock=clock)
    # One thread: a long reply still streaming is capped at 10 kB (oldest dropped).
    long_thread = uuid.uuid4()
    for sequence in range(1, 1001):
        await broker.publish(long_thread, _delta(sequence, "y" * 100))
    assert broker.retained_bytes <= 10_000
    kept = await _replayed(broker, long_thread)
    assert kept[-1].sequence == 1000
    # (Replayed deltas arrive merged; their text is what was kept: the newest ones.)
    kept_text = "".join(event.delta for event in kept if isinstance(event, MessageDelta))
    assert 1000 < len(kept_text) < 10_000

    # Many threads: all together stay under 50 kB, the least recently active forgotten.
    threads = [uuid.uuid4() for _ in range(20)]
    for thread in threads:
        clock.now += 1
        for sequence in range(1, 81):
            await broker.publish(thread, _delta(sequence, "z" * 100))
    assert broker.retained_bytes <= 50_000
    assert await _replayed(broker, threads[0]) == []
    assert (await _replayed(broker, threads[-1]))[-1].sequence == 80

    # Time: a thread idle for longer than the TTL is forgotten.
    clock.now += 3601
    await broker.publish(uuid.uuid4(), _delta(1, "fresh"))
    assert broker.retained_threads == 1
    assert broker.retained_bytes < 500
    assert await _replayed(broker, threads[-1]) == []
