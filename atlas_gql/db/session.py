"""Session types: `ReadSession`, what read-only code is given, and `SerializedAsyncSession`, an
AsyncSession that serialises its own operations and runs after-commit hooks.

Strawberry resolves sibling fields concurrently, so several DataLoaders of one request may run
their batch at the same moment on the request's session. An AsyncSession allows one operation
at a time (a second one while a connection is being provisioned, e.g. right after a commit,
fails with "session is provisioning a new connection"). This subclass queues them instead; the
lock is re-entrant per task, as `scalars()` calls `execute()`.

After-commit hooks: work that must happen only once the change is durable (start the reply a
sendMessage stored, give back a login reservation) is handed to `after_commit(hook)`; the
operation boundary's commit runs it, a rollback forgets it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar, TypeVarTuple, overload

from sqlalchemy.engine import Result, ScalarResult
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
AfterCommitHook = Callable[[], Awaitable[None]]
_Ts = TypeVarTuple("_Ts")
AnyRow = tuple[Any, ...]


class ReadSession(Protocol):
    """What read-only code (DataLoaders, readers, pagination) may do with a session: run
    statements and load rows by key. It has no `add`, `delete`, `flush` or `commit`, so mypy
    refuses a write where this type is taken. Any AsyncSession is one."""

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*_Ts], params: Any = None
    ) -> Result[*_Ts]: ...

    @overload
    async def execute(self, statement: Executable, params: Any = None) -> Result[*AnyRow]: ...

    async def execute(self, statement: Executable, params: Any = None) -> Result[*AnyRow]: ...

    @overload
    async def scalars(
        self, statement: TypedReturnsRows[_T], params: Any = None
    ) -> ScalarResult[_T]: ...

    @overload
    async def scalars(self, statement: Executable, params: Any = None) -> ScalarResult[Any]: ...

    async def scalars(self, statement: Executable, params: Any = None) -> ScalarResult[Any]: ...

    async def scalar(self, statement: Executable, params: Any = None) -> Any: ...

    async def get(self, entity: type[_T], ident: Any) -> _T | None: ...


class _TaskReentrantLock:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None


class SerializedAsyncSession(AsyncSession):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._operation_lock = _TaskReentrantLock()
        self._after_commit: list[AfterCommitHook] = []
        self._on_close: list[Callable[[], None]] = []
        self._isolation_level: str | None = None

    def read_one_snapshot(self) -> None:
        """Run the session's transactions at REPEATABLE READ: every statement of one reads the
        same snapshot (a query operation's fields agree with each other, e.g. a thread's
        `lastEventSequence` with its `messages`). Only for a session that opens its own
        connection (tests that bind sessions to an outer transaction keep its level)."""
        self._isolation_level = "REPEATABLE READ"

    @asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        async with self._operation_lock.hold():
            if (
                self._isolation_level is not None
                and not self.in_transaction()
                and isinstance(self.bind, AsyncEngine)
            ):
                # Set before the transaction begins (asyncpg sends it with BEGIN: no extra
                # round trip); the pool restores the default when the connection returns.
                await super().connection(
                    execution_options={"isolation_level": self._isolation_level}
                )
            yield

    def after_commit(self, hook: AfterCommitHook) -> None:
        """Run `hook` once the current transaction commits; never if it rolls back."""
        self._after_commit.append(hook)

    @property
    def hooks_mark(self) -> int:
        """Where the hooks of work about to start begin (see `forget_hooks_after`)."""
        return len(self._after_commit)

    def forget_hooks_after(self, mark: int) -> None:
        """Drop the hooks added since `mark` (their savepoint was rolled back)."""
        del self._after_commit[mark:]

    async def _run_after_commit(self) -> None:
        hooks, self._after_commit = self._after_commit, []
        for hook in hooks:
            try:
                await hook()
            except Exception:
                # The change is committed: a hook failing must not report it as failed.
                logger.exception("after-commit hook %r failed", hook)

    async def commit(self) -> None:
        async with self._operation_lock.hold():
            await super().commit()
        await self._run_after_commit()

    async def rollback(self) -> None:
        self._after_commit.clear()
        async with self._operation_lock.hold():
            await super().rollback()

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the session closes (the operation boundary closes it after its
        commit or rollback), whatever happened: e.g. to let go of an in-process gate held
        for as long as the transaction's locks."""
        self._on_close.append(hook)

    async def close(self) -> None:
        self._after_commit.clear()
        try:
            async with self._operation_lock.hold():
                await super().close()
        finally:
            hooks, self._on_close = self._on_close, []
            for hook in hooks:
                hook()


# AsyncSession's operations that run holding the session's operation lock, each the base
# method unchanged inside `_operation()` (commit, rollback and close above take the lock
# around their own extra steps).
_SERIALIZED_OPERATIONS = (
    "execute",
    "scalar",
    "get",
    "get_one",
    "stream",
    "refresh",
    "merge",
    "delete",
    "flush",
    "connection",
)


def _serialized(name: str) -> Callable[..., Awaitable[Any]]:
    operation = getattr(AsyncSession, name)

    async def serialized(self: SerializedAsyncSession, *args: Any, **kwargs: Any) -> Any:
        async with self._operation():
            return await operation(self, *args, **kwargs)

    serialized.__name__ = name
    serialized.__qualname__ = f"SerializedAsyncSession.{name}"
    return serialized


for _name in _SERIALIZED_OPERATIONS:
    setattr(SerializedAsyncSession, _name, _serialized(_name))


def after_commit(db: AsyncSession, hook: AfterCommitHook) -> None:
    """Run `hook` once `db`'s transaction commits (the operation boundary's commit, or the
    caller's own); never if it rolls back. `db` must come from the app's sessionmaker."""
    if not isinstance(db, SerializedAsyncSession):
        raise TypeError("after-commit hooks need a SerializedAsyncSession")
    db.after_commit(hook)


async def stored(db: AsyncSession, row: _T) -> _T:
    """`row` flushed and read back with what the database set (defaults, `updated_at`), for
    the response; the operation boundary commits."""
    await db.flush()
    await db.refresh(row)
    return row
