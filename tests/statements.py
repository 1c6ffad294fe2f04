"""Counting the SQL statements an engine's connections send, as pg_stat_statements would
(the test server does not preload it): each execution that reaches the server counts once,
BEGIN / ROLLBACK / SAVEPOINT and pool checks included; preparing a statement does not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

# asyncpg's protocol methods that run a statement (simple query, bind + execute of a prepared
# statement, a portal's next rows).
_EXECUTING = ("query", "bind_execute", "bind_execute_many", "execute")


class _CountingProtocol:
    """Stands in for an asyncpg connection's protocol object, counting executions."""

    def __init__(self, protocol: Any, counter: StatementCounter) -> None:
        self._protocol = protocol
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._protocol, name)
        if name not in _EXECUTING:
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self._counter.record(name, args)
            return await attribute(*args, **kwargs)

        return counted


class StatementCounter:
    """Statements sent through one engine's connections since `reset()`."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @classmethod
    def install(cls, engine: AsyncEngine) -> StatementCounter:
        counter = cls()

        @event.listens_for(engine.sync_engine, "connect")
        def wrap(dbapi_connection: Any, record: Any) -> None:
            driver = dbapi_connection.driver_connection
            driver._protocol = _CountingProtocol(driver._protocol, counter)

        return counter

    def record(self, kind: str, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        text = first if kind == "query" else getattr(first, "query", kind)
        self.statements.append(" ".join(str(text).split())[:120])

    def reset(self) -> None:
        self.statements.clear()

    @contextmanager
    def counting(self) -> Iterator[list[str]]:
        """The statements sent inside the block."""
        self.reset()
        yield self.statements
