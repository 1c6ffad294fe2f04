"""`db.driver`: one prebuilt statement on the driver's connection, outside any transaction.
Its rows are the driver's; its failures are the errors a session's statement raises (so a
database gone mid-check is DB_UNAVAILABLE, a refused value BAD_USER_INPUT), and a connection
the server dropped is discarded by the pool."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atlas_gql.db.driver import DriverStatement, fetch_outside_transaction
from atlas_gql.db.engine import create_engine, create_sessionmaker
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.db.utils import map_db_error
from atlas_gql.errors import BadInput, DbUnavailable

_BACKEND = DriverStatement.of(
    sa.select(
        sa.func.pg_backend_pid(),
        sa.bindparam("wanted", type_=sa.Uuid),
        sa.literal("constant"),
        sa.cast(sa.bindparam("number", type_=sa.Text), sa.Integer),
        sa.func.current_setting("transaction_isolation"),
    )
)


async def _terminate(engine: AsyncEngine, pid: int) -> None:
    async with engine.connect() as connection:
        await connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


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
        await _terminate(admin, pid)
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
