"""Fan-out of thread events to `threadEvents` subscribers, with replay of recent events.

An event is a typed `events.ThreadEvent` carrying a per-thread `sequence` (assigned by its
publisher, see `sequences.py`). Two implementations behind one interface:
- `MemoryBroker` (default): asyncio queues in this process.
- `RedisBroker` (REDIS_URL set): Redis pub/sub carries events between worker processes, and a
  capped Redis list per thread keeps recent events for `afterSequence` replay.

Both also carry *control* messages between workers (e.g. "cancel this reply"), delivered to
every process's control handler, so a cancel reaches the worker that runs the reply.

Redis is behind a circuit breaker (`atlas_gql/circuit.py`): a Redis that fails or hangs costs
one short timeout, then is skipped (events still reach this process's subscribers) until it
answers again; what needs Redis and cannot have it raises BrokerUnavailable (BROKER_UNAVAILABLE).

Size: over 400 lines on purpose: the two implementations of one interface, whose replay and
control semantics must match, read side by side."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from atlas_gql.ai.events import (
    FINAL_EVENTS,
    TOOL_EVENTS,
    MessageDelta,
    ThreadEvent,
    decode_event,
    delta_event,
    encode_event,
)
from atlas_gql.ai.listening import Listeners
from atlas_gql.circuit import CircuitBreaker, CircuitOpenError
from atlas_gql.config import Settings
from atlas_gql.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

Event = ThreadEvent
ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]

# Recent events kept per thread for replay, and how long after a thread's last event they
# are kept (Redis: the list's expiry; memory: threads idle longer are forgotten).
REPLAY_LIMIT = 5000
REPLAY_TTL_SECONDS = 3600
# Threads whose history the memory broker keeps (least recently used are forgotten).
MEMORY_THREAD_LIMIT = 10_000
# Memory broker: bytes of kept events per thread (oldest dropped first) and in all.
MEMORY_THREAD_BYTES = 1 << 20
MEMORY_TOTAL_BYTES = 128 << 20
# Rough size of an event's fixed fields (ids, type, sequence) in the accounting above.
EVENT_OVERHEAD_BYTES = 160
# Default of ATLAS_REDIS_SUBSCRIBE_TIMEOUT: seconds to wait for Redis to confirm a SUBSCRIBE
# before asking whether Redis is there at all (not on a reply's path).
SUBSCRIBE_TIMEOUT = 2.0
# Rounds of that wait while Redis answers a PING (its confirmation is late, not lost: this
# worker or Redis is busy); a subscriber waits at most about this many timeouts for
# BROKER_UNAVAILABLE, and at once when Redis does not answer.
SUBSCRIBE_ATTEMPTS = 3
# Defaults of ATLAS_REDIS_TIMEOUT (seconds a publish, history read or control message waits
# for Redis) and ATLAS_REDIS_RETRY_MAX (longest pause before Redis is probed again).
REDIS_TIMEOUT = 0.25
REDIS_MAX_PAUSE = 30.0
# A subscriber is behind when an event reaches its reader this many seconds after it was
# published (default of ATLAS_SUBSCRIBER_MERGE_AFTER), or this many events wait for it: its
# consecutive queued deltas are merged then (see `_deliver`). One keeping up has none or a
# few waiting, taken at once: nothing merged.
MERGE_AFTER = 0.025
MERGE_BACKLOG = 16
# A merged delta never spans a multiple of this many sequence numbers: subscribers that fell
# behind together (e.g. while a new exchange was checked and sent to each of them) merge the
# same spans, so their group renders each merged delta once (graph/fanout.py keys renderings
# by number and text) instead of once per subscriber.
MERGE_SPAN = 32
# Two fan-outs of a thread's deltas in a row costing this many seconds or more, the last one
# more than the time since it ended: this worker is behind, the next deltas are merged
# (`_LocalFanout`).
DISPATCH_BEHIND = 0.002
# A merged delta stops growing at about this many characters (the next one starts anew).
MERGE_MAX_CHARS = 16 * 1024
# Default of ATLAS_SUBSCRIBER_BACKLOG: events waiting for one subscriber (it is not reading
# them: its socket is full) beyond which it is dropped rather than growing memory forever.
SUBSCRIBER_QUEUE_LIMIT = 2_000
# Events of this worker waiting to be sent to Redis (see RedisBroker.publish). Past it the
# oldest are dropped: Redis cannot keep up, and the circuit breaker bounds how long that lasts.
REDIS_OUTBOX_LIMIT = 20_000


class SubscriberTooSlow(Exception):
    """The subscriber's queue overflowed; it should reconnect with `afterSequence`."""


class SubscriptionControl:
    """What a subscription's owner can do to it from outside its reading task: stop it with
    an error that its reader raises at its next event (an access check that failed), be told
    at once when its queue overflows (its reader may be stuck writing to a full socket, so it
    would only notice later), and deliver events itself while the reader is idle (`direct`:
    see `_Subscriber.offer`)."""

    __slots__ = ("_subscriber", "direct", "error", "on_overflow")

    def __init__(
        self,
        *,
        on_overflow: Callable[[], None] | None = None,
        direct: Callable[[Event], bool] | None = None,
    ) -> None:
        self.on_overflow = on_overflow
        self.direct = direct
        self.error: BaseException | None = None
        self._subscriber: _Subscriber | None = None

    def stop(self, error: BaseException) -> None:
        """End the subscription: its reader raises `error` instead of its next event."""
        if self.error is not None:
            return
        self.error = error
        if self._subscriber is not None:
            self._subscriber.queue.put_nowait(_Stop(error))

    def bind(self, subscriber: _Subscriber) -> None:
        self._subscriber = subscriber
        subscriber.on_overflow = self.on_overflow
        subscriber.direct = self.direct
        if self.error is not None:
            subscriber.queue.put_nowait(_Stop(self.error))


class _Stop:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Broker(abc.ABC):
    """The event broker: MemoryBroker (one worker) or RedisBroker (workers sharing events).

    Both fan events out to this process's subscribers through one `_LocalFanout`, and share
    `subscribe`: a subscriber is put in place (`_join`), reads the kept events (`_replay`),
    then live ones, and is taken out (`_leave`); only those three steps differ."""

    # True when other processes share the events (a reply may run in another worker).
    distributed: bool

    def __init__(self, fanout: _LocalFanout) -> None:
        self._fanout = fanout
        # The subscriptions of this process in place, by thread (the "subscribed" signal).
        self.listeners = Listeners()
        self._control_handler: ControlHandler | None = None

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def backlogs(self, thread_id: uuid.UUID) -> list[int]:
        """Events waiting for each of the thread's subscribers in this process."""
        return self._fanout.backlogs(thread_id)

    @abc.abstractmethod
    async def publish(self, thread_id: uuid.UUID, event: Event) -> None:
        """Deliver `event` to the thread's subscribers (in every process) and keep it for
        replay. An event may be published twice (a resumed reply re-reads events after its
        last checkpoint, with the numbers they had): subscribers drop the repeat."""

    async def subscribe(
        self,
        thread_id: uuid.UUID,
        *,
        after_sequence: int | None = None,
        control: SubscriptionControl | None = None,
    ) -> AsyncIterator[Event]:
        """Live events of the thread, in sequence order. With `after_sequence`, first the kept
        events numbered above it (what a reconnecting client missed), then live ones.
        BrokerUnavailable when the broker cannot subscribe. `control` stops it from outside."""
        subscriber = await self._join(thread_id, control)
        self.listeners.started(thread_id)
        try:
            # In place before the kept events are read: an event in both is delivered once.
            replay = await self._replay(thread_id, after_sequence)
            async for event in _deliver(subscriber, replay, after_sequence):
                yield event
        finally:
            self.listeners.stopped(thread_id)
            await self._leave(thread_id, subscriber)

    @abc.abstractmethod
    async def _join(self, thread_id: uuid.UUID, control: SubscriptionControl | None) -> _Subscriber:
        """A new subscriber of the thread, in place: this process's later events reach it."""

    @abc.abstractmethod
    async def _replay(self, thread_id: uuid.UUID, after_sequence: int | None) -> list[Event]:
        """The kept events a new subscriber may read first: `_deliver` takes those numbered
        above `after_sequence`, and none without it."""

    @abc.abstractmethod
    async def _leave(self, thread_id: uuid.UUID, subscriber: _Subscriber) -> None:
        """Take a subscriber out (its subscription ended)."""

    @abc.abstractmethod
    async def publish_control(self, message: dict[str, Any]) -> None:
        """Send a control message to every process (including this one); BrokerUnavailable
        when it cannot be sent."""

    def set_control_handler(self, handler: ControlHandler) -> None:
        self._control_handler = handler


_Item = tuple[float, Event] | _Stop | None
T = TypeVar("T")


class Inbox(Generic[T]):
    """asyncio.Queue's put_nowait/get/get_nowait/empty/qsize for one reader, without its four
    deques and event per queue (memory: a thousand idle subscriptions, or sockets, hold none;
    the deque exists while items wait). A subscriber's queue here, and each WebSocket's
    queue of ASGI events in serving.py."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> T:
        assert self._items
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


class _Subscriber:
    """A subscription's queue, and what its publisher may write for it at once.

    `offer` hands an event to `direct` (the WebSocket's shared-frame write, graph/fanout.py)
    instead of queueing it when that keeps the order: the reader is idle (waiting for its next
    event, holding none) and nothing is queued. Otherwise, and when `direct` declines (not a
    delta, or the socket's buffer is full), the event is queued with the moment it was
    published, for the reader (`_deliver`) to merge deltas that waited too long."""

    __slots__ = (
        "clock",
        "direct",
        "last",
        "limit",
        "merge_after",
        "offered",
        "on_overflow",
        "overflowed",
        "queue",
        "replaying",
        "waiting",
    )

    def __init__(self, fanout: _LocalFanout) -> None:
        # The bounds of the fanout that adds it, read here once (`offer` runs per event).
        self.clock = fanout.clock
        # Seconds an event may wait before the deltas behind it are merged (0: by count only).
        self.merge_after = fanout.merge_after
        self.queue: Inbox[_Item] = Inbox()
        self.limit = fanout.queue_limit
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None
        self.direct: Callable[[Event], bool] | None = None
        # The reader waits on an empty queue, holding no event (direct writes keep the order).
        self.waiting = False
        # The sequence of the last event delivered (by the reader or directly).
        self.last = -1
        # The highest sequence handed to it (queued or written), and whether its reader has
        # yet to take its replay in: a delta the worker merged goes to it in its parts unless
        # all of them are new to it (a merged delta is numbered as its last part only, so a
        # replay or a resumed reply's repeats could not tell its first parts apart).
        self.offered = -1
        self.replaying = True

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if self.waiting and self.direct is not None and self.queue.empty():
            if event.sequence <= self.last:
                return  # a repeat (a resumed reply publishes again what it had published)
            try:
                written = self.direct(event)
            except Exception:
                # The publisher must go on for the other subscribers: this one takes the
                # reader's path, whose errors end its own subscription.
                logger.exception("direct delivery failed")
                written = False
            if written:
                self.last = self.offered = event.sequence
                return
        self.offered = max(self.offered, event.sequence)
        if self.queue.qsize() >= self.limit:
            self.overflowed = True
            self.queue.put_nowait(None)
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self.queue.put_nowait((self.clock(), event))


# What a message's final event makes useless to a client reconnecting after it (the final
# event carries the whole message: text and citations).
DROPPED_AT_END = (MessageDelta, *TOOL_EVENTS)


def _mergeable(first: Event, second: Event) -> bool:
    return (
        isinstance(first, MessageDelta)
        and isinstance(second, MessageDelta)
        and first.message_id == second.message_id
    )


def _merge(first: MessageDelta, second: MessageDelta) -> MessageDelta:
    """Two consecutive deltas of a message as one (numbered as the later one)."""
    return delta_event(
        second.sequence,
        thread_id=second.thread_id,
        message_id=second.message_id,
        delta=first.delta + second.delta,
    )


async def _deliver(
    subscriber: _Subscriber, replay: list[Event], after_sequence: int | None
) -> AsyncIterator[Event]:
    """Replay (events above `after_sequence`), then live events; never a number twice or
    out of order (live events already replayed, or written directly, are skipped).

    Coalescing: a subscriber that fell behind (an event reaches its reader MERGE_AFTER seconds
    or more after it was published, or MERGE_BACKLOG events wait: its socket was full, or the
    worker was busy; a replay counts by its size) gets the consecutive deltas of a message
    waiting for it merged into one delta event, numbered as the LAST of them (so
    `afterSequence` with that number resumes exactly after the merged text), of at most about
    MERGE_MAX_CHARS characters, never across a multiple of MERGE_SPAN numbers (aligned spans:
    subscribers behind together share the rendering of each merged delta): the text is the
    same, and the work per event is not repeated for every token, so a slow client catches up
    instead of falling further behind. Nothing is ever held back to be merged: a subscriber
    keeping up gets every delta as it comes."""
    subscriber.last = after_sequence if after_sequence is not None else -1
    # Events taken from the queue and not yet yielded. Made while some wait, dropped while the
    # reader waits (an idle subscription holds no deque).
    backlog: deque[tuple[float, Event]] | None = None

    def accept(item: tuple[float, Event] | _Stop | None) -> None:
        nonlocal backlog
        if item is None:
            raise SubscriberTooSlow()
        if isinstance(item, _Stop):
            raise item.error
        newest = backlog[-1][1].sequence if backlog else subscriber.last
        if item[1].sequence > newest:
            if backlog is None:
                backlog = deque()
            backlog.append(item)

    if after_sequence is not None:
        now = subscriber.clock()
        for event in sorted(replay, key=lambda item: item.sequence):
            accept((now, event))
    # What it replays, or resumes after, counts as handed to it.
    newest = backlog[-1][1].sequence if backlog else subscriber.last
    subscriber.offered = max(subscriber.offered, newest)
    subscriber.replaying = False
    queue = subscriber.queue
    while True:
        if not backlog:
            backlog = None
            subscriber.waiting = True
            try:
                item = await queue.get()
            finally:
                subscriber.waiting = False
            accept(item)
        while not queue.empty():
            accept(queue.get_nowait())
        if not backlog:
            continue
        published, event = backlog.popleft()
        if (
            backlog
            and (
                len(backlog) >= MERGE_BACKLOG
                or 0 < subscriber.merge_after <= subscriber.clock() - published
            )
            and isinstance(event, MessageDelta)
        ):
            span = event.sequence // MERGE_SPAN
            while (
                backlog
                and _mergeable(event, backlog[0][1])
                and backlog[0][1].sequence // MERGE_SPAN == span
                and len(event.delta) < MERGE_MAX_CHARS
            ):
                event = _merge(event, backlog.popleft()[1])  # type: ignore[arg-type]
        subscriber.last = event.sequence
        yield event


class _Pending:
    """Deltas of one message held while this worker is behind, merged, flushed together."""

    __slots__ = ("event", "parts", "timer")

    def __init__(self, event: MessageDelta, timer: asyncio.TimerHandle) -> None:
        self.event = event
        # The deltas merged into `event`, in increasing sequence order.
        self.parts = [event]
        self.timer = timer


class _LocalFanout:
    """The subscribers of this process, by thread.

    Coalescing when the worker is behind: a fan-out costs each subscriber a write (or a queue
    append); when the last delta's fan-out of a thread took DISPATCH_BEHIND seconds or more,
    and longer than the time since it ended (the deltas come faster than they are fanned
    out) and the one before it was as costly (one alone: a message's first rendering), the
    next deltas of that message are held for `merge_after` seconds and fanned out
    as one merged delta (numbered as the last it covers; the replay history keeps each one):
    one rendering and one write per subscriber per window instead of per delta. A small
    fan-out is never held (no added latency when the worker keeps up); any other event, a
    new subscriber of the thread and the window's end flush what is held first."""

    def __init__(
        self,
        queue_limit: int,
        clock: Callable[[], float] = time.monotonic,
        merge_after: float = MERGE_AFTER,
    ) -> None:
        self.subscribers: dict[uuid.UUID, set[_Subscriber]] = {}
        self.queue_limit = queue_limit
        self.clock = clock
        self.merge_after = merge_after
        # Per thread: when its last delta's fan-out ended, what it cost (seconds), and how many
        # fan-outs in a row cost DISPATCH_BEHIND or more.
        self._last: dict[uuid.UUID, tuple[float, float, int]] = {}
        self._pending: dict[uuid.UUID, _Pending] = {}
        # Merged fan-outs done because the worker was behind (tests and the bench read it).
        self.merged_dispatches = 0

    def add(self, thread_id: uuid.UUID, control: SubscriptionControl | None = None) -> _Subscriber:
        # What is held was published before this subscriber: it goes to the others only
        # (the newcomer's replay covers it), never merged with what it will receive.
        self._flush(thread_id)
        subscriber = _Subscriber(self)
        if control is not None:
            control.bind(subscriber)
        self.subscribers.setdefault(thread_id, set()).add(subscriber)
        return subscriber

    def backlogs(self, thread_id: uuid.UUID) -> list[int]:
        """Events waiting for each subscriber of the thread here (tests wait on it)."""
        return [subscriber.queue.qsize() for subscriber in self.subscribers.get(thread_id, ())]

    def remove(self, thread_id: uuid.UUID, subscriber: _Subscriber) -> bool:
        """Forget a subscriber; True when it was the thread's last one here."""
        group = self.subscribers.get(thread_id)
        if group is None:
            return False
        group.discard(subscriber)
        if not group:
            del self.subscribers[thread_id]
            self._last.pop(thread_id, None)
            pending = self._pending.pop(thread_id, None)
            if pending is not None:
                pending.timer.cancel()
            return True
        return False

    def dispatch(self, thread_id: uuid.UUID, event: Event) -> None:
        if thread_id not in self.subscribers:
            return
        if isinstance(event, MessageDelta) and self.merge_after > 0:
            pending = self._pending.get(thread_id)
            if pending is not None:
                if (
                    _mergeable(pending.event, event)
                    and event.sequence > pending.event.sequence
                    and len(pending.event.delta) < MERGE_MAX_CHARS
                ):
                    pending.event = _merge(pending.event, event)
                    pending.parts.append(event)
                    return
                self._flush(thread_id)
            elif self._behind(thread_id):
                timer = asyncio.get_running_loop().call_later(
                    self.merge_after, self._flush, thread_id
                )
                self._pending[thread_id] = _Pending(event, timer)
                return
        else:
            self._flush(thread_id)
        self._fan_out(thread_id, event)

    def _behind(self, thread_id: uuid.UUID) -> bool:
        last = self._last.get(thread_id)
        if last is None:
            return False
        ended, cost, costly = last
        return costly >= 2 and cost > self.clock() - ended

    def _fan_out(
        self, thread_id: uuid.UUID, event: Event, parts: list[MessageDelta] | None = None
    ) -> None:
        """`event` to every subscriber of the thread; for a merged delta, its `parts` one by
        one to a subscriber that holds or may replay some of them (its repeats are dropped)."""
        started = self.clock()
        for subscriber in list(self.subscribers.get(thread_id, ())):
            if parts is not None and (
                subscriber.replaying or subscriber.offered >= parts[0].sequence
            ):
                for part in parts:
                    subscriber.offer(part)
            else:
                subscriber.offer(event)
        if isinstance(event, MessageDelta):
            ended = self.clock()
            cost = ended - started
            # Costly fan-outs in a row: one alone is a message's first rendering, not load.
            last = self._last.get(thread_id)
            costly = (last[2] + 1 if last else 1) if cost >= DISPATCH_BEHIND else 0
            self._last[thread_id] = (ended, cost, costly)

    def _flush(self, thread_id: uuid.UUID) -> None:
        pending = self._pending.pop(thread_id, None)
        if pending is not None:
            pending.timer.cancel()
            self.merged_dispatches += 1
            self._fan_out(thread_id, pending.event, pending.parts)


def event_size(event: Event) -> int:
    """About how many bytes an event takes (its text counted exactly; deltas are the hot
    path, so they are not serialized)."""
    if isinstance(event, MessageDelta):
        return EVENT_OVERHEAD_BYTES + len(event.delta.encode())
    return len(encode_event(event))


class _ThreadHistory:
    """A thread's kept events with their sizes, and when it last had one."""

    __slots__ = ("bytes", "events", "touched")

    def __init__(self, now: float) -> None:
        self.events: deque[tuple[Event, int]] = deque()
        self.bytes = 0
        self.touched = now

    def add(self, event: Event, *, limit: int, max_bytes: int) -> None:
        if isinstance(event, FINAL_EVENTS):
            # The final event carries the whole message: its deltas are of no use to a
            # client reconnecting after it, and would only take room.
            self._drop_deltas(event.message_id)
        size = event_size(event)
        self.events.append((event, size))
        self.bytes += size
        while len(self.events) > limit or (self.bytes > max_bytes and len(self.events) > 1):
            _, dropped = self.events.popleft()
            self.bytes -= dropped

    def _drop_deltas(self, message_id: uuid.UUID) -> None:
        kept = deque(
            (event, size)
            for event, size in self.events
            if not (isinstance(event, DROPPED_AT_END) and event.message_id == message_id)
        )
        if len(kept) != len(self.events):
            self.events = kept
            self.bytes = sum(size for _, size in kept)


class MemoryBroker(Broker):
    """In-process broker: enough for one worker.

    Replay history is bounded: per thread REPLAY_LIMIT events and MEMORY_THREAD_BYTES
    (oldest dropped first), a finished message keeps only its final event (its deltas are
    dropped), threads without an event for REPLAY_TTL_SECONDS are forgotten, and all
    threads together keep at most MEMORY_TOTAL_BYTES / MEMORY_THREAD_LIMIT threads (least
    recently active forgotten first)."""

    distributed = False

    def __init__(
        self,
        *,
        queue_limit: int = SUBSCRIBER_QUEUE_LIMIT,
        thread_bytes: int = MEMORY_THREAD_BYTES,
        total_bytes: int = MEMORY_TOTAL_BYTES,
        thread_limit: int = MEMORY_THREAD_LIMIT,
        ttl_seconds: float = REPLAY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        merge_after: float = MERGE_AFTER,
    ) -> None:
        super().__init__(_LocalFanout(queue_limit, clock, merge_after))
        self.thread_bytes = thread_bytes
        self.total_bytes = total_bytes
        self.thread_limit = thread_limit
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._history: OrderedDict[uuid.UUID, _ThreadHistory] = OrderedDict()
        # Bytes of events kept for replay, all threads together (tests read it).
        self.retained_bytes = 0

    @property
    def retained_threads(self) -> int:
        return len(self._history)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, thread_id: uuid.UUID, event: Event) -> None:
        now = self._clock()
        history = self._history.get(thread_id)
        if history is None:
            history = self._history[thread_id] = _ThreadHistory(now)
        else:
            self._history.move_to_end(thread_id)
            history.touched = now
        before = history.bytes
        history.add(event, limit=REPLAY_LIMIT, max_bytes=self.thread_bytes)
        self.retained_bytes += history.bytes - before
        self._evict(now)
        self._fanout.dispatch(thread_id, event)

    def _evict(self, now: float) -> None:
        """Forget the least recently active threads while any bound is exceeded (the most
        recent thread last of all)."""
        expired_before = now - self.ttl_seconds
        while self._history:
            oldest = next(iter(self._history.values()))
            if not (
                oldest.touched < expired_before
                or len(self._history) > self.thread_limit
                or (self.retained_bytes > self.total_bytes and len(self._history) > 1)
            ):
                break
            _, forgotten = self._history.popitem(last=False)
            self.retained_bytes -= forgotten.bytes

    async def _join(self, thread_id: uuid.UUID, control: SubscriptionControl | None) -> _Subscriber:
        return self._fanout.add(thread_id, control)

    async def _replay(self, thread_id: uuid.UUID, after_sequence: int | None) -> list[Event]:
        # Nothing suspends between `_join` and this read: no event falls between them.
        history = self._history.get(thread_id)
        if history is None:
            return []
        if history.touched < self._clock() - self.ttl_seconds:
            del self._history[thread_id]
            self.retained_bytes -= history.bytes
            return []
        return [event for event, _ in history.events]

    async def _leave(self, thread_id: uuid.UUID, subscriber: _Subscriber) -> None:
        self._fanout.remove(thread_id, subscriber)

    async def publish_control(self, message: dict[str, Any]) -> None:
        if self._control_handler is not None:
            await self._control_handler(message)


class RedisBroker(Broker):
    """Redis pub/sub between processes; one pub/sub connection per process, fanned out locally.

    Keys: channel `atlas:thread:<id>` carries events, list `atlas:thread:<id>:events` keeps
    the last REPLAY_LIMIT of them for an hour, channel `atlas:control` carries control messages.

    An event is delivered to this process's subscribers directly, then sent to Redis for the
    other workers (tagged with this worker's id, so its own listener skips it): local
    subscribers never wait on Redis, and neither does the publisher. `publish` queues the
    event; one sender task per worker sends what is queued, in order, all of it in one
    pipeline per round trip (each thread's list pushed once, one PUBLISH per event): a reply
    pays ~3 us per delta instead of a round trip (~200 us of CPU measured with redis-py), and
    under load the round trips are shared by every reply of the worker. Nothing waits when
    Redis is idle (the sender sends as soon as it is woken); `flush` waits for what is queued
    (a replaying subscriber does, before it reads the list). Every Redis command runs through
    a circuit breaker with a short timeout (`atlas_gql/circuit.py`, ATLAS_REDIS_TIMEOUT): once
    Redis fails or hangs, it is skipped (publishes deliver locally only, new subscriptions
    and control messages fail at once with BROKER_UNAVAILABLE) until a probe finds it
    answering again."""

    CONTROL_CHANNEL = "atlas:control"
    distributed = True

    def __init__(
        self,
        url: str,
        *,
        queue_limit: int = SUBSCRIBER_QUEUE_LIMIT,
        timeout: float = REDIS_TIMEOUT,
        max_pause: float = REDIS_MAX_PAUSE,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
        merge_after: float = MERGE_AFTER,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self.breaker = CircuitBreaker(
            name="Redis (event broker)",
            timeout=timeout,
            failures=(RedisError,),
            max_pause=max_pause,
        )
        self._redis_errors: tuple[type[BaseException], ...] = self.breaker.failures
        # Commands are bounded by the breaker's timeout and never retried by the client (the
        # breaker decides when to try again); the socket timeout bounds what the pub/sub
        # connection does on its own (reconnecting, resubscribing, health checks).
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=max(1.0, timeout),
            socket_timeout=max(2.0, timeout),
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._pubsub = self._redis.pubsub()
        super().__init__(_LocalFanout(queue_limit, merge_after=merge_after))
        self._confirmed: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._control_ready = False
        # Held while a SUBSCRIBE or UNSUBSCRIBE is sent on the shared pub/sub connection only
        # (never across the wait for Redis's confirmation: `_channel_lock` serialises one
        # channel's subscription, so a late confirmation holds up that thread alone).
        self._lock = asyncio.Lock()
        self._channel_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # This worker's tag on what it publishes (its listener skips its own events).
        self._origin = uuid.uuid4().hex
        # Events waiting for the sender: (thread, encoded event).
        self._outbox: deque[tuple[uuid.UUID, str]] = deque()
        self._outbox_ready = asyncio.Event()
        self._sent = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        # Events queued, and sent or dropped, since the start (`flush` waits for the first).
        self._queued = self._handled = 0
        self.subscribe_timeout = subscribe_timeout
        self.subscribe_attempts = SUBSCRIBE_ATTEMPTS
        # Waits for a SUBSCRIBE's confirmation that ran out while Redis answered (tests, logs).
        self.late_confirmations = 0

    @staticmethod
    def channel(thread_id: uuid.UUID) -> str:
        return f"atlas:thread:{thread_id}"

    @staticmethod
    def history_key(thread_id: uuid.UUID) -> str:
        return f"atlas:thread:{thread_id}:events"

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="atlas-redis-broker")
        self._prober = asyncio.create_task(
            self.breaker.run_probes(self._probe), name="atlas-redis-probe"
        )
        try:
            await self._subscribe_control()
        except self._redis_errors as error:
            # The app starts without Redis (events stay local); the probe subscribes the
            # control channel once Redis answers.
            self.breaker.record_failure(error)

    async def _subscribe_control(self) -> None:
        await self._subscribe_confirmed(self.CONTROL_CHANNEL)

    async def _subscribe_confirmed(self, channel: str) -> None:
        """SUBSCRIBE `channel` and wait until Redis confirms it (the listener task reads the
        confirmation). A confirmation that takes longer than `subscribe_timeout` is not a
        failure by itself: on a busy machine the listener or Redis may be late. So the wait is
        retried, up to `subscribe_attempts` rounds, as long as Redis answers a PING within the
        breaker's timeout; one SUBSCRIBE is sent (Redis confirms each one, and a confirmation
        cannot be lost short of the connection, whose reconnect subscribes again). Raises
        TimeoutError, or the Redis error, when Redis does not answer or never confirms."""
        confirmed = self._confirmed[channel] = asyncio.Event()
        async with self._lock, asyncio.timeout(self.subscribe_timeout):
            await self._pubsub.subscribe(channel)
        for attempt in range(1, self.subscribe_attempts + 1):
            try:
                async with asyncio.timeout(self.subscribe_timeout):
                    await confirmed.wait()
            except TimeoutError:
                if attempt == self.subscribe_attempts:
                    raise
                # Late, or is Redis gone? A PING on a command connection says which.
                async with asyncio.timeout(self.breaker.timeout):
                    await self._redis.ping()
                self.late_confirmations += 1
                continue
            if attempt > 1:
                logger.warning(
                    "redis broker: SUBSCRIBE %s confirmed after %d waits of %.1f s",
                    channel,
                    attempt,
                    self.subscribe_timeout,
                )
            return

    @contextlib.asynccontextmanager
    async def _channel_lock(self, channel: str) -> AsyncIterator[None]:
        """One channel's subscribe and unsubscribe, one at a time (its first subscriber
        sends the SUBSCRIBE and waits for the confirmation; the next ones join after it);
        other channels do not wait on it. The lock is forgotten when nobody holds or waits
        for it."""
        lock, users = self._channel_locks.get(channel, (asyncio.Lock(), 0))
        self._channel_locks[channel] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._channel_locks[channel]
            if users == 1:
                del self._channel_locks[channel]
            else:
                self._channel_locks[channel] = (lock, users - 1)

    async def _unsubscribe(self, channel: str) -> None:
        """UNSUBSCRIBE `channel` (best effort, within the breaker's timeout)."""
        with contextlib.suppress(Exception):
            async with self._lock, asyncio.timeout(self.breaker.timeout):
                await self._pubsub.unsubscribe(channel)

    async def _probe(self) -> None:
        await self._redis.ping()
        if not self._control_ready:
            await self._subscribe_control()

    async def close(self) -> None:
        # What this worker published last (a reply's final event) still reaches Redis.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self.breaker.timeout):
                await self.flush()
        for task in (self._sender, self._listener, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    async def _listen(self) -> None:
        while True:
            if self._pubsub.connection is None:
                # Nothing subscribed yet (Redis was down at start): wait for the probe.
                await asyncio.sleep(0.5)
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if isinstance(error, self._redis_errors):
                    self.breaker.record_failure(error)
                else:
                    logger.exception("redis broker: reading pub/sub failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            channel = message.get("channel")
            if message["type"] == "subscribe":
                if channel == self.CONTROL_CHANNEL:
                    self._control_ready = True
                waiter = self._confirmed.get(channel)
                if waiter is not None:
                    waiter.set()
                continue
            if message["type"] != "message":
                continue
            if channel == self.CONTROL_CHANNEL:
                try:
                    payload = json.loads(message["data"])
                except (TypeError, ValueError):
                    continue
                if self._control_handler is not None:
                    try:
                        await self._control_handler(payload)
                    except Exception:
                        logger.exception("redis broker: control handler failed")
                continue
            data: str = message["data"]
            if not data.startswith("{"):
                # "<worker id><event JSON>": this worker delivered its own events already.
                if data.startswith(self._origin):
                    continue
                data = data[len(self._origin) :]
            try:
                event = decode_event(data)
            except ValueError:  # pydantic's ValidationError included
                logger.warning("redis broker: dropped an event that does not parse")
                continue
            self._fanout.dispatch(event.thread_id, event)

    async def publish(self, thread_id: uuid.UUID, event: Event) -> None:
        """Deliver to this process's subscribers, then (unless Redis is being skipped) queue
        the event for Redis (its replay list and the other workers). Never waits on Redis:
        the sender task sends the queue; Redis failing or hanging opens the circuit (logged
        once) and the reply goes on."""
        self._fanout.dispatch(thread_id, event)
        if self.breaker.skip():
            return
        outbox = self._outbox
        outbox.append((thread_id, encode_event(event)))
        self._queued += 1
        if len(outbox) > REDIS_OUTBOX_LIMIT:
            outbox.popleft()
            self.breaker.skipped += 1
            self._handled += 1
        self._outbox_ready.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued(), name="atlas-redis-sender")

    async def flush(self) -> None:
        """Until every event queued so far was sent to Redis, or dropped (Redis skipped)."""
        target = self._queued
        while self._handled < target and self._sender is not None and not self._sender.done():
            self._sent.clear()
            await self._sent.wait()

    async def _send_queued(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = list(self._outbox)
                self._outbox.clear()
                try:
                    if self.breaker.is_open:
                        # Opened while these waited (by an earlier batch): skipped as they
                        # would have been had they come a moment later.
                        self.breaker.skipped += len(batch)
                    else:
                        with contextlib.suppress(CircuitOpenError):
                            await self.breaker.call(functools.partial(self._send, batch))
                except Exception:
                    # The sender goes on (a dead one would leave `flush` waiting forever):
                    # this batch reached this worker's subscribers, not Redis.
                    logger.exception("sending %d events to Redis failed", len(batch))
                finally:
                    # Sent, skipped or lost, even when cancelled: `flush` never waits on it.
                    self._handled += len(batch)
                    self._sent.set()

    async def _send(self, batch: list[tuple[uuid.UUID, str]]) -> None:
        by_thread: dict[uuid.UUID, list[str]] = {}
        for thread_id, data in batch:
            by_thread.setdefault(thread_id, []).append(data)
        # No MULTI/EXEC: one connection runs the commands in order, each list push before
        # its PUBLISH, which is all a subscriber elsewhere needs (it subscribes, then reads
        # the list: an event it missed live is in the list; one in both is delivered once).
        async with self._redis.pipeline(transaction=False) as pipeline:
            for thread_id, events in by_thread.items():
                key = self.history_key(thread_id)
                pipeline.rpush(key, *events)
                pipeline.ltrim(key, -REPLAY_LIMIT, -1)
                pipeline.expire(key, REPLAY_TTL_SECONDS)
            for thread_id, data in batch:
                pipeline.publish(self.channel(thread_id), self._origin + data)
            await pipeline.execute()

    async def _join(self, thread_id: uuid.UUID, control: SubscriptionControl | None) -> _Subscriber:
        """BrokerUnavailable when Redis is being skipped or does not confirm the subscription
        in time."""
        channel = self.channel(thread_id)
        async with self._channel_lock(channel):
            if self.breaker.skip():
                raise BrokerUnavailable()
            subscriber = self._fanout.add(thread_id, control)
            if len(self._fanout.subscribers[thread_id]) == 1:
                try:
                    await self._subscribe_confirmed(channel)
                except BaseException as error:
                    # Not subscribed: forget this subscriber, so the thread's next subscriber
                    # here is the first again and sends its own SUBSCRIBE.
                    self._fanout.remove(thread_id, subscriber)
                    self._confirmed.pop(channel, None)
                    await self._unsubscribe(channel)
                    if isinstance(error, self._redis_errors):
                        self.breaker.record_failure(error)
                        raise BrokerUnavailable() from error
                    raise
            # In place: this process's later events reach it, and Redis has confirmed the
            # channel (the first subscriber waited for it; later ones joined after it).
            return subscriber

    async def _replay(self, thread_id: uuid.UUID, after_sequence: int | None) -> list[Event]:
        """The thread's list, read once subscribed (none without `after_sequence`);
        BrokerUnavailable when it cannot be read in time."""
        if after_sequence is None:
            return []
        # What this worker published before is in the list once its queue is sent.
        await self.flush()
        history = self.history_key(thread_id)
        try:
            raw = await self.breaker.call(lambda: self._redis.lrange(history, 0, -1))
        except CircuitOpenError as error:
            raise BrokerUnavailable() from error
        return [decode_event(item) for item in raw]

    async def _leave(self, thread_id: uuid.UUID, subscriber: _Subscriber) -> None:
        channel = self.channel(thread_id)
        async with self._channel_lock(channel):
            if self._fanout.remove(thread_id, subscriber):
                self._confirmed.pop(channel, None)
                if not self.breaker.is_open:
                    await self._unsubscribe(channel)

    async def publish_control(self, message: dict[str, Any]) -> None:
        """BrokerUnavailable when Redis is being skipped or does not take the message."""
        data = json.dumps(message)
        try:
            await self.breaker.call(lambda: self._redis.publish(self.CONTROL_CHANNEL, data))
        except CircuitOpenError as error:
            raise BrokerUnavailable() from error


def create_broker(settings: Settings) -> Broker:
    """Redis when a URL is configured (REDIS_URL), else in-process; bounded and timed as the
    settings say (as `create_provider` reads its own)."""
    if settings.redis_url:
        return RedisBroker(
            settings.redis_url,
            timeout=settings.atlas_redis_timeout,
            max_pause=settings.atlas_redis_retry_max,
            queue_limit=settings.atlas_subscriber_backlog,
            subscribe_timeout=settings.atlas_redis_subscribe_timeout,
            merge_after=settings.atlas_subscriber_merge_after,
        )
    return MemoryBroker(
        queue_limit=settings.atlas_subscriber_backlog,
        merge_after=settings.atlas_subscriber_merge_after,
    )
