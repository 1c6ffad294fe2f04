"""The embedded PostgreSQL (pgserver) used when DATABASE_URL is unset."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives under `data_dir/pgdata`; reused across starts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: Any = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def start(self) -> str:
        """Start (or attach to) the server and return its postgresql:// URL for database `atlas`."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            import pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        # cleanup_mode="stop" stops the server when this process ends but keeps its data.
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        uri: str = self._server.get_uri("atlas")
        logger.info("embedded PostgreSQL running in %s", self.pgdata)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
