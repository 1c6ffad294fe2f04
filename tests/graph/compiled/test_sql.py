"""The SQL encodings give, byte for byte, the text of the Python functions they stand for."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from atlas_gql.db.pagination import encode_cursor
from atlas_gql.graph.compiled.sql import global_id, iso_datetime, keyset_cursor
from atlas_gql.ids import encode_global_id

INSTANTS = [
    datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 3, 1, 12, 0, 0, 999999, tzinfo=UTC),
    datetime(2026, 3, 1, 12, 0, 0, 120000, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2024, 2, 29, 0, 0, 0, 500, tzinfo=UTC),
    datetime(1000, 1, 1, 0, 0, 0, tzinfo=UTC),
    # Stored from another zone: PostgreSQL keeps the instant, Python reads it back in UTC.
    datetime(2026, 7, 1, 2, 30, 15, 42, tzinfo=timezone(timedelta(hours=5, minutes=30))),
]
TYPES = ["User", "Project", "ProjectMember", "ActivityLog", "ErrorLog", "X"]


async def select_one(connection: AsyncConnection, expression: sa.ColumnElement[str]) -> str:
    value = (await connection.execute(sa.select(expression))).scalar_one()
    assert isinstance(value, str)
    return value


async def test_global_ids_match_encode_global_id(connection: AsyncConnection) -> None:
    for type_name in TYPES:
        for _ in range(20):
            object_id = uuid.uuid4()
            expected = encode_global_id(type_name, object_id)
            sql = global_id(type_name, sa.literal(object_id, sa.Uuid))
            assert await select_one(connection, sql) == expected


async def test_datetimes_match_isoformat_of_what_asyncpg_returns(
    connection: AsyncConnection,
) -> None:
    # The session's time zone must not matter.
    await connection.execute(sa.text("SET LOCAL TIME ZONE 'America/St_Johns'"))
    for instant in INSTANTS:
        read_back = instant.astimezone(UTC)
        sql = iso_datetime(sa.literal(instant, sa.DateTime(timezone=True)))
        assert await select_one(connection, sql) == read_back.isoformat(), instant


async def test_cursors_match_encode_cursor(connection: AsyncConnection) -> None:
    for instant in INSTANTS:
        object_id = uuid.uuid4()
        expected = encode_cursor(instant.astimezone(UTC), object_id)
        sql = keyset_cursor(
            sa.literal(instant, sa.DateTime(timezone=True)), sa.literal(object_id, sa.Uuid)
        )
        assert await select_one(connection, sql) == expected, instant
