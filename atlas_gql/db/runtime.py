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
    """Start the embedded server once per process; stopped cleanly when the process exits."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            _embedded = EmbeddedPostgres(settings.atlas_data_dir)
            uri = _embedded.start()
            atexit.register(_embedded.stop)
            return uri
        return _embedded.start()


def resolve_database_target(settings: Settings) -> DatabaseTarget:
    """DATABASE_URL when set; otherwise the embedded PostgreSQL under ATLAS_DATA_DIR."""
    if settings.database_url:
        return parse_database_url(settings.database_url)
    return parse_database_url(start_embedded_postgres(settings))
