"""DATABASE_URL parsing: every accepted spelling becomes one asyncpg URL plus a search_path."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_DRIVERS = {"postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg"}
# Query parameters SQLAlchemy's asyncpg dialect passes to asyncpg.connect.
ASYNCPG_QUERY_PARAMETERS = frozenset(
    {
        "host",
        "port",
        "ssl",
        "direct_tls",
        "timeout",
        "command_timeout",
        "statement_cache_size",
        "prepared_statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "passfile",
    }
)
logger = logging.getLogger(__name__)


class DatabaseUrlError(ValueError):
    """DATABASE_URL cannot be understood."""


@dataclass(frozen=True)
class DatabaseTarget:
    """Where ATLAS's tables live: a SQLAlchemy URL and the schema to put first on search_path."""

    url: URL
    schema: str | None = None
    connect_args: dict[str, object] = field(default_factory=dict)

    @property
    def database(self) -> str:
        return self.url.database or "postgres"

    def with_database(self, database: str) -> DatabaseTarget:
        return DatabaseTarget(self.url.set(database=database), self.schema, self.connect_args)

    def render(self) -> str:
        """The URL without its password, for messages."""
        return self.url.render_as_string(hide_password=True)


def parse_database_url(raw: str) -> DatabaseTarget:
    """Accept `postgres://`, `postgresql://`, `postgresql+asyncpg://` and Prisma's `?schema=`."""
    raw = raw.strip()
    if raw.partition("://")[2].count("@") > 1:
        raise DatabaseUrlError(
            "DATABASE_URL has more than one '@': percent-encode special "
            "characters of the user name and password (@ is %40, # is %23, / is %2F)"
        )
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(f"DATABASE_URL is malformed: {exc}") from None
    if url.drivername not in _DRIVERS:
        raise DatabaseUrlError(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://...), not {url.drivername!r}"
        )
    if not url.database:
        raise DatabaseUrlError("DATABASE_URL must name a database (postgresql://host/NAME)")
    query = dict(url.query)
    schema = query.pop("schema", None)
    if isinstance(schema, tuple):
        schema = schema[-1]
    # libpq spells TLS as sslmode; asyncpg takes it as `ssl`.
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    # Prisma-style URLs carry options asyncpg does not take (connection_limit, pool_timeout,
    # pgbouncer, ...): pass on only what asyncpg understands.
    ignored = sorted(set(query) - ASYNCPG_QUERY_PARAMETERS)
    if ignored:
        logger.warning("DATABASE_URL: ignoring parameters asyncpg does not take: %s", ignored)
        query = {key: value for key, value in query.items() if key not in ignored}
    url = url.set(drivername="postgresql+asyncpg", query=query)
    connect_args: dict[str, object] = {}
    if schema and schema != "public":
        connect_args["server_settings"] = {"search_path": f'"{schema}",public'}
    return DatabaseTarget(url=url, schema=schema or None, connect_args=connect_args)
