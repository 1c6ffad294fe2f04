"""Who is listening to a thread in this process: the "subscribed" signal.

A `threadEvents` subscriber receives only events published after its broker subscription is
in place (without `afterSequence`), and the client cannot see that moment: the protocol has
no acknowledgement of a subscription. `Listeners` counts, per thread, the subscriptions that
have been put in place (in memory: registered; with Redis: confirmed by Redis) and lets a
caller wait for the next one, so tests and tools wait on a signal instead of sleeping."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter


class Listeners:
    """Per thread: subscriptions in place now, and ever (the latter only grows, so a waiter
    that read it before subscribing waits for exactly its own registration)."""

    def __init__(self) -> None:
        self._now: Counter[uuid.UUID] = Counter()
        self._ever: Counter[uuid.UUID] = Counter()
        self._changed = asyncio.Event()

    def started(self, thread_id: uuid.UUID) -> None:
        self._now[thread_id] += 1
        self._ever[thread_id] += 1
        self._wake()

    def stopped(self, thread_id: uuid.UUID) -> None:
        self._now[thread_id] -= 1
        if self._now[thread_id] <= 0:
            del self._now[thread_id]
        self._wake()

    def current(self, thread_id: uuid.UUID) -> int:
        """Subscriptions of the thread in place in this process now."""
        return self._now[thread_id]

    def total(self, thread_id: uuid.UUID) -> int:
        """Subscriptions of the thread ever put in place in this process."""
        return self._ever[thread_id]

    async def wait_total(self, thread_id: uuid.UUID, at_least: int) -> None:
        """Return once `total(thread_id) >= at_least` (no timeout: the caller bounds it)."""
        while self._ever[thread_id] < at_least:
            changed = self._changed
            await changed.wait()

    async def wait_current(self, thread_id: uuid.UUID, at_most: int) -> None:
        """Return once `current(thread_id) <= at_most` (e.g. 0: every subscriber has gone)."""
        while self._now[thread_id] > at_most:
            changed = self._changed
            await changed.wait()

    def _wake(self) -> None:
        # One event per generation: every waiter wakes, re-checks, and waits on the next.
        self._changed.set()
        self._changed = asyncio.Event()
