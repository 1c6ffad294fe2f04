"""Turning settings into a database target: DATABASE_URL, or the embedded PostgreSQL."""

from __future__ import annotations

import atexit
import threading

from atlas_gql.config import Settings
from atlas_gql.db.embedded import EmbeddedPostgres
from atlas_gql.db.url import DatabaseTarget, parse_database_url

_embedded: EmbeddedPostgres | None = None
_embedded_lock = threading.Lock()


def start_embedded_postgres(settings: Settings) -> str:
    """Start the embedded server once per process. `stop_embedded_postgres` stops it; so does
    the process's exit, as a backstop for commands that simply return."""
    global _embedded
    with _embedded_lock:
        first = _embedded is None
        if _embedded is None:
            _embedded = EmbeddedPostgres(settings.atlas_data_dir)
        try:
            return _embedded.start()
        finally:
            if first:
                # Registered after pgserver's own exit handler, so it runs first (LIFO).
                atexit.register(stop_embedded_postgres)


def embedded_postgres() -> EmbeddedPostgres | None:
    """The embedded server this process started, if any."""
    return _embedded


def stop_embedded_postgres() -> bool:
    """Stop the embedded server unless another live process still uses it (idempotent).
    Returns whether it was stopped by this call."""
    with _embedded_lock:
        return _embedded.stop() if _embedded is not None else False


def resolve_database_target(settings: Settings) -> DatabaseTarget:
    """DATABASE_URL when set; otherwise the embedded PostgreSQL under ATLAS_DATA_DIR."""
    if settings.database_url:
        return parse_database_url(settings.database_url)
    return parse_database_url(start_embedded_postgres(settings))
