"""A circuit breaker: a dependency that fails or hangs is skipped for a while, then probed.

Redis carries thread events between workers, but a reply must not wait on it: a Redis that
drops packets (rather than refusing connections) would otherwise make every publish wait out
its timeout, one token per timeout. So every broker command runs through `CircuitBreaker.call`
with a short timeout; the first failure or timeout *opens* the circuit, and while it is open
callers skip the dependency at once (the broker delivers locally instead). A probe task pings
the dependency after a pause that doubles with each failed probe (capped), and closes the
circuit when it answers. Calls that were already waiting when the circuit opened do not count
as further failures, so one incident is one failure, however many replies were publishing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The first pause after a failure (seconds); each failed probe doubles it, up to `max_pause`.
BASE_PAUSE = 0.5


class CircuitOpenError(Exception):
    """The dependency is being skipped (it failed or timed out recently)."""


class CircuitBreaker:
    """Closed: calls go through, each bounded by `timeout`. Open: calls raise CircuitOpenError
    without waiting, until a probe succeeds."""

    def __init__(
        self,
        *,
        name: str,
        timeout: float,
        failures: tuple[type[BaseException], ...],
        max_pause: float = 30.0,
        base_pause: float = BASE_PAUSE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.timeout = timeout
        # What counts as the dependency failing (anything else is a bug and propagates).
        self.failures: tuple[type[BaseException], ...] = (*failures, TimeoutError, OSError)
        self.max_pause = max_pause
        self.base_pause = base_pause
        self._clock = clock
        self._sleep = sleep
        self._open = False
        self._failed_probes = 0
        self.retry_at = 0.0
        self._opened = asyncio.Event()
        # How many times the circuit opened, and how many calls it skipped (logs, tests).
        self.trips = 0
        self.skipped = 0

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def pause(self) -> float:
        """The current pause before the next probe."""
        return float(min(self.max_pause, self.base_pause * 2**self._failed_probes))

    def record_failure(self, error: BaseException | None = None) -> None:
        """The dependency failed: open the circuit (once per incident)."""
        if self._open:
            return
        self._open = True
        self.trips += 1
        self._failed_probes = 0
        self.retry_at = self._clock() + self.pause
        self._opened.set()
        logger.warning(
            "%s unavailable (%s); skipping it, next try in %.1f s",
            self.name,
            _describe(error),
            self.pause,
        )

    def record_success(self) -> None:
        if self._open:
            logger.warning("%s answers again; using it again", self.name)
        self._open = False
        self._failed_probes = 0
        self._opened.clear()

    def skip(self) -> bool:
        """True (and counted) when the dependency is being skipped."""
        if self._open:
            self.skipped += 1
        return self._open

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` within the timeout; CircuitOpenError when the circuit is open or
        the operation fails (which opens it)."""
        if self.skip():
            raise CircuitOpenError(self.name)
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation()
        except self.failures as error:
            self.record_failure(error)
            raise CircuitOpenError(self.name) from error
        return result

    async def run_probes(self, probe: Callable[[], Awaitable[object]]) -> None:
        """Forever: while the circuit is open, wait for the pause, then try `probe` (within
        the timeout); close the circuit when it succeeds, double the pause when it fails."""
        while True:
            await self._opened.wait()
            delay = self.retry_at - self._clock()
            if delay > 0:
                await self._sleep(delay)
            try:
                async with asyncio.timeout(self.timeout):
                    await probe()
            except self.failures as error:
                self._failed_probes += 1
                self.retry_at = self._clock() + self.pause
                logger.info(
                    "%s still unavailable (%s); next try in %.1f s",
                    self.name,
                    _describe(error),
                    self.pause,
                )
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: the probe failed unexpectedly", self.name)
                self.retry_at = self._clock() + self.pause
                continue
            self.record_success()


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no answer"
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    return f"{type(error).__name__}: {error}"
