"""Reading the logs back for administrators and project managers (activityLogs, apiUsage,
errorLogs), and pruning old rows. Writing them is `logs/audit.py`."""

from __future__ import annotations

import enum
import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import check_length
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import BadInput, Forbidden
from atlas_gql.logs import rules
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, ErrorSource, UsagePurpose
from atlas_gql.projects.access import project_role_of, require_project_role
from atlas_gql.projects.models import ProjectRole

logger = logging.getLogger(__name__)


class UsageGroup(enum.StrEnum):
    DAY = "DAY"
    USER = "USER"
    PROJECT = "PROJECT"
    MODEL = "MODEL"
    PURPOSE = "PURPOSE"
    API_KEY = "API_KEY"


# The key of a bucket whose user or project no longer exists (deleted; the row outlives it).
UNKNOWN_KEY = "unknown"
# Under API_KEY, the bucket of calls made without a key (a signed-in session).
NO_API_KEY = "session"


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


def equal_where_given(*pairs: tuple[Any, object]) -> list[sa.ColumnElement[bool]]:
    """`column == value` for each (column, value) pair whose value is given (not None): the
    optional equality conditions of a list filter."""
    return [column == value for column, value in pairs if value is not None]


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


@dataclass(frozen=True, kw_only=True)
class _LogFilter:
    """What every log filter narrows by: whose rows, which project's, and when."""

    user_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    window: TimeWindow = TimeWindow()


@dataclass(frozen=True, kw_only=True)
class ActivityFilter(_LogFilter):
    action: str | None = None
    entity_type: str | None = None

    def __post_init__(self) -> None:
        check_length(self.action, field="filter.action", limit=TEXT_LIMITS.filter_value)
        check_length(self.entity_type, field="filter.entityType", limit=TEXT_LIMITS.filter_value)


@dataclass(frozen=True, kw_only=True)
class UsageFilter(_LogFilter):
    model: str | None = None
    purpose: UsagePurpose | None = None
    api_key_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        check_length(self.model, field="filter.model", limit=TEXT_LIMITS.filter_value)


@dataclass(frozen=True)
class UsageBucket:
    """One group of ApiUsageLog rows. `key` is a day (YYYY-MM-DD, UTC), a user or project id
    (raw uuid; the graph turns it into a global id) or a model name."""

    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    # Built-in tool calls (issue 16) and their part of `cost_usd`.
    file_search_calls: int = 0
    web_search_calls: int = 0
    tool_cost_usd: Decimal = Decimal(0)


def _newest_first(model: Any) -> Ordering:
    return Ordering(sort=col(model.created_at), id=col(model.id), descending=True)


ACTIVITY_ORDERING = _newest_first(ActivityLog)
ERROR_ORDERING = _newest_first(ErrorLog)


async def require_log_reader(
    db: ReadSession, viewer: Viewer, project_id: uuid.UUID | None, *, what: str
) -> None:
    """Who reads a project log (activity, feedback): with `project_id`, ADMIN or an OWNER /
    MANAGER of that project (NOT_FOUND / FORBIDDEN otherwise); without, ADMIN or a manager of
    some project (FORBIDDEN otherwise). The rows are then scoped in SQL by the caller."""
    if project_id is not None:
        await require_project_role(
            db, viewer, project_id, ProjectRole.MANAGER, action=f"read its {what}"
        )
    elif not await db.scalar(sa.select(rules.reads_activity(viewer_literals(viewer)))):
        raise Forbidden(f"Only administrators and project owners or managers read {what}.")


async def list_activity_logs(
    *, db: ReadSession, actor: Actor, filter: ActivityFilter, request: PageRequest
) -> Page[ActivityLog]:
    """Activity newest first. ADMIN reads everything; a project OWNER/MANAGER reads the rows of
    their projects (NOT_FOUND / FORBIDDEN for `projectId` of a project they do not manage);
    anyone else is FORBIDDEN."""
    viewer = actor.viewer_required
    await require_log_reader(db, viewer, filter.project_id, what="activity")
    statement = sa.select(ActivityLog)
    if filter.project_id is not None:
        statement = statement.where(col(ActivityLog.project_id) == filter.project_id)
    elif not viewer.is_admin:
        ref = viewer_literals(viewer)
        statement = statement.where(rules.activity_visible(ref, table_of(ActivityLog)))
    statement = statement.where(
        *equal_where_given(
            (col(ActivityLog.user_id), filter.user_id),
            (col(ActivityLog.action), filter.action),
            (col(ActivityLog.entity_type), filter.entity_type),
        ),
        *filter.window.conditions(col(ActivityLog.created_at)),
    )
    return await paginate(db, statement, ordering=ACTIVITY_ORDERING, request=request)


async def activity_log_visible(*, db: ReadSession, viewer: Viewer, row: ActivityLog) -> bool:
    """Whether the viewer may read one activity row (ADMIN, or OWNER/MANAGER of its project)."""
    if viewer.is_admin:
        return True
    if row.project_id is None:
        return False
    role = await project_role_of(db=db, project_id=row.project_id, user_id=viewer.user_id)
    return role in rules.LOG_READER_ROLES


def _usage_key(group: UsageGroup) -> sa.ColumnElement[Any]:
    created_utc = sa.func.timezone("UTC", col(ApiUsageLog.created_at))
    if group is UsageGroup.DAY:
        return sa.func.to_char(sa.func.date_trunc("day", created_utc), "YYYY-MM-DD")
    if group is UsageGroup.USER:
        return sa.cast(col(ApiUsageLog.user_id), sa.String)
    if group is UsageGroup.PROJECT:
        return sa.cast(col(ApiUsageLog.project_id), sa.String)
    if group is UsageGroup.PURPOSE:
        return sa.cast(col(ApiUsageLog.purpose), sa.String)
    if group is UsageGroup.API_KEY:
        return sa.func.coalesce(sa.cast(col(ApiUsageLog.api_key_id), sa.String), NO_API_KEY)
    return sa.cast(col(ApiUsageLog.model), sa.String)


async def api_usage(
    *, db: ReadSession, actor: Actor, filter: UsageFilter, group_by: UsageGroup
) -> list[UsageBucket]:
    """AI usage summed per day, user, project, model, purpose or API key, in one GROUP BY
    statement.

    Who reads what: ADMIN everything. With `projectId`, a project OWNER/MANAGER (others:
    NOT_FOUND / FORBIDDEN) reads that project's usage, optionally of one user. Without it, a
    non-administrator reads only their own usage (`userId` of someone else: FORBIDDEN)."""
    viewer = actor.viewer_required
    conditions: list[Any] = []
    if filter.project_id is not None:
        await require_project_role(
            db, viewer, filter.project_id, ProjectRole.MANAGER, action="read its usage"
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
    conditions += equal_where_given(
        (col(ApiUsageLog.model), filter.model),
        (col(ApiUsageLog.purpose), filter.purpose),
        (col(ApiUsageLog.api_key_id), filter.api_key_id),
    )
    conditions += filter.window.conditions(col(ApiUsageLog.created_at))

    key = _usage_key(group_by).label("key")
    statement = (
        sa.select(
            key,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.input_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.output_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.cost_usd)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.file_search_calls)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.web_search_calls)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.tool_cost_usd)), 0),
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
            file_search_calls=int(file_searches),
            web_search_calls=int(web_searches),
            tool_cost_usd=Decimal(tool_cost),
        )
        for group_key, requests, input_tokens, output_tokens, cost, file_searches, web_searches,
            tool_cost in (await db.execute(statement)).all()
    ]  # fmt: skip


async def list_error_logs(
    *,
    db: ReadSession,
    actor: Actor,
    window: TimeWindow,
    source: ErrorSource | None,
    request: PageRequest,
) -> Page[ErrorLog]:
    """Error rows newest first; ADMIN only (FORBIDDEN otherwise)."""
    if not actor.viewer_required.is_admin:
        raise Forbidden("Only administrators read the error log.")
    statement = sa.select(ErrorLog).where(
        *window.conditions(col(ErrorLog.created_at)),
        *equal_where_given((col(ErrorLog.source), source)),
    )
    return await paginate(db, statement, ordering=ERROR_ORDERING, request=request)


@dataclass(frozen=True)
class PruneReport:
    activity_logs: int
    error_logs: int
    activity_cutoff: datetime
    error_cutoff: datetime


async def _delete_batch(db: AsyncSession, *, model: Any, cutoff: datetime, batch_size: int) -> int:
    batch = (
        sa.select(col(model.id)).where(col(model.created_at) < cutoff).limit(batch_size)
    ).scalar_subquery()
    result = await db.execute(sa.delete(model).where(col(model.id).in_(batch)))
    return int(getattr(result, "rowcount", 0) or 0)


async def _delete_older(
    sessionmaker: async_sessionmaker[AsyncSession], *, model: Any, cutoff: datetime, batch_size: int
) -> int:
    deleted = 0
    batch = functools.partial(_delete_batch, model=model, cutoff=cutoff, batch_size=batch_size)
    while True:
        # One short transaction per batch: the table stays writable meanwhile.
        count = await execute_transaction(sessionmaker, batch)
        deleted += count
        if count < batch_size:
            return deleted


async def prune_logs(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
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
        sessionmaker, model=ActivityLog, cutoff=activity_cutoff, batch_size=batch_size
    )
    errors = await _delete_older(
        sessionmaker, model=ErrorLog, cutoff=error_cutoff, batch_size=batch_size
    )
    return PruneReport(activity, errors, activity_cutoff, error_cutoff)
