"""One prebuilt statement on the driver's connection, outside any transaction.

A statement that needs no transaction (the session check of a mutation or a subscription, the
sender's rate token: docs/ai.md, "Cheaper reply starts, fourth pass") costs ~0.5 ms of
SQLAlchemy's Python through a session (the session, its connection and execution context, the
result's rows) for ~0.1 ms of the driver's. `DriverStatement` compiles a Core statement once
for asyncpg; `fetch_outside_transaction` runs it on a pooled connection in autocommit, as the
compiled read path does (graph/compiled/endpoint.py), and returns the driver's plain rows.

`fetch_outside_transaction` is only for statements that run outside the operation's
transaction: nothing runs it between a session's BEGIN and its COMMIT. Inside a session's
transaction, `fetch_in_transaction` runs a prebuilt statement on the session's own connection
(beginning its transaction first, as the session's first statement would), for the reads on
the hot path of a reply's start (docs/ai.md, "Cheaper reply starts, fifth pass"). A driver
error is raised as SQLAlchemy's own error for it (the same `DBAPIError` a session raises, a
broken connection invalidated), so callers map it as before (`map_db_error`:
DB_UNAVAILABLE, ...)."""

from __future__ import annotations

import contextlib
import enum
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from atlas_gql import metrics

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


# Constants a statement may carry as bound values (a role name, a status): sent as they are.
_PLAIN = (str, int, float, bool, uuid.UUID, type(None))


@dataclass(frozen=True)
class DriverStatement:
    """A Core statement as asyncpg's SQL (`$1`, `$2`, ...) and, in that order, each parameter's
    name and value when the caller does not give it (the statement's constants); the driver's
    statement cache prepares it once per connection. A value the caller gives goes through its
    type's bind processing, as a session's statement sends it (an enum's name, a JSON
    document serialised: `processors`)."""

    sql: str
    names: tuple[str, ...]
    constants: Mapping[str, Any]
    processors: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, statement: ClauseElement) -> DriverStatement:
        """Compile `statement` once (bound parameters; an IN of constants expanded into one
        parameter per value); its constants must be plain values (no bind processing happens
        on this path)."""
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        # The caller's parameters (no value here): placeholders for the expansion only.
        given = {name: None for name, bind in compiled.binds.items() if bind.required}
        expanded = compiled.construct_expanded_state(given)
        names = tuple(expanded.positiontup or ())
        constants = {
            name: _plain(value)
            for name, value in expanded.parameters.items()
            if name not in given and value is not None
        }
        for name, value in constants.items():
            if not isinstance(value, _PLAIN):
                raise TypeError(f"{name}: {type(value).__name__} is not a plain value")
        processors = {
            name: processor
            for name in given
            if (processor := _bind_processor(compiled.binds[name].type)) is not None
        }
        return cls(sql=expanded.statement, names=names, constants=constants, processors=processors)

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        constants, processors = self.constants, self.processors
        arguments = []
        for name in self.names:
            if name not in parameters:
                arguments.append(constants[name])
                continue
            processor = processors.get(name)
            value = parameters[name]
            arguments.append(value if processor is None else processor(value))
        return arguments


def _bind_processor(type_: Any) -> Callable[[Any], Any] | None:
    processor: Callable[[Any], Any] | None = type_.dialect_impl(_DIALECT).bind_processor(_DIALECT)
    return processor


# Callbacks told each statement sent here (its SQL), in the caller's task, before it is sent:
# what SQLAlchemy's `before_cursor_execute` is for a session's statements (tests pin the
# statements of an operation with both).
_LISTENERS: list[Callable[[str], None]] = []


def listen(callback: Callable[[str], None]) -> None:
    """Call `callback` with the SQL of every statement sent on the driver's connection."""
    _LISTENERS.append(callback)


def remove(callback: Callable[[str], None]) -> None:
    _LISTENERS.remove(callback)


# What makes a trace's span of a statement sent here (None: tracing is off; atlas_gql/tracing.py).
_SPAN: list[Callable[[str], contextlib.AbstractContextManager[Any]]] = []


def trace_statements(span: Callable[[str], contextlib.AbstractContextManager[Any]] | None) -> None:
    """Wrap each statement sent here in `span(sql)` (None: no more)."""
    _SPAN[:] = [] if span is None else [span]


def _sending(statement: DriverStatement) -> contextlib.AbstractContextManager[Any]:
    """Count the statement, tell the listeners, and its span (when traced)."""
    metrics.count_driver_statement()
    for callback in _LISTENERS:
        callback(statement.sql)
    return _SPAN[0](statement.sql) if _SPAN else contextlib.nullcontext()


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


async def fetch_outside_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: DriverStatement,
    parameters: Mapping[str, Any],
) -> Sequence[Any]:
    """`statement`'s rows (asyncpg records: by position), run on its own in autocommit on a
    connection of `sessionmaker`'s pool. Counted on the current request's record, as the
    engine's statement hook counts a session's statements (it does not see this one)."""
    arguments = statement.arguments(parameters)
    with _sending(statement):
        return await _fetch_outside_transaction(sessionmaker, statement, arguments)


async def _fetch_outside_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: DriverStatement,
    arguments: list[Any],
) -> Sequence[Any]:
    async with _driver_connection(sessionmaker) as (dialect, adapted, driver):
        try:
            rows: Sequence[Any] = await driver.fetch(statement.sql, *arguments)
        except Exception as error:
            raise _as_dbapi_error(dialect, adapted, statement.sql, error) from error
    return rows


async def fetch_in_transaction(
    db: AsyncSession, statement: DriverStatement, parameters: Mapping[str, Any]
) -> Sequence[Any]:
    """`statement`'s rows (asyncpg records: by position), run on `db`'s connection in its
    transaction (BEGIN first when this is the transaction's first statement, as SQLAlchemy's
    cursor sends it), with no ORM execution around it; the session's operations take turns
    with it (`SerializedAsyncSession`). Values come as the driver decodes them: no type's
    result processing. Counted on the current request's record, as `fetch_outside_transaction`.
    A failure is the session's error for it; a connection the server dropped is invalidated,
    as a session's statement invalidates it."""
    arguments = statement.arguments(parameters)
    operation = getattr(db, "_operation", None)
    async with operation() if operation is not None else contextlib.nullcontext():
        connection = await db.connection()
        raw = await connection.get_raw_connection()
        adapted: Any = raw.dbapi_connection
        driver: Any = raw.driver_connection
        with _sending(statement):
            return await _fetch_on(connection, adapted, driver, statement, arguments)


async def _fetch_on(
    connection: Any, adapted: Any, driver: Any, statement: DriverStatement, arguments: list[Any]
) -> Sequence[Any]:
    """`fetch_in_transaction` on the session's connection (`connection`, SQLAlchemy's; the
    adapted connection and asyncpg's beneath it)."""
    async with adapted._execute_mutex:
        try:
            if adapted._transaction is None:
                await adapted._start_transaction()
            rows: Sequence[Any] = await driver.fetch(statement.sql, *arguments)
        except Exception as error:
            cause = error
        else:
            return rows
    failure = _as_dbapi_error(connection.dialect, adapted, statement.sql, cause)
    if isinstance(failure, exc.DBAPIError) and failure.connection_invalidated:
        await connection.invalidate(failure)
    raise failure from cause


@contextlib.asynccontextmanager
async def _driver_connection(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[tuple[Dialect, Any, Any]]:
    """The dialect, SQLAlchemy's adapted connection and asyncpg's beneath it: straight from
    the engine's pool (no BEGIN, no ROLLBACK), or through a session when the sessions are
    bound to a connection (tests bind them to a transaction they roll back, whose rows only
    that connection sees)."""
    bind = sessionmaker.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        async with sessionmaker() as session:
            connection = await session.connection()
            raw = await connection.get_raw_connection()
            adapted: Any = raw.dbapi_connection
            # Other sessions share this connection: one statement at a time on it, as
            # SQLAlchemy's own statements take turns.
            async with adapted._execute_mutex:
                yield connection.dialect, adapted, raw.driver_connection
            # What the statement wrote stays (a session joined to an outer transaction
            # releases its savepoint), as an autocommit statement's does.
            await session.commit()
        return
    pooled = await bind.raw_connection()
    try:
        yield bind.dialect, pooled.dbapi_connection, pooled.driver_connection
    except BaseException:
        driver = pooled.driver_connection
        if driver is None or driver.is_closed():
            await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        await greenlet_spawn(pooled.close)


def _as_dbapi_error(dialect: Dialect, adapted: Any, sql: str, error: Exception) -> Exception:
    """`error` (asyncpg's) as a session's statement raises it: the dialect's DB-API error
    wrapped in SQLAlchemy's `DBAPIError` (InterfaceError, OperationalError, ...), marked
    `connection_invalidated` when the connection is gone; anything else (OSError, a
    cancellation) as it is, as SQLAlchemy leaves it."""
    try:
        adapted._handle_exception(error)  # raises the dialect's DB-API error for it
    except Exception as translated:
        if not isinstance(translated, dialect.loaded_dbapi.Error):
            return translated
        return exc.DBAPIError.instance(
            sql,
            None,
            translated,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=dialect.is_disconnect(translated, adapted, None),
            dialect=dialect,
        )
    return error  # pragma: no cover (`_handle_exception` always raises)
