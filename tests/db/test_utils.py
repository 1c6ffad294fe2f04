"""The three helpers: execute_db_operation, execute_transaction, check_db_connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atlas_gql.db import check_db_connection, execute_db_operation, execute_transaction
from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import parse_database_url
from atlas_gql.errors import Conflict, DbUnavailable

RAISE_SERIALIZATION_FAILURE = sa.text(
    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
)


async def test_execute_transaction_retries_serialization_failures(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    attempts = 0

    async def work(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            await session.execute(RAISE_SERIALIZATION_FAILURE)
        return int((await session.execute(sa.text("SELECT 41 + 1"))).scalar_one())

    assert await execute_transaction(sessionmaker, work, base_delay=0.001) == 42
    assert attempts == 3


async def test_execute_transaction_gives_up_after_bounded_attempts(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(RAISE_SERIALIZATION_FAILURE)

    with pytest.raises(sa.exc.DBAPIError):
        await execute_transaction(sessionmaker, work, attempts=3, base_delay=0.001)
    assert attempts == 3


async def test_execute_transaction_rolls_back_on_error(
    sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
) -> None:
    async def work(session: AsyncSession) -> None:
        await session.execute(sa.text("INSERT INTO roles (name) VALUES ('ADMIN')"))

    with pytest.raises(Conflict):
        await execute_transaction(sessionmaker, work)
    count = (await db.execute(sa.text("SELECT count(*) FROM roles"))).scalar_one()
    assert count == 3


async def test_execute_db_operation_maps_unique_violation_to_conflict(db: AsyncSession) -> None:
    async def insert_duplicate_role() -> None:
        async with db.begin_nested():
            await db.execute(sa.text("INSERT INTO roles (name) VALUES ('USER')"))

    with pytest.raises(Conflict):
        await execute_db_operation(insert_duplicate_role)


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on loopback that accepts connections and never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def unreachable_engine(silent_server: int) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        parse_database_url(f"postgresql://postgres@127.0.0.1:{silent_server}/atlas")
    )
    yield engine
    await engine.dispose()


async def test_check_db_connection_true_when_database_answers(engine: AsyncEngine) -> None:
    assert await check_db_connection(engine, timeout=30) is True  # the timeout: a hang guard


async def test_check_db_connection_times_out(unreachable_engine: AsyncEngine) -> None:
    # Completes (answering False) although the server never answers; the guard only stops a
    # hang from blocking the suite.
    async with asyncio.timeout(30):
        assert await check_db_connection(unreachable_engine, timeout=0.5) is False


async def test_execute_db_operation_maps_unreachable_database(
    unreachable_engine: AsyncEngine,
) -> None:
    async def connect_and_query() -> None:
        async with unreachable_engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))

    async def query() -> None:
        await asyncio.wait_for(connect_and_query(), 0.5)

    with pytest.raises(DbUnavailable):
        await execute_db_operation(query)


async def test_execute_transaction_runs_at_the_requested_isolation_level(
    engine: AsyncEngine,
) -> None:
    from atlas_gql.db.engine import create_sessionmaker

    async def level(session: AsyncSession) -> str:
        return str((await session.execute(sa.text("SHOW transaction_isolation"))).scalar_one())

    sessionmaker = create_sessionmaker(engine)
    assert await execute_transaction(sessionmaker, level, isolation_level="SERIALIZABLE") == (
        "serializable"
    )
    assert await execute_transaction(sessionmaker, level) == "read committed"


async def test_pool_exhaustion_is_db_unavailable() -> None:
    async def busy() -> None:
        raise sa.exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached")

    with pytest.raises(DbUnavailable):
        await execute_db_operation(busy)
