"""The request session tolerates the concurrent DataLoader batches Strawberry produces."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import InterfaceError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from atlas_gql.db.engine import create_engine, create_sessionmaker
from atlas_gql.db.url import DatabaseTarget
from tests.live import wait_until


async def _concurrent_after_commit(session: AsyncSession) -> list[Any]:
    await session.execute(sa.text("SELECT 1"))
    await session.commit()  # the connection goes back to the pool
    return await asyncio.gather(
        *(session.scalar(sa.text(f"SELECT {n}")) for n in range(1, 6)), return_exceptions=True
    )


async def test_concurrent_operations_after_commit_are_serialised(engine: AsyncEngine) -> None:
    async with create_sessionmaker(engine)() as session:
        assert await _concurrent_after_commit(session) == [1, 2, 3, 4, 5]


async def test_a_plain_async_session_would_fail(database_target: DatabaseTarget) -> None:
    """Why the subclass exists: the same calls on a plain AsyncSession fail whenever taking a
    connection from the pool awaits (a new connection, or the check of an idle one: here
    every checkout is checked)."""
    engine = create_engine(database_target, pool_size=2, ping_after_idle=0)
    try:
        session = AsyncSession(engine)
        running_before = asyncio.all_tasks()
        results = await _concurrent_after_commit(session)
        assert any(isinstance(result, (InvalidRequestError, InterfaceError)) for result in results)
        # Invalidate only once no racing operation is still on its way to the pool (the signal
        # the fixed sleep once stood in for).
        await wait_until(lambda: asyncio.all_tasks() <= running_before)
        await session.invalidate()
    finally:
        await engine.dispose()
