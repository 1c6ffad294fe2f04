"""`db.driver`: one prebuilt statement on the driver's connection, outside any transaction or in
a session's (`fetch_in_transaction`).
Its rows are the driver's; its failures are the errors a session's statement raises (so a
database gone mid-check is DB_UNAVAILABLE, a refused value BAD_USER_INPUT), and a connection
the server dropped is discarded by the pool."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.db.driver import DriverStatement, fetch_in_transaction, fetch_outside_transaction
from atlas_gql.db.engine import create_engine, create_sessionmaker
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.db.utils import map_db_error
from atlas_gql.errors import BadInput, DbUnavailable
from atlas_gql.logs.usage import advisory_lock
from tests.db.test_idle_ping import terminate_backend

_BACKEND = DriverStatement.of(
    sa.select(
        sa.func.pg_backend_pid(),
        sa.bindparam("wanted", type_=sa.Uuid),
        sa.literal("constant"),
        sa.cast(sa.bindparam("number", type_=sa.Text), sa.Integer),
        sa.func.current_setting("transaction_isolation"),
    )
)


async def test_rows_constants_and_a_dropped_connection(database_target: DatabaseTarget) -> None:
    engine = create_engine(database_target, pool_size=1, ping_after_idle=3600)
    admin = create_engine(database_target, pool_size=1)
    sessions = create_sessionmaker(engine)
    wanted = uuid.uuid4()
    try:
        [row] = await fetch_outside_transaction(
            sessions, _BACKEND, {"wanted": wanted, "number": "7"}
        )
        pid, echoed, constant, number, _ = row
        assert (echoed, constant, number) == (wanted, "constant", 7)
        # A value PostgreSQL refuses: the session's error for it, mapped as before.
        with pytest.raises(DBAPIError) as refused:
            await fetch_outside_transaction(
                sessions, _BACKEND, {"wanted": wanted, "number": "seven"}
            )
        assert isinstance(map_db_error(refused.value), BadInput)
        # The connection is still good after a refused value (it ran in autocommit).
        [again] = await fetch_outside_transaction(
            sessions, _BACKEND, {"wanted": wanted, "number": "8"}
        )
        assert again[0] == pid
        # The server drops the pooled connection: DB_UNAVAILABLE, and the pool replaces it.
        await terminate_backend(admin, pid)
        with pytest.raises(DBAPIError) as gone:
            await fetch_outside_transaction(sessions, _BACKEND, {"wanted": wanted, "number": "1"})
        assert isinstance(map_db_error(gone.value), DbUnavailable)
        [fresh] = await fetch_outside_transaction(
            sessions, _BACKEND, {"wanted": wanted, "number": "1"}
        )
        assert fresh[0] != pid
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_no_database_is_db_unavailable(database_target: DatabaseTarget) -> None:
    unreachable = database_target.url.set(port=1)
    engine = create_engine(DatabaseTarget(unreachable, database_target.schema))
    try:
        with pytest.raises((DBAPIError, OSError)) as failed:
            await fetch_outside_transaction(
                create_sessionmaker(engine), _BACKEND, {"wanted": uuid.uuid4(), "number": "1"}
            )
        assert isinstance(map_db_error(failed.value), DbUnavailable)
    finally:
        await engine.dispose()


async def test_a_write_stays_in_the_test_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
) -> None:
    """Sessions joined to an outer transaction (the tests'): the statement runs on that
    connection, and what it wrote stays, as an autocommit statement's does."""
    key = f"test:driver:{uuid.uuid4()}"
    write = DriverStatement.of(
        sa.text(
            "INSERT INTO rate_limit_buckets (key, tokens, updated_at) "
            "VALUES (:key, 1, now()) RETURNING key"
        ).bindparams(sa.bindparam("key", type_=sa.String))
    )
    assert [
        row[0] for row in await fetch_outside_transaction(sessionmaker, write, {"key": key})
    ] == [key]
    read = sa.text("SELECT count(*) FROM rate_limit_buckets WHERE key = :key")
    assert (await db.execute(read, {"key": key})).scalar_one() == 1


_IN_TRANSACTION = DriverStatement.of(
    sa.select(
        sa.func.pg_backend_pid(),
        sa.func.now(),
        sa.cast(sa.bindparam("number", type_=sa.Text), sa.Integer),
        sa.literal("a").in_(["a", "b"]),
    )
)


async def test_in_a_transaction_its_begin_its_errors_and_a_dropped_connection(
    database_target: DatabaseTarget,
) -> None:
    """`fetch_in_transaction` runs in the session's transaction, beginning it as the session's
    first statement would (so a lock it takes is held to the commit, and the session's next
    statements share its snapshot's transaction); a refused value is the session's error for
    it; a connection the server dropped is DB_UNAVAILABLE and is not used again."""
    engine = create_engine(database_target, pool_size=1, ping_after_idle=3600)
    admin = create_engine(database_target, pool_size=1)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as db:
            [row] = await fetch_in_transaction(db, _IN_TRANSACTION, {"number": "7"})
            pid, began, number, constant_in = row
            assert (number, constant_in) == (7, True)
            # The same transaction as the session's statements: now() is its start.
            assert (await db.execute(sa.select(sa.func.now()))).scalar_one() == began
            assert db.in_transaction()
            # A value PostgreSQL refuses: the session's error for it, mapped as before.
            with pytest.raises(DBAPIError) as refused:
                await fetch_in_transaction(db, _IN_TRANSACTION, {"number": "seven"})
            assert isinstance(map_db_error(refused.value), BadInput)
            await db.rollback()
            # After the rollback, a new transaction begins (a later now()).
            [again] = await fetch_in_transaction(db, _IN_TRANSACTION, {"number": "8"})
            assert again[0] == pid
            assert again[1] > began
            await db.rollback()
        async with sessions() as db:
            await fetch_in_transaction(db, _IN_TRANSACTION, {"number": "1"})
            await terminate_backend(admin, pid)
            with pytest.raises(DBAPIError) as gone:
                await fetch_in_transaction(db, _IN_TRANSACTION, {"number": "1"})
            assert isinstance(map_db_error(gone.value), DbUnavailable)
            assert gone.value.connection_invalidated
        async with sessions() as db:
            [fresh] = await fetch_in_transaction(db, _IN_TRANSACTION, {"number": "1"})
            assert fresh[0] != pid
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_lock_taken_in_a_transaction_is_held_to_its_end(
    database_target: DatabaseTarget,
) -> None:
    """The statement is not sent in autocommit: an advisory transaction lock it takes is still
    held by the session until it rolls back."""
    engine = create_engine(database_target, pool_size=2)
    sessions = create_sessionmaker(engine)
    key = f"test:driver:{uuid.uuid4()}"
    # The budgets' lock (logs/usage.py); `held` asks for the same key without waiting.
    lock = DriverStatement.of(sa.select(advisory_lock(sa.bindparam("key", type_=sa.String))))
    held = sa.select(
        sa.func.pg_try_advisory_xact_lock(
            sa.func.hashtextextended(sa.bindparam("key", type_=sa.String), 0)
        )
    )
    try:
        async with sessions() as holder, sessions() as other:
            await fetch_in_transaction(holder, lock, {"key": key})
            assert (await other.execute(held, {"key": key})).scalar_one() is False
            await other.rollback()
            await holder.rollback()
            assert (await other.execute(held, {"key": key})).scalar_one() is True
    finally:
        await engine.dispose()
