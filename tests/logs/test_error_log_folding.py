"""Issue 10 part 8: error logs cannot be flooded. Repeats of one error (source, code, path,
exception type) in a window fold into one row with a count; a source (anonymous requests
together, or one user) adds at most ATLAS_ERROR_LOG_ROWS_PER_WINDOW rows per window, then
counts on its overflow row; concurrent writers lose no count; PostgreSQL's quoting of the value
it refused never reaches a row."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.app import create_app
from atlas_gql.auth import account
from atlas_gql.db.engine import create_engine
from atlas_gql.db.migrate import upgrade_to_head
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.logs.audit import ErrorLogPolicy, error_fingerprint, record_error
from atlas_gql.logs.models import ErrorLog, ErrorSource
from tests.conftest import GraphQLClient, error_codes, make_settings

USER_TEXT = "my private message to the assistant"


async def rows_of(db: AsyncSession, **where: Any) -> list[ErrorLog]:
    statement = sa.select(ErrorLog)
    for name, value in where.items():
        column = getattr(ErrorLog, name)
        statement = statement.where(column.is_(None) if value is None else column == value)
    return list((await db.execute(statement.order_by(col(ErrorLog.created_at)))).scalars())


class TestFolding:
    async def test_repeats_of_one_error_are_one_row_with_a_count(
        self, sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
    ) -> None:
        user_id = await db.scalar(sa.text("SELECT id FROM users ORDER BY email LIMIT 1"))
        for index in range(7):
            await record_error(
                policy=ErrorLogPolicy(),
                sessionmaker=sessionmaker,
                request_id=f"fold-{index}",
                source=ErrorSource.GRAPHQL,
                error=RuntimeError(f"boom {index}"),
                # list indexes do not make another kind of error
                path=f"projects.edges.{index}.node.name",
                operation_name="Fold",
                user_id=user_id,
            )
        [row] = await rows_of(db, operation_name="Fold")
        assert row.count == 7
        assert row.request_id == "fold-0"  # the first occurrence's
        assert row.message == "boom 0"
        assert row.last_seen_at > row.created_at
        assert row.window_start <= row.created_at < row.window_start + timedelta(seconds=300)

    async def test_each_part_of_the_fingerprint_makes_its_own_row(
        self, sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
    ) -> None:
        kinds = [
            (ErrorSource.GRAPHQL, "a.b", RuntimeError("x")),
            (ErrorSource.DATABASE, "a.b", RuntimeError("x")),
            (ErrorSource.GRAPHQL, "a.c", RuntimeError("x")),
            (ErrorSource.GRAPHQL, "a.b", ValueError("x")),
        ]
        for source, path, error in kinds * 2:
            await record_error(
                policy=ErrorLogPolicy(),
                sessionmaker=sessionmaker,
                request_id="kinds",
                source=source,
                error=error,
                path=path,
                user_id=None,
            )
        rows = await rows_of(db, request_id="kinds")
        assert len(rows) == 4
        assert [row.count for row in rows] == [2, 2, 2, 2]
        # the code is part of it too (an upstream's status)
        assert error_fingerprint(
            source=ErrorSource.UPSTREAM, code="502", path="p", error_type="t"
        ) != error_fingerprint(source=ErrorSource.UPSTREAM, code="429", path="p", error_type="t")

    async def test_a_source_adds_few_rows_per_window_then_counts_on_its_overflow_row(
        self, sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
    ) -> None:
        policy = ErrorLogPolicy(window_seconds=3600, rows_per_window=5)
        users = list((await db.execute(sa.text("SELECT id FROM users LIMIT 2"))).scalars())
        for who in (None, *users):
            for index in range(40):
                await record_error(
                    sessionmaker=sessionmaker,
                    request_id=f"flood-{who}",
                    source=ErrorSource.GRAPHQL,
                    error_type=f"Kind{index % 20}",
                    message=USER_TEXT,
                    path=f"alias{index}.{who}",
                    user_id=who,
                    policy=policy,
                )
        for who in (None, *users):
            rows = await rows_of(db, request_id=f"flood-{who}")
            assert len(rows) == 6, who  # 5 kinds, then the overflow row
            assert sum(row.count for row in rows) == 40
            [overflow] = [row for row in rows if row.error_type == "atlas.ErrorLogOverflow"]
            assert overflow.count == 35
            assert "ATLAS_ERROR_LOG_ROWS_PER_WINDOW (5)" in overflow.message

    async def test_a_new_window_starts_new_rows(self) -> None:
        policy = ErrorLogPolicy(window_seconds=60)
        from datetime import UTC, datetime

        moment = datetime(2026, 1, 1, 12, 0, 59, tzinfo=UTC)
        assert policy.window_start(moment) == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        assert policy.window_start(moment + timedelta(seconds=1)) == datetime(
            2026, 1, 1, 12, 1, tzinfo=UTC
        )


@pytest.fixture
def own_database(make_database: Any) -> DatabaseTarget:
    """A migrated database of this test's own (committed rows, concurrent connections)."""
    target: DatabaseTarget = make_database("atlas_errlog")
    upgrade_to_head(target)
    return target


async def test_concurrent_writers_lose_no_count_and_keep_the_bound(
    own_database: DatabaseTarget,
) -> None:
    engine = create_engine(own_database, pool_size=10)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    policy = ErrorLogPolicy(window_seconds=3600, rows_per_window=4)
    try:
        await asyncio.gather(
            *(
                record_error(
                    sessionmaker=sessionmaker,
                    request_id=f"concurrent-{index}",
                    source=ErrorSource.GRAPHQL,
                    error_type=f"Kind{index % 10}",
                    message="x",
                    path="field",
                    user_id=None,
                    policy=policy,
                )
                for index in range(200)
            )
        )
        async with sessionmaker() as db:
            rows = list((await db.execute(sa.select(ErrorLog))).scalars())
    finally:
        await engine.dispose()
    assert len(rows) == 5  # 4 kinds, one overflow row
    assert sum(row.count for row in rows) == 200


async def test_hundreds_of_bad_anonymous_requests_write_a_handful_of_rows(
    own_database: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous requests that each hit a server fault under a fresh alias (so a fresh path):
    every one answers INTERNAL_SERVER_ERROR with a requestId, and the rows stay bounded."""
    calls = 0

    async def broken_refresh(**_: Any) -> Any:
        nonlocal calls
        calls += 1
        raise (KeyError if calls % 2 else LookupError)(f"bug while reading {USER_TEXT}")

    monkeypatch.setattr(account, "refresh", broken_refresh)
    settings = make_settings(own_database, atlas_error_log_rows_per_window=8)
    # Connections for every request in flight and its error row: none opened mid-run (a
    # connection attempt can time out on a loaded machine, and a lost row would miscount).
    engine = create_engine(own_database, pool_size=25)
    app = create_app(settings, engine=engine)
    total = 300
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                gql = GraphQLClient(client)
                for batch in range(total // 10):
                    bodies = await asyncio.gather(
                        *(
                            gql(
                                f'mutation {{ a{batch}_{index}: refreshSession(refreshToken: "x")'
                                " { accessToken } }"
                            )
                            for index in range(10)
                        )
                    )
                    for body in bodies:
                        assert error_codes(body) == ["INTERNAL_SERVER_ERROR"], body
                        assert body["errors"][0]["extensions"]["requestId"]
            async with AsyncSession(engine) as db:
                rows = list((await db.execute(sa.select(ErrorLog))).scalars())
    finally:
        await engine.dispose()
    assert calls == total
    # A window boundary may fall inside the run: at most two windows' worth.
    assert len(rows) <= 2 * (8 + 1), len(rows)
    assert sum(row.count for row in rows) == total
    assert all(row.user_id is None for row in rows)
    assert any(row.error_type == "atlas.ErrorLogOverflow" for row in rows)


async def test_postgresql_quoting_the_refused_value_never_reaches_a_row(
    sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
) -> None:
    """Real driver errors whose text or context quotes what the user sent."""
    statements: list[tuple[str, Any]] = [
        ("SELECT CAST(:value AS jsonb)", json.dumps({"note": USER_TEXT + "\u0000 and more"})),
        ("SELECT CAST(:value AS uuid)", USER_TEXT),
        ("SELECT CAST(:value AS int)", USER_TEXT),
        ("SELECT CAST(:value AS text)", USER_TEXT + "\x00"),
        ("SELECT CAST(:value AS text)", USER_TEXT + "\ud800"),
        ("SELECT CAST(CAST(:value AS text) AS date)", USER_TEXT),
    ]
    for index, (statement, value) in enumerate(statements):
        try:
            async with db.begin_nested():
                await db.execute(sa.text(statement), {"value": value})
        except Exception as error:
            await record_error(
                policy=ErrorLogPolicy(),
                sessionmaker=sessionmaker,
                request_id=f"quoted-{index}",
                source=ErrorSource.DATABASE,
                error=error,
                path=f"quoted{index}",
            )
        else:
            pytest.fail(f"{statement} did not fail")
    rows = await rows_of(db, source=ErrorSource.DATABASE)
    quoted = [row for row in rows if row.request_id.startswith("quoted-")]
    assert len(quoted) == len(statements)
    for row in quoted:
        stored = f"{row.message}\n{row.stack}\n{row.details}"
        assert "private message" not in stored, stored
        assert "\x00" not in stored


async def test_record_error_stores_unstorable_text_replaced(
    sessionmaker: async_sessionmaker[AsyncSession], db: AsyncSession
) -> None:
    await record_error(
        policy=ErrorLogPolicy(),
        sessionmaker=sessionmaker,
        request_id="nul\x00id",
        source=ErrorSource.GRAPHQL,
        error_type="Bad\x00Type",
        message="a\x00b\ud800c",
        operation_name="Op\x00",
        path="x\udfff",
        details={"k\x00": ["v\x00"]},
    )
    [row] = await rows_of(db, error_type="Bad\ufffdType")
    assert row.message == "a\ufffdb\ufffdc"
    assert row.request_id == "nul\ufffdid"
    assert row.details == {"k\ufffd": ["v\ufffd"]}
