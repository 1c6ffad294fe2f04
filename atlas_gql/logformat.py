"""The process's log output: one JSON object per line (ATLAS_LOG_FORMAT=json, the production
default) or readable text (development). Standard library logging only.

A record's `extra={"fields": {...}}` become top-level keys of its JSON line (and `key=value`
pairs in text), which is how the per-request access line (atlas_gql.observability) is written.
Uvicorn's own loggers propagate here; its access log is off (`serve`), as the access line
replaces it without the query string, which may hold a token or a password."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from atlas_gql.config import LogFormat, Settings
from atlas_gql.metrics import RequestRecord

ACCESS_LOGGER = "atlas.access"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the record's fields, and
    the exception (type and traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, under --workers N
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def log_format(settings: Settings) -> LogFormat:
    if settings.atlas_log_format is not None:
        return settings.atlas_log_format
    return LogFormat.JSON if settings.is_production else LogFormat.TEXT


def configure_logging(settings: Settings) -> None:
    """Send every logger (uvicorn's included) to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format(settings) is LogFormat.JSON else TextFormatter()
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.atlas_log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Even if something turns uvicorn's access log back on, its lines (which carry the
    # query string) are dropped.
    logging.getLogger("uvicorn.access").disabled = True


_access_logger = logging.getLogger(ACCESS_LOGGER)


def write_access_line(record: RequestRecord, *, level: int = logging.INFO, **fields: Any) -> None:
    """The one line per request (or WebSocket operation): ids, operation, viewer id (never an
    email or a token), duration, SQL statements, outcome, and what the caller adds (status,
    bytes, path without its query string)."""
    if not _access_logger.isEnabledFor(level):
        return
    line: dict[str, Any] = {
        "request_id": record.request_id,
        "operation_type": record.operation_type,
        "operation_name": record.operation_name,
        "viewer_id": record.viewer_id,
        "outcome": record.outcome,
        "duration_ms": round(record.elapsed() * 1000, 2),
        "sql_statements": record.sql_statements,
        **fields,
        **record.extra,
    }
    _access_logger.log(level, "request", extra={"fields": line})
