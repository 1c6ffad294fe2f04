"""The async engine, its session factory, and creating the database and schema on demand."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from atlas_gql.db.session import SerializedAsyncSession
from atlas_gql.db.url import DatabaseTarget

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def create_engine(
    target: DatabaseTarget,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    pool_timeout: float = 30.0,
    echo: bool = False,
    ping_after_idle: float = 10.0,
) -> AsyncEngine:
    """An asyncpg engine honouring the target's search_path; a pooled connection idle for
    more than `ping_after_idle` seconds is checked when it is taken (`ping_idle_connections`).
    `pool_size` connections are kept, `max_overflow` (default: as many) more opened while all
    are busy; a checkout waits up to `pool_timeout` seconds for one (then DB_UNAVAILABLE)."""
    # asyncpg's connect timeout, so a silent server fails fast instead of after 60 s.
    connect_args: dict[str, object] = {"timeout": 10, **target.connect_args}
    engine = create_async_engine(
        target.url,
        connect_args=connect_args,
        # Bound parameters never appear in error messages (and so never in ErrorLog rows).
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        echo=echo,
    )
    ping_idle_connections(engine.sync_engine, after=ping_after_idle)
    return engine


_IDLE_SINCE = "atlas_idle_since"


def ping_idle_connections(engine: Engine, *, after: float) -> None:
    """SQLAlchemy's `pool_pre_ping` checks every connection at every checkout, and asyncpg's
    check is three round trips (BEGIN, an empty statement, ROLLBACK): under load that was a
    third of a read's statements (issue 13). A connection used less than `after` seconds ago
    is known to be alive; one idle longer (the server may have restarted or dropped it) is
    checked, and replaced when the check fails. A connection that breaks in use fails that
    statement with DB_UNAVAILABLE and is discarded by the pool (a disconnect invalidates it)."""

    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_when_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < after:
            return  # new, or used moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and takes (or opens) another.
            raise exc.DisconnectionError(f"idle connection failed its check: {error}") from error


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(
        engine, class_=SerializedAsyncSession, expire_on_commit=False, autoflush=False
    )


def _asyncpg_dsn(target: DatabaseTarget, database: str) -> dict[str, object]:
    url = target.url.set(database=database)
    params: dict[str, object] = {
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "port": url.port,
    }
    host = url.host or url.query.get("host")
    params["host"] = host if isinstance(host, str) else None
    if "ssl" in url.query:
        params["ssl"] = url.query["ssl"]
    return {key: value for key, value in params.items() if value is not None}


async def ensure_database(target: DatabaseTarget, *, timeout: float = 10.0) -> None:
    """Create the database and the schema when missing, as `prisma migrate` would."""
    database = target.database
    if not _IDENTIFIER.match(database):
        raise ValueError(f"unsupported database name {database!r}")
    try:
        conn = await asyncpg.connect(**_asyncpg_dsn(target, database), timeout=timeout)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(**_asyncpg_dsn(target, "postgres"), timeout=timeout)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # created concurrently by another worker
        finally:
            await admin.close()
        conn = await asyncpg.connect(**_asyncpg_dsn(target, database), timeout=timeout)
    try:
        if target.schema and target.schema != "public":
            if not _IDENTIFIER.match(target.schema):
                raise ValueError(f"unsupported schema name {target.schema!r}")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"')
    finally:
        await conn.close()


async def drop_database(target: DatabaseTarget, *, timeout: float = 10.0) -> None:
    """Drop the target database (tests use this for their throw-away database)."""
    admin = await asyncpg.connect(**_asyncpg_dsn(target, "postgres"), timeout=timeout)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    finally:
        await admin.close()


async def can_connect(target: DatabaseTarget, *, timeout: float = 2.0) -> bool:
    """True when a server answers at the target (its maintenance database is enough)."""
    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(**_asyncpg_dsn(target, "postgres"), timeout=timeout),
            timeout,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True
