"""DATABASE_URL parsing: every accepted spelling becomes one asyncpg URL plus a search_path."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_DRIVERS = {"postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg"}


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
    try:
        url = make_url(raw.strip())
    except ArgumentError as exc:
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
    url = url.set(drivername="postgresql+asyncpg", query=query)
    connect_args: dict[str, object] = {}
    if schema and schema != "public":
        connect_args["server_settings"] = {"search_path": f'"{schema}",public'}
    return DatabaseTarget(url=url, schema=schema or None, connect_args=connect_args)
