"""Writing log rows: activity (in the caller's transaction) and errors (in their own)."""

from __future__ import annotations

import logging
import traceback
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atlas_gql.logs.models import ActivityLog, ErrorLog, ErrorSource

logger = logging.getLogger(__name__)

# Keys whose values never land in a log row.
SECRET_KEYS = frozenset(
    {
        "password",
        "currentpassword",
        "newpassword",
        "token",
        "refreshtoken",
        "accesstoken",
        "authorization",
        "secret",
        "apikey",
        "api_key",
        "password_hash",
    }
)


def scrub(details: Any) -> Any:
    """A copy of `details` with secret-looking keys replaced by "[redacted]"."""
    if isinstance(details, dict):
        return {
            key: "[redacted]" if key.replace("_", "").lower() in SECRET_KEYS else scrub(value)
            for key, value in details.items()
        }
    if isinstance(details, list):
        return [scrub(item) for item in details]
    return details


def record_activity(
    *,
    db: AsyncSession,
    action: str,
    user_id: uuid.UUID | None,
    entity_type: str | None = None,
    entity_id: uuid.UUID | str | None = None,
    project_id: uuid.UUID | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
) -> ActivityLog:
    """Add an ActivityLog row to the caller's transaction (committed with the change)."""
    row = ActivityLog(
        action=action,
        user_id=user_id,
        entity_type=entity_type,
        entity_id=str(entity_id) if entity_id is not None else None,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details=scrub(details) if details else None,
    )
    db.add(row)
    return row


def describe_exception(error: BaseException) -> tuple[str, str, str]:
    """(type, message, stack) of an exception, for an ErrorLog row."""
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return error_type[:200], str(error)[:4000], stack[-20000:]


async def record_error(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    request_id: str,
    source: ErrorSource,
    error: BaseException | None = None,
    error_type: str | None = None,
    message: str | None = None,
    operation_name: str | None = None,
    path: str | None = None,
    user_id: uuid.UUID | None = None,
    upstream_status: int | None = None,
    upstream_request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write an ErrorLog row in its own transaction; never raises (logging must not fail)."""
    stack = None
    if error is not None:
        error_type, message, stack = describe_exception(error)
    row = ErrorLog(
        request_id=request_id,
        source=source,
        error_type=(error_type or "error")[:200],
        message=message or "",
        stack=stack,
        operation_name=operation_name[:200] if operation_name else None,
        path=path[:500] if path else None,
        user_id=user_id,
        upstream_status=upstream_status,
        upstream_request_id=upstream_request_id,
        details=scrub(details) if details else None,
    )
    try:
        async with sessionmaker() as session, session.begin():
            session.add(row)
    except Exception:
        logger.exception("could not write ErrorLog row %s", request_id)
