"""A query operation reads one snapshot (issue 12 part 1): `read_one_snapshot` makes the
session's transaction REPEATABLE READ, so a row committed between two of its statements is
invisible to the second one (a thread's `lastEventSequence` and its `messages` agree)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from atlas_gql.db.session import SerializedAsyncSession


def _sessions(engine: AsyncEngine) -> async_sessionmaker[SerializedAsyncSession]:
    return async_sessionmaker(engine, class_=SerializedAsyncSession, expire_on_commit=False)


async def _level(session: SerializedAsyncSession) -> str:
    return str(await session.scalar(sa.text("SHOW transaction_isolation")))


async def test_a_snapshot_session_reads_one_state_of_the_database(engine: AsyncEngine) -> None:
    table = f"snapshot_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"CREATE TABLE {table} (n int)"))
    try:
        async with _sessions(engine)() as reader:
            reader.read_one_snapshot()
            assert await _level(reader) == "repeatable read"
            first = await reader.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            # Another transaction commits a row between the reader's two statements...
            async with engine.begin() as writer:
                await writer.execute(sa.text(f"INSERT INTO {table} VALUES (1)"))
            second = await reader.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            assert first == second == 0  # ...and the reader does not see it.
        # The pool gives the connection back at the default level.
        async with _sessions(engine)() as plain:
            assert await _level(plain) == "read committed"
            assert await plain.scalar(sa.text(f"SELECT count(*) FROM {table}")) == 1
    finally:
        async with engine.begin() as connection:
            await connection.execute(sa.text(f"DROP TABLE {table}"))


async def test_a_session_joined_to_an_outer_transaction_keeps_its_level(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        await connection.begin()
        joined = async_sessionmaker(
            bind=connection,
            class_=SerializedAsyncSession,
            join_transaction_mode="create_savepoint",
        )
        async with joined() as session:
            session.read_one_snapshot()
            assert await _level(session) == "read committed"
