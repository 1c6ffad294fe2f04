"""The log *writers*: activity rows (in the caller's transaction), error rows (in their own),
and the scrubbing that keeps secrets out of both.

Kernel: every domain and the graph layer write logs, so this imports only the kernel and
`logs/models.py`. Reading the logs back is `logs/service.py`."""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from datetime import UTC, datetime
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


# Secret-looking text inside free text (exception messages, stacks): JWTs, bearer credentials,
# OpenAI-style API keys, `password=...`-style assignments, and PostgreSQL's
# `Key (token_hash)=(...)` details of a secret column, asyncpg's echo of a query argument.
_SECRET_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[redacted-key]"),
    (
        re.compile(
            r"(?i)([\"']?\b(?:password|passwd|pwd|secret|token|api[_-]?key|authorization|"
            r"refresh_?token|access_?token|password_?hash|token_?hash)[\"']?\s*[:=]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;)}\]]+)"
        ),
        r"\1[redacted]",
    ),
    (
        re.compile(r"(?i)(\((?:[a-z_]*(?:password|token|secret)[a-z_]*)\)=\()[^)]*(\))"),
        r"\1[redacted]\2",
    ),  # asyncpg quotes the value of a bad query argument: a password or token on its way in.
    (
        re.compile(r"(query argument \$\d+: )(.*?)( \([^()\n]*\))?$", re.MULTILINE),
        r"\1[redacted]\3",
    ),
)


def scrub_text(text: str) -> str:
    """`text` with secret-looking substrings (tokens, keys, password assignments) redacted."""
    for pattern, replacement in _SECRET_TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub(details: Any) -> Any:
    """A copy of `details` with secret-looking keys replaced by "[redacted]" and
    secret-looking substrings of string values redacted (see `scrub_text`)."""
    if isinstance(details, dict):
        return {
            key: "[redacted]"
            if str(key).replace("_", "").replace("-", "").lower() in SECRET_KEYS
            else scrub(value)
            for key, value in details.items()
        }
    if isinstance(details, (list, tuple)):
        return [scrub(item) for item in details]
    if isinstance(details, str):
        return scrub_text(details)
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
        # Set here, not by the database: now() is the transaction's start, so rows written in
        # one transaction (or a test's outer transaction) would tie and lose their order.
        created_at=datetime.now(UTC),
    )
    db.add(row)
    return row


def describe_exception(error: BaseException) -> tuple[str, str, str]:
    """(type, message, stack) of an exception, for an ErrorLog row, secrets redacted."""
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return error_type[:200], scrub_text(str(error))[:4000], scrub_text(stack)[-20000:]


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
        message=scrub_text(message or "")[:4000],
        stack=stack,
        operation_name=operation_name[:200] if operation_name else None,
        path=path[:500] if path else None,
        user_id=user_id,
        upstream_status=upstream_status,
        upstream_request_id=upstream_request_id,
        details=scrub(details) if details else None,
        created_at=datetime.now(UTC),
    )
    try:
        async with sessionmaker() as session, session.begin():
            session.add(row)
    except Exception:
        logger.exception("could not write ErrorLog row %s", request_id)
