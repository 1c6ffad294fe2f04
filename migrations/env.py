"""Alembic environment: async engine, the app's DATABASE_URL handling, one MetaData."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from atlas_gql.db.engine import create_engine, ensure_database
from atlas_gql.db.url import DatabaseTarget
from atlas_gql.models import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _target() -> DatabaseTarget:
    target = config.attributes.get("database_target")
    if isinstance(target, DatabaseTarget):
        return target
    # Run from the `alembic` command line: resolve like the app does.
    from atlas_gql.config import get_settings
    from atlas_gql.db.runtime import resolve_database_target

    return resolve_database_target(get_settings())


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    target = _target()
    await ensure_database(target)
    engine = create_engine(target, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=_target().url.render_as_string(hide_password=False),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
