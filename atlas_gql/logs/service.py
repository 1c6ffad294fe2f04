"""Writing log rows (activity in the caller's transaction, errors in their own), reading them
back for administrators and project managers, and pruning old rows."""

from __future__ import annotations

import enum
import logging
import re
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.viewer import Viewer
from atlas_gql.errors import BadInput, Forbidden
from atlas_gql.graph.pagination import Ordering, Page, paginate
from atlas_gql.graph.relay import PageRequest
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, ErrorSource
from atlas_gql.projects.access import project_role_of, require_project_role
from atlas_gql.projects.models import ProjectMember, ProjectRole

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


# ---------------------------------------------------------------------------------------------
# Reading the logs (activityLogs, apiUsage, errorLogs) and pruning them.


class UsageGroup(enum.StrEnum):
    DAY = "DAY"
    USER = "USER"
    PROJECT = "PROJECT"
    MODEL = "MODEL"


# The key of a bucket whose user or project no longer exists (deleted; the row outlives it).
UNKNOWN_KEY = "unknown"


@dataclass(frozen=True)
class TimeWindow:
    """A half-open interval [start, end) of aware datetimes; either end may be open."""

    start: datetime | None = None
    end: datetime | None = None

    def conditions(self, column: Any) -> list[Any]:
        conditions = []
        if self.start is not None:
            conditions.append(column >= self.start)
        if self.end is not None:
            conditions.append(column < self.end)
        return conditions


def time_window(*, start: datetime | None, end: datetime | None) -> TimeWindow:
    """Check a `from`/`to` pair: both time-zone aware (a naive time is ambiguous and refused
    with BAD_USER_INPUT), and `from` strictly before `to`."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise BadInput(
                f"`{name}` needs a time zone offset (e.g. 2026-01-01T00:00:00Z).",
                field=f"filter.{name}",
            )
    if start is not None and end is not None and start >= end:
        raise BadInput("`from` must be before `to`.", field="filter.from")
    return TimeWindow(start=start, end=end)


@dataclass(frozen=True)
class ActivityFilter:
    user_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    action: str | None = None
    entity_type: str | None = None
    window: TimeWindow = TimeWindow()


@dataclass(frozen=True)
class UsageFilter:
    user_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    model: str | None = None
    window: TimeWindow = TimeWindow()


@dataclass(frozen=True)
class UsageBucket:
    """One group of ApiUsageLog rows. `key` is a day (YYYY-MM-DD, UTC), a user or project id
    (raw uuid; the graph turns it into a global id) or a model name."""

    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


def _newest_first(model: Any) -> Ordering:
    return Ordering(sort=col(model.created_at), id=col(model.id), descending=True)


ACTIVITY_ORDERING = _newest_first(ActivityLog)
ERROR_ORDERING = _newest_first(ErrorLog)
LOG_READER_ROLES = (ProjectRole.OWNER, ProjectRole.MANAGER)


def managed_project_ids(viewer: Viewer) -> sa.Select[Any]:
    """Projects where the viewer is OWNER or MANAGER, as a SQL subquery."""
    return sa.select(col(ProjectMember.project_id)).where(
        col(ProjectMember.user_id) == viewer.user_id,
        col(ProjectMember.role).in_(LOG_READER_ROLES),
    )


async def _manages_any_project(*, db: AsyncSession, viewer: Viewer) -> bool:
    statement = sa.select(sa.exists(managed_project_ids(viewer)))
    return bool((await db.execute(statement)).scalar_one())


async def list_activity_logs(
    *, db: AsyncSession, viewer: Viewer, filter: ActivityFilter, request: PageRequest
) -> Page[ActivityLog]:
    """Activity newest first. ADMIN reads everything; a project OWNER/MANAGER reads the rows of
    their projects (NOT_FOUND / FORBIDDEN for `projectId` of a project they do not manage);
    anyone else is FORBIDDEN."""
    statement = sa.select(ActivityLog)
    if filter.project_id is not None:
        await require_project_role(
            db=db,
            viewer=viewer,
            project_id=filter.project_id,
            minimum=ProjectRole.MANAGER,
            action="read its activity log",
        )
        statement = statement.where(col(ActivityLog.project_id) == filter.project_id)
    elif not viewer.is_admin:
        if not await _manages_any_project(db=db, viewer=viewer):
            raise Forbidden("Only administrators and project owners or managers read activity.")
        statement = statement.where(col(ActivityLog.project_id).in_(managed_project_ids(viewer)))
    if filter.user_id is not None:
        statement = statement.where(col(ActivityLog.user_id) == filter.user_id)
    if filter.action is not None:
        statement = statement.where(col(ActivityLog.action) == filter.action)
    if filter.entity_type is not None:
        statement = statement.where(col(ActivityLog.entity_type) == filter.entity_type)
    statement = statement.where(*filter.window.conditions(col(ActivityLog.created_at)))
    return await paginate(db, statement, ordering=ACTIVITY_ORDERING, request=request)


async def activity_log_visible(*, db: AsyncSession, viewer: Viewer, row: ActivityLog) -> bool:
    """Whether the viewer may read one activity row (ADMIN, or OWNER/MANAGER of its project)."""
    if viewer.is_admin:
        return True
    if row.project_id is None:
        return False
    role = await project_role_of(db=db, project_id=row.project_id, user_id=viewer.user_id)
    return role in LOG_READER_ROLES


def _usage_key(group: UsageGroup) -> sa.ColumnElement[Any]:
    created_utc = sa.func.timezone("UTC", col(ApiUsageLog.created_at))
    if group is UsageGroup.DAY:
        return sa.func.to_char(sa.func.date_trunc("day", created_utc), "YYYY-MM-DD")
    if group is UsageGroup.USER:
        return sa.cast(col(ApiUsageLog.user_id), sa.String)
    if group is UsageGroup.PROJECT:
        return sa.cast(col(ApiUsageLog.project_id), sa.String)
    return sa.cast(col(ApiUsageLog.model), sa.String)


async def api_usage(
    *, db: AsyncSession, viewer: Viewer, filter: UsageFilter, group_by: UsageGroup
) -> list[UsageBucket]:
    """AI usage summed per day, user, project or model, in one GROUP BY statement.

    Who reads what: ADMIN everything. With `projectId`, a project OWNER/MANAGER (others:
    NOT_FOUND / FORBIDDEN) reads that project's usage, optionally of one user. Without it, a
    non-administrator reads only their own usage (`userId` of someone else: FORBIDDEN)."""
    conditions: list[Any] = []
    if filter.project_id is not None:
        await require_project_role(
            db=db,
            viewer=viewer,
            project_id=filter.project_id,
            minimum=ProjectRole.MANAGER,
            action="read its usage",
        )
        conditions.append(col(ApiUsageLog.project_id) == filter.project_id)
        if filter.user_id is not None:
            conditions.append(col(ApiUsageLog.user_id) == filter.user_id)
    elif viewer.is_admin:
        if filter.user_id is not None:
            conditions.append(col(ApiUsageLog.user_id) == filter.user_id)
    else:
        if filter.user_id is not None and filter.user_id != viewer.user_id:
            raise Forbidden(
                "You may read your own usage, or the usage of a project you own or manage "
                "(pass its projectId)."
            )
        conditions.append(col(ApiUsageLog.user_id) == viewer.user_id)
    if filter.model is not None:
        conditions.append(col(ApiUsageLog.model) == filter.model)
    conditions.extend(filter.window.conditions(col(ApiUsageLog.created_at)))

    key = _usage_key(group_by).label("key")
    statement = (
        sa.select(
            key,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.input_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.output_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.cost_usd)), 0),
        )
        .where(*conditions)
        .group_by(key)
        .order_by(key)
    )
    return [
        UsageBucket(
            key=str(group_key) if group_key is not None else UNKNOWN_KEY,
            requests=int(requests),
            input_tokens=int(input_tokens),
            output_tokens=int(output_tokens),
            cost_usd=Decimal(cost),
        )
        for group_key, requests, input_tokens, output_tokens, cost in (
            await db.execute(statement)
        ).all()
    ]


def require_admin(viewer: Viewer, *, what: str) -> None:
    if not viewer.is_admin:
        raise Forbidden(f"Only administrators read {what}.")


async def list_error_logs(
    *,
    db: AsyncSession,
    viewer: Viewer,
    window: TimeWindow,
    source: ErrorSource | None,
    request: PageRequest,
) -> Page[ErrorLog]:
    """Error rows newest first; ADMIN only (FORBIDDEN otherwise)."""
    require_admin(viewer, what="the error log")
    statement = sa.select(ErrorLog).where(*window.conditions(col(ErrorLog.created_at)))
    if source is not None:
        statement = statement.where(col(ErrorLog.source) == source)
    return await paginate(db, statement, ordering=ERROR_ORDERING, request=request)


@dataclass(frozen=True)
class PruneReport:
    activity_logs: int
    error_logs: int
    activity_cutoff: datetime
    error_cutoff: datetime


async def _delete_older(*, db: AsyncSession, model: Any, cutoff: datetime, batch_size: int) -> int:
    deleted = 0
    while True:
        batch = (
            sa.select(col(model.id)).where(col(model.created_at) < cutoff).limit(batch_size)
        ).scalar_subquery()
        result = await db.execute(sa.delete(model).where(col(model.id).in_(batch)))
        await db.commit()  # short transactions: the table stays writable meanwhile
        count = int(getattr(result, "rowcount", 0) or 0)
        deleted += count
        if count < batch_size:
            return deleted


async def prune_logs(
    *,
    db: AsyncSession,
    activity_retention_days: int,
    error_retention_days: int,
    batch_size: int = 5000,
    now: datetime | None = None,
) -> PruneReport:
    """Delete ActivityLog and ErrorLog rows older than their retention, `batch_size` rows per
    statement and transaction. ApiUsageLog rows are kept (they are the cost history)."""
    if batch_size < 1:
        raise BadInput("The batch size must be at least 1.", field="batchSize")
    for name, days in (("activity", activity_retention_days), ("error", error_retention_days)):
        if days < 0:
            raise BadInput(f"The {name} retention must be 0 days or more.", field="olderThanDays")
    current = now or datetime.now(UTC)
    activity_cutoff = current - timedelta(days=activity_retention_days)
    error_cutoff = current - timedelta(days=error_retention_days)
    activity = await _delete_older(
        db=db, model=ActivityLog, cutoff=activity_cutoff, batch_size=batch_size
    )
    errors = await _delete_older(db=db, model=ErrorLog, cutoff=error_cutoff, batch_size=batch_size)
    return PruneReport(activity, errors, activity_cutoff, error_cutoff)
