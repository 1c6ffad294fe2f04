"""What the app's lifespan owns and every request borrows: settings, engine, sessions,
background tasks and the closers of clients made along the way.

Kernel: it knows no domain. The domains' long-lived objects (the AI orchestrator, the login
limiter) are built from it and held, typed, by `graph.services.Services`."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atlas_gql.config import Settings

logger = logging.getLogger(__name__)


@dataclass
class CompiledReadStats:
    """How queries were served since start: by one compiled statement (`compiled`) or by the
    resolvers (`fallback`, with `fallback_reasons` counted by kind: "not a query", "not
    compiled", "refused", "not eligible", "driver error"). Read by /metrics."""

    compiled: int = 0
    fallback: int = 0
    fallback_reasons: Counter[str] = field(default_factory=Counter)

    def count_compiled(self) -> None:
        self.compiled += 1

    def count_fallback(self, kind: str) -> None:
        self.fallback += 1
        self.fallback_reasons[kind] += 1


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    compiled_stats: CompiledReadStats = field(default_factory=CompiledReadStats)
    background_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have `closer` run when the app stops (clients made lazily by a domain)."""
        self.closers.append(closer)

    async def close(self) -> None:
        """Run the closers, newest first; one failing does not stop the others."""
        while self.closers:
            closer = self.closers.pop()
            try:
                await closer()
            except Exception:
                logger.exception("closing %r failed", closer)

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run work owned by the app, not by the request that started it."""
        task = asyncio.create_task(coroutine, name=name)
        self.background_tasks.add(task)
        task.add_done_callback(self.background_tasks.discard)
        return task

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for background work at shutdown, then cancel what is left."""
        if not self.background_tasks:
            return
        _, pending = await asyncio.wait(set(self.background_tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
