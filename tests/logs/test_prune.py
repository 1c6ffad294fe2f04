"""Retention: old ActivityLog and ErrorLog rows are deleted in batches (service and CLI)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.db.engine import create_engine
from atlas_gql.db.migrate import upgrade_to_head
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.errors import BadInput
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, ErrorSource
from atlas_gql.logs.service import prune_logs
from tests.factories import create_activity, create_error, create_usage

# A "now" far in the past, so no other row in the database is older than the cutoffs.
NOW = datetime(1990, 1, 1, tzinfo=UTC)


async def remaining(db: AsyncSession, model: Any) -> list[datetime]:
    rows = await db.execute(
        sa.select(col(model.created_at))
        .where(col(model.created_at) < NOW)
        .order_by(col(model.created_at))
    )
    return list(rows.scalars())


async def test_prune_deletes_only_rows_older_than_each_retention(
    db: AsyncSession, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ages = (200, 120, 91, 89, 31, 29, 1)
    for days in ages:
        await create_activity(db, created_at=NOW - timedelta(days=days))
        await create_error(db, created_at=NOW - timedelta(days=days), source=ErrorSource.UPSTREAM)
        await create_usage(db, user=None, project=None, created_at=NOW - timedelta(days=days))
    await db.commit()

    report = await prune_logs(
        sessionmaker=sessionmaker,
        activity_retention_days=90,
        error_retention_days=30,
        batch_size=2,
        now=NOW,
    )

    assert (report.activity_logs, report.error_logs) == (3, 5)
    assert report.activity_cutoff == NOW - timedelta(days=90)
    assert await remaining(db, ActivityLog) == [NOW - timedelta(days=d) for d in (89, 31, 29, 1)]
    assert await remaining(db, ErrorLog) == [NOW - timedelta(days=d) for d in (29, 1)]
    # API usage is the cost history: never pruned.
    assert len(await remaining(db, ApiUsageLog)) == len(ages)

    again = await prune_logs(
        sessionmaker=sessionmaker,
        activity_retention_days=90,
        error_retention_days=30,
        batch_size=2,
        now=NOW,
    )
    assert (again.activity_logs, again.error_logs) == (0, 0)


async def test_prune_refuses_nonsense(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(BadInput):
        await prune_logs(
            sessionmaker=sessionmaker,
            activity_retention_days=1,
            error_retention_days=1,
            batch_size=0,
        )
    with pytest.raises(BadInput):
        await prune_logs(
            sessionmaker=sessionmaker, activity_retention_days=-1, error_retention_days=1
        )


def run_cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ATLAS_", "DATABASE_URL", "OPENAI_", "REDIS_URL"))
    }
    environment.update(env, DATABASE_URL=database_url)
    return subprocess.run(
        [sys.executable, "-m", "atlas_gql", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_prune_logs_command(make_database: Any) -> None:
    target: DatabaseTarget = make_database("atlas_prune")
    upgrade_to_head(target)
    now = datetime.now(UTC)
    ages = (400, 100, 50, 10, 0)

    async def run(statement: Any) -> Any:
        engine = create_engine(target, pool_size=1)
        try:
            async with AsyncSession(engine) as db, db.begin():
                return (await db.execute(statement)).scalar_one_or_none()
        finally:
            await engine.dispose()

    async def insert() -> None:
        engine = create_engine(target, pool_size=1)
        try:
            async with AsyncSession(engine) as db, db.begin():
                for days in ages:
                    moment = now - timedelta(days=days, minutes=1)
                    db.add(ActivityLog(action="test.old", user_id=None, created_at=moment))
                    db.add(
                        ErrorLog(
                            request_id=f"r{days}",
                            source=ErrorSource.GRAPHQL,
                            error_type="E",
                            message="m",
                            created_at=moment,
                            fingerprint=f"f{days}",
                            window_start=moment,
                            last_seen_at=moment,
                        )
                    )
        finally:
            await engine.dispose()

    def counts() -> tuple[int, int]:
        count = sa.select(sa.func.count())
        return (
            asyncio.run(run(count.select_from(ActivityLog))),
            asyncio.run(run(count.select_from(ErrorLog))),
        )

    asyncio.run(insert())
    url = target.url.set(drivername="postgresql").render_as_string(hide_password=False)

    # Defaults from the settings: activity 90 days, errors 30 days.
    result = run_cli(
        "prune-logs",
        "--batch-size",
        "1",
        database_url=url,
        ATLAS_LOG_RETENTION_DAYS="90",
        ATLAS_ERROR_LOG_RETENTION_DAYS="30",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "deleted 2 activity log rows older than 90 days and 3 error log rows older than 30 days"
    )
    assert counts() == (3, 2)

    result = run_cli("prune-logs", "--older-than-days", "5", database_url=url)
    assert result.returncode == 0, result.stderr
    assert "deleted 2 activity log rows older than 5 days and 1 error log rows" in result.stdout
    assert counts() == (1, 1)

    refused = run_cli("prune-logs", "--batch-size", "0", database_url=url)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert counts() == (1, 1)
