"""Pool checks (issue 13 part 6): a connection used moments ago is handed out without a
round trip; one idle longer than ATLAS_DB_PING_AFTER_IDLE is checked first, and replaced
when the server dropped it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from atlas_gql.db.engine import create_engine
from atlas_gql.db.url import DatabaseTarget
from tests.statements import StatementCounter


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate_backend(engine: AsyncEngine, pid: int) -> None:
    """End the server process `pid` (the connection is dropped under its pool)."""
    async with engine.connect() as connection:
        await connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def test_a_connection_idle_too_long_is_checked_and_replaced(
    database_target: DatabaseTarget,
) -> None:
    engine = create_engine(database_target, pool_size=1, ping_after_idle=0)
    admin = create_engine(database_target, pool_size=1)
    try:
        dropped = await _backend_pid(engine)
        await terminate_backend(admin, dropped)
        # The check fails, the pool opens another connection: the caller notices nothing.
        assert await _backend_pid(engine) != dropped
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_connection_used_moments_ago_is_not_checked(
    database_target: DatabaseTarget,
) -> None:
    engine = create_engine(database_target, pool_size=1, ping_after_idle=3600)
    counter = StatementCounter.install(engine)
    admin = create_engine(database_target, pool_size=1)
    try:
        dropped = await _backend_pid(engine)
        counter.reset()
        async with engine.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))
        # BEGIN, SELECT 1, ROLLBACK: no check around them.
        assert counter.statements == ["BEGIN;", "SELECT 1", "ROLLBACK;"]
        # A connection dropped while pooled fails its next statement (DB_UNAVAILABLE on the
        # request), and the pool discards it: the one after works.
        await terminate_backend(admin, dropped)
        with pytest.raises(DBAPIError):
            await _backend_pid(engine)
        assert await _backend_pid(engine) != dropped
    finally:
        await engine.dispose()
        await admin.dispose()
