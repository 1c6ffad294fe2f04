"""API usage totals and the monthly token budgets, per project and per user.

A project's budget is its setting `monthlyTokenBudget`: a JSON integer of input + output tokens
per calendar month in UTC. A user's budget is their own `users.monthly_token_budget` (set by an
administrator) or else ATLAS_USER_MONTHLY_TOKENS; it counts every reply the user asked for, in
projects and personal threads alike. `ensure_within_budget` (project) and
`ensure_within_user_budget` are called by sendMessage before the AI call, each serialised by an
advisory transaction lock (project first, then user) and counting the replies still running.
A refusal is QUOTA_EXCEEDED whose `budget` extension says which budget tripped.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from sqlmodel import col, select

from atlas_gql.db.session import ReadSession
from atlas_gql.errors import QuotaExceeded
from atlas_gql.logs.models import ApiUsageLog
from atlas_gql.projects.models import ProjectSetting

BUDGET_SETTING_KEY = "monthlyTokenBudget"
# The estimate used when the provider reports no token counts (a cancelled or cut reply), and
# for the text of replies still running: about four characters per token.
CHARS_PER_TOKEN = 4
# The ApiUsageLog.status suffix of a row whose tokens are estimated, e.g. "cancelled_estimated".
ESTIMATED_SUFFIX = "_estimated"


class BudgetKind(StrEnum):
    """Which budget refused a reply: the `budget` extension of QUOTA_EXCEEDED."""

    PROJECT = "PROJECT"
    USER = "USER"


def estimate_tokens(text: str) -> int:
    """ceil(len(text) / 4): the tokens of a text the provider did not count for us."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class UsageTotals:
    """Sums of ApiUsageLog rows."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of the current calendar month in UTC."""
    current = (now or datetime.now(UTC)).astimezone(UTC)
    return current.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime | None = None) -> datetime:
    start = month_start(now)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def parse_budget(value: Any) -> int | None:
    """The budget as a positive-or-zero int, or None when unset / not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


async def project_budget(*, db: ReadSession, project_id: uuid.UUID) -> int | None:
    """The project's `monthlyTokenBudget`, or None when it has none."""
    value = (
        await db.execute(
            select(ProjectSetting.value).where(
                col(ProjectSetting.project_id) == project_id,
                col(ProjectSetting.setting_key) == BUDGET_SETTING_KEY,
            )
        )
    ).scalar_one_or_none()
    return parse_budget(value)


def in_month(start: Any, end: Any) -> sa.ColumnElement[bool]:
    """The usage rows a month's budget counts: created in [start, end) (`month_start`,
    `next_month_start`; values or bind parameters). Every monthly count uses it."""
    created = col(ApiUsageLog.created_at)
    return sa.and_(created >= start, created < end)


async def usage_this_month(
    *, db: ReadSession, project_ids: Sequence[uuid.UUID], now: datetime | None = None
) -> dict[uuid.UUID, UsageTotals]:
    """Usage totals per project for the current UTC calendar month, in one GROUP BY statement.
    Every requested project is in the answer (zeros when it has no usage)."""
    return await _monthly_totals(db, col(ApiUsageLog.project_id), project_ids, now)


async def _monthly_totals(
    db: ReadSession,
    key: Mapped[uuid.UUID | None],
    keys: Sequence[uuid.UUID],
    now: datetime | None,
) -> dict[uuid.UUID, UsageTotals]:
    """This UTC month's usage totals per value of `key` (a project or a user), in one GROUP BY
    statement; zeros for the keys without usage."""
    ids = list(dict.fromkeys(keys))
    if not ids:
        return {}
    start, end = month_start(now), next_month_start(now)
    statement = (
        sa.select(
            key,
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.input_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.output_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(ApiUsageLog.cost_usd)), 0),
            sa.func.count(),
        )
        .where(key.in_(ids), in_month(start, end))
        .group_by(key)
    )
    totals = {key_id: UsageTotals() for key_id in ids}
    for key_id, input_tokens, output_tokens, cost, requests in (await db.execute(statement)).all():
        if key_id is None:  # excluded by the WHERE; narrows the type
            continue
        totals[key_id] = UsageTotals(
            input_tokens=int(input_tokens),
            output_tokens=int(output_tokens),
            cost_usd=Decimal(cost),
            requests=int(requests),
        )
    return totals


@dataclass(frozen=True)
class InFlight:
    """The project's replies still running, and the tokens they are reckoned to hold."""

    replies: int = 0
    tokens: int = 0


NOTHING_IN_FLIGHT = InFlight()
# The tokens used this month and the replies in flight, read together under a budget's lock.
Spent = Callable[[], Awaitable[tuple[int, InFlight]]]


# A 64-bit hash of a namespaced key, like the login limiter's locks; a collision only
# serialises two budgets needlessly. Built once, with a bound parameter: every sendMessage
# takes one or two (building a statement and its cache key costs more than running it).
def advisory_lock(key: sa.ColumnElement[str]) -> sa.ColumnElement[Any]:
    """The budget lock of `key` (`project_budget_lock`, `user_budget_lock`), as an expression:
    held until the transaction ends (a statement of another writer may take it: the thread's
    locked read in ai/reply_reads.py does)."""
    return sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))


_ADVISORY_LOCK = sa.select(advisory_lock(sa.bindparam("lock_key", type_=sa.String)))


_PROJECT_BUDGET_LOCK = "atlas:budget:"


def project_budget_lock(project_id: uuid.UUID) -> str:
    """The key of a project's budget lock."""
    return f"{_PROJECT_BUDGET_LOCK}{project_id}"


def project_budget_lock_of(project_id: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """`project_budget_lock` of a column, in SQL (a statement that reads the project's id
    takes its lock: ai/reply_reads.py)."""
    return sa.literal(_PROJECT_BUDGET_LOCK, sa.String) + sa.cast(project_id, sa.String)


def user_budget_lock(user_id: uuid.UUID) -> str:
    """The key of a user's budget lock."""
    return f"atlas:user-budget:{user_id}"


async def _advisory_lock(db: AsyncSession, key: str) -> None:
    await db.execute(_ADVISORY_LOCK, {"lock_key": key})


async def lock_project_budget(*, db: AsyncSession, project_id: uuid.UUID) -> None:
    """Serialise budget checks of one project until the caller's transaction ends."""
    await _advisory_lock(db, project_budget_lock(project_id))


async def _spent_or_used(
    spent: Spent | None,
    key: uuid.UUID,
    totals: Callable[[], Awaitable[dict[uuid.UUID, UsageTotals]]],
) -> tuple[int, InFlight]:
    """What a budget check counts: `spent` (usage and replies in flight) when the caller reads
    them, else this month's usage of `key` alone."""
    if spent is not None:
        return await spent()
    return (await totals())[key].total_tokens, NOTHING_IN_FLIGHT


def _refuse(
    kind: BudgetKind, *, budget: int, used: int, running: InFlight, now: datetime | None
) -> None:
    """QUOTA_EXCEEDED when `used` tokens (plus those reckoned for running replies) reach
    `budget`."""
    if used + running.tokens < budget:
        return
    project = kind is BudgetKind.PROJECT
    extensions: dict[str, Any] = {
        "budget": kind.value,
        "limit": budget,
        "used": used,
        "resetsAt": next_month_start(now).isoformat(),
    }
    if used >= budget:
        raise QuotaExceeded(
            "This project has used its monthly token budget."
            if project
            else "You have used your monthly token budget.",
            **extensions,
        )
    raise QuotaExceeded(
        ("This project's" if project else "Your")
        + f" running replies may use the rest of {'its' if project else 'your'} monthly "
        "token budget; wait for them to finish.",
        **extensions,
        inProgress=running.replies,
    )


async def ensure_within_budget(
    *,
    db: AsyncSession,
    project_id: uuid.UUID | None,
    spent: Spent | None = None,
    now: datetime | None = None,
    budget: int | Literal["unread"] | None = "unread",
    locked: bool = False,
) -> None:
    """Raise QuotaExceeded (`budget: PROJECT`) when the project's tokens this UTC month, plus
    the tokens reckoned for its replies still running, reach its `monthlyTokenBudget`. With
    `spent` (a caller that runs replies), both are read by it under the lock, in one
    statement; without, the month's usage alone. No project or no budget: nothing to check.
    `budget`: the project's budget when the caller read it already (`parse_budget` of its
    setting).

    With a budget, the check takes the project's advisory lock first and the caller keeps it
    until its transaction ends: the caller must store its running reply in that same
    transaction, so the next check (waiting on the lock) counts it. `locked`: the caller's
    transaction holds the lock already (`project_budget_lock`, taken by an earlier statement);
    the read, a statement after it, still takes its snapshot once the lock is granted."""
    if project_id is None:
        return
    if budget == "unread":
        budget = await project_budget(db=db, project_id=project_id)
    if budget is None:
        return
    if not locked:
        await lock_project_budget(db=db, project_id=project_id)
    used, running = await _spent_or_used(
        spent, project_id, lambda: usage_this_month(db=db, project_ids=[project_id], now=now)
    )
    _refuse(BudgetKind.PROJECT, budget=budget, used=used, running=running, now=now)


def effective_user_budget(own: int | None, default: int | None) -> int | None:
    """The user's own budget (`User.monthly_token_budget`), else the default
    (ATLAS_USER_MONTHLY_TOKENS); None: unlimited."""
    return own if own is not None else default


async def user_usage_this_month(
    *, db: ReadSession, user_ids: Sequence[uuid.UUID], now: datetime | None = None
) -> dict[uuid.UUID, UsageTotals]:
    """Usage totals per user (the sender of each reply, in any project or none) for the
    current UTC calendar month, in one GROUP BY statement; zeros for users without usage."""
    return await _monthly_totals(db, col(ApiUsageLog.user_id), user_ids, now)


async def ensure_within_user_budget(
    *,
    db: AsyncSession,
    user_id: uuid.UUID,
    budget: int | None,
    spent: Spent | None = None,
    now: datetime | None = None,
    locked: bool = False,
) -> None:
    """Raise QuotaExceeded (`budget: USER`) when the user's tokens this UTC month, plus those
    reckoned for their replies still running, reach `budget` (None: nothing to check). Like
    the project's check, it takes the user's advisory lock, which the caller keeps until its
    transaction (which stores the running reply) ends; callers take the project's lock first.
    `locked`: as for the project's check (`user_budget_lock`)."""
    if budget is None:
        return
    if not locked:
        await _advisory_lock(db, user_budget_lock(user_id))
    used, running = await _spent_or_used(
        spent, user_id, lambda: user_usage_this_month(db=db, user_ids=[user_id], now=now)
    )
    _refuse(BudgetKind.USER, budget=budget, used=used, running=running, now=now)
