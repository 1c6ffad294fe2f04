"""`atlas-gql`: serve, migrate, seed, create-user, unlock-user, export-schema, prune-logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.config import Settings
from atlas_gql.db.url import DatabaseTarget, DatabaseUrlError

T = TypeVar("T")

cli = typer.Typer(
    name="atlas-gql",
    help="ATLAS: a GraphQL backend for multi-user AI-assistant workspaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            str(error["msg"]).removeprefix("Value error, ") for error in exc.errors()
        )
        raise fail(f"invalid settings: {problems}") from None


def resolve_target(settings: Settings) -> DatabaseTarget:
    from atlas_gql.db.runtime import resolve_database_target

    try:
        return resolve_database_target(settings)
    except DatabaseUrlError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # the embedded server failed to start
        raise fail(f"could not start the embedded PostgreSQL: {exc}") from None


def run_db(target: DatabaseTarget, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run database work; a database that cannot be reached is one clear line, not a traceback."""
    try:
        return asyncio.run(work())
    except (OSError, TimeoutError, DBAPIError, asyncpg.InterfaceError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise fail(f"cannot reach the database at {target.render()}: {reason}") from None
    except (asyncpg.PostgresError, ValueError) as exc:
        # A wrong password, a role that may not create the database, an odd database name.
        raise fail(f"cannot use the database at {target.render()}: {exc}") from None


def run_with_sessions(
    target: DatabaseTarget,
    work: Callable[[async_sessionmaker[AsyncSession]], Coroutine[Any, Any, T]],
) -> T:
    """`run_db` on an engine of one connection, disposed after; an AtlasError is one line."""
    from atlas_gql.db.engine import create_engine, create_sessionmaker
    from atlas_gql.errors import AtlasError

    async def run() -> T:
        engine = create_engine(target, pool_size=1)
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return run_db(target, run)
    except AtlasError as exc:
        raise fail(exc.message) from None


def migrate_and_maybe_seed(
    settings: Settings, target: DatabaseTarget, *, seed_if_empty: bool
) -> None:
    from atlas_gql.db.engine import create_engine, create_sessionmaker, ensure_database
    from atlas_gql.db.migrate import upgrade_to_head
    from atlas_gql.seed import database_is_empty, seed

    async def work() -> None:
        await asyncio.wait_for(ensure_database(target), 15)
        await asyncio.to_thread(upgrade_to_head, target)
        if not seed_if_empty:
            return
        engine = create_engine(target, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as db, db.begin():
                if await database_is_empty(db):
                    report = await seed(db, settings=settings)
                    typer.echo(
                        f"seeded an empty database: {report.users} users, {report.roles} roles"
                    )
        finally:
            await engine.dispose()

    run_db(target, work)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Migrate to head, seed an empty database, then serve /graphql."""
    from atlas_gql import serving, stopping
    from atlas_gql.db.runtime import embedded_postgres, stop_embedded_postgres

    settings = load_settings()
    serving_started = False
    # Ctrl-C, SIGTERM and SIGHUP all end in the `finally` below, which stops the embedded
    # PostgreSQL (unless another live process still uses it).
    with stopping.stopping_on_signals():
        try:
            with stopping.signals_deferred():
                target = resolve_target(settings)
            migrate_and_maybe_seed(settings, target, seed_if_empty=True)
            embedded = embedded_postgres() if not settings.database_url else None
            if embedded is not None:
                # Workers (and reloads) attach to the embedded server this process started.
                os.environ["DATABASE_URL"] = target.url.render_as_string(hide_password=False)
            if workers > 1 and settings.redis_url is None:
                typer.secho(
                    "warning: several workers without REDIS_URL: "
                    "subscribers only see events of their own worker",
                    fg=typer.colors.YELLOW,
                    err=True,
                )
            typer.echo(
                serving.banner(
                    settings=settings,
                    target=target,
                    host=host,
                    port=port,
                    workers=workers,
                    reload=reload,
                    embedded_pgdata=embedded.pgdata if embedded is not None else None,
                )
            )
            serving_started = True
            serving.run_server(
                settings=settings, host=host, port=port, workers=workers, reload=reload
            )
        except KeyboardInterrupt:
            if not serving_started:
                raise typer.Exit(130) from None
        finally:
            with stopping.signals_ignored():
                stopped = stop_embedded_postgres()
            if stopped:
                # The terminal may be gone (SIGHUP): saying so must not fail the exit.
                with contextlib.suppress(OSError):
                    typer.echo("stopped the embedded PostgreSQL")


@cli.command()
def migrate() -> None:
    """Apply every migration (alembic upgrade head)."""
    settings = load_settings()
    target = resolve_target(settings)
    migrate_and_maybe_seed(settings, target, seed_if_empty=False)
    typer.echo(f"database at {target.render()} is at head")


@cli.command("seed")
def seed_command() -> None:
    """Create the seed rows that are missing (idempotent)."""
    from atlas_gql.seed import seed

    settings = load_settings()
    target = resolve_target(settings)

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
        async with sessionmaker() as db, db.begin():
            report = await seed(db, settings=settings)
        sample = "created" if report.created_sample else "already present"
        return (
            f"seed complete: {report.roles} roles, {report.permissions} permissions, "
            f"{report.users} users; sample project {sample}"
        )

    typer.echo(run_with_sessions(target, work))


@cli.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="Email address (sign-in name).")],
    password: Annotated[str, typer.Option(help="At least 8 characters, at most 72 bytes.")],
    role: Annotated[str, typer.Option(help="ADMIN, USER or PROJECT_MANAGER.")] = "USER",
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a user with a global role."""
    import atlas_gql.models  # noqa: F401  (every table: the activity row's foreign keys)
    from atlas_gql.auth.actor import Actor
    from atlas_gql.auth.admin import UserCreate
    from atlas_gql.auth.admin import create_user as create_account
    from atlas_gql.auth.models import RoleName
    from atlas_gql.db.utils import execute_transaction

    try:
        role_name = RoleName(role.upper())
    except ValueError:
        raise fail(
            f"unknown role {role!r}; choose ADMIN, USER or PROJECT_MANAGER", code=2
        ) from None
    settings = load_settings()
    target = resolve_target(settings)

    async def create(db: AsyncSession) -> str:
        # The system actor: the audit trail shows the account came from the command line.
        user = await create_account(
            db=db,
            settings=settings,
            actor=Actor.system(),
            data=UserCreate(email=email, password=password, name=name, roles=(role_name,)),
        )
        return f"created {user.email} ({role_name.value}) id={user.id}"

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
        return await execute_transaction(sessionmaker, create, attempts=1)

    typer.echo(run_with_sessions(target, work))


@cli.command("unlock-user")
def unlock_user(
    email: Annotated[str, typer.Option(help="The account's email (sign-in name).")],
) -> None:
    """Lift every sign-in lock and backoff of an account (all addresses), e.g. after an attack."""
    import atlas_gql.models  # noqa: F401  (every table: the activity row's foreign keys)
    from atlas_gql.auth.actor import Actor
    from atlas_gql.auth.ratelimit import clear_redis_counters, unlock_account
    from atlas_gql.db.utils import execute_transaction

    settings = load_settings()
    target = resolve_target(settings)

    async def unlock(db: AsyncSession) -> int:
        return await unlock_account(db=db, email=email, actor=Actor.system())

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        return await execute_transaction(sessionmaker, unlock, attempts=1)

    cleared = run_with_sessions(target, work)
    message = f"unlocked {email.strip().lower()}: {cleared} counted sign-in attempts cleared"
    if settings.redis_url:
        try:
            keys = asyncio.run(clear_redis_counters(settings=settings, email=email))
        except Exception as exc:  # the database is cleared; say what is left
            raise fail(
                f"{message}, but Redis could not be cleared ({type(exc).__name__}: {exc}); "
                "its counters expire with ATLAS_LOGIN_FAILURE_WINDOW"
            ) from None
        message += f", {keys} Redis counters deleted"
    typer.echo(message)


@cli.command("export-schema")
def export_schema(
    path: Annotated[Path | None, typer.Argument(help="File to write; stdout when omitted.")] = None,
) -> None:
    """Print the GraphQL SDL (or write it to PATH)."""
    from atlas_gql.graph.schema import export_sdl

    sdl = export_sdl()
    if path is None:
        sys.stdout.write(sdl)
    else:
        path.write_text(sdl, encoding="utf-8")


@cli.command("prune-logs")
def prune_logs_command(
    older_than_days: Annotated[
        int | None,
        typer.Option(
            help="Delete rows older than this many days (default: ATLAS_LOG_RETENTION_DAYS, "
            "and ATLAS_ERROR_LOG_RETENTION_DAYS for error rows).",
            min=0,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Rows deleted per statement and transaction.", min=1)
    ] = 5000,
) -> None:
    """Delete old ActivityLog and ErrorLog rows in batches (API usage rows are kept), and the
    rows of rate-limit buckets that are full again."""
    from atlas_gql.auth.buckets import prune_full_buckets
    from atlas_gql.db.utils import execute_transaction
    from atlas_gql.logs.service import PruneReport, prune_logs

    settings = load_settings()
    activity_days = settings.atlas_log_retention_days
    error_days = settings.atlas_error_log_retention_days or activity_days
    if older_than_days is not None:
        activity_days = error_days = older_than_days
    target = resolve_target(settings)

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[PruneReport, int]:
        report = await prune_logs(
            sessionmaker=sessionmaker,
            activity_retention_days=activity_days,
            error_retention_days=error_days,
            batch_size=batch_size,
        )
        buckets = await execute_transaction(
            sessionmaker, lambda db: prune_full_buckets(db=db), attempts=1
        )
        return report, buckets

    report, buckets = run_with_sessions(target, work)
    typer.echo(
        f"deleted {report.activity_logs} activity log rows older than {activity_days} days "
        f"and {report.error_logs} error log rows older than {error_days} days"
        + (f"; {buckets} full rate-limit buckets" if buckets else "")
    )


@cli.command("meter-storage")
def meter_storage_command() -> None:
    """Write today's vector-store storage rows (ApiUsageLog, one per store and UTC day; run
    it daily, e.g. from cron; running it again the same day adds nothing)."""
    from atlas_gql.ai.provider import create_client
    from atlas_gql.ai.storage import meter_storage
    from atlas_gql.ai.vector_stores import VectorStores

    settings = load_settings()
    target = resolve_target(settings)

    async def work(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
        client = create_client(settings)
        try:
            return await meter_storage(
                sessionmaker=sessionmaker, stores=VectorStores(client), settings=settings
            )
        finally:
            await client.close()

    written = run_with_sessions(target, work)
    typer.echo(f"metered {written} vector stores")


def main() -> None:
    from atlas_gql.stopping import stopping_on_signals

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM and SIGHUP end every command the way Ctrl-C does, so exit handlers (which stop
    # an embedded PostgreSQL the command started) run; `serve` adds its own graceful path.
    with stopping_on_signals():
        cli()


if __name__ == "__main__":
    main()
