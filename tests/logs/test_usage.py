"""Usage totals and the monthly token budget (service level)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.errors import ErrorCode, QuotaExceeded
from atlas_gql.logs.usage import (
    UsageTotals,
    ensure_within_budget,
    month_start,
    next_month_start,
    usage_this_month,
)
from tests.factories import create_project, create_usage, create_user, set_setting


def test_month_bounds_are_utc_calendar_months() -> None:
    december = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert month_start(december) == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_month_start(december) == datetime(2027, 1, 1, tzinfo=UTC)
    # 01:00 on Feb 1st in UTC+02:00 is still January in UTC.
    eastern = datetime(2026, 2, 1, 1, 0, tzinfo=UTC) + timedelta(hours=-2)
    assert month_start(eastern) == datetime(2026, 1, 1, tzinfo=UTC)


async def test_usage_this_month_sums_per_project_and_ignores_other_months(db: AsyncSession) -> None:
    owner = await create_user(db)
    first = await create_project(db, creator=owner)
    second = await create_project(db, creator=owner)
    idle = await create_project(db, creator=owner)
    now = datetime.now(UTC)
    start = month_start(now)
    # (who, project, when, input tokens, output tokens, cost)
    calls = [
        (owner, first, start, 100, 20, "0.5"),
        (owner, first, now, 1, 2, "0.25"),
        (None, second, now, 7, 0, "0"),
        # Last month and next month do not count.
        (owner, first, start - timedelta(microseconds=1), 999, 5, "1"),
        (owner, first, next_month_start(now), 999, 5, "1"),
    ]
    for user, project, created_at, input_tokens, output_tokens, cost in calls:
        await create_usage(
            db, user=user, project=project, created_at=created_at, input_tokens=input_tokens,
            output_tokens=output_tokens, cost=cost,
        )  # fmt: skip

    totals = await usage_this_month(db=db, project_ids=[first.id, second.id, idle.id], now=now)

    assert totals[first.id] == UsageTotals(
        input_tokens=101, output_tokens=22, cost_usd=Decimal("0.75"), requests=2
    )
    assert totals[first.id].total_tokens == 123
    assert totals[second.id] == UsageTotals(
        input_tokens=7, output_tokens=0, cost_usd=Decimal(0), requests=1
    )
    assert totals[idle.id] == UsageTotals()
    assert await usage_this_month(db=db, project_ids=[]) == {}


async def test_ensure_within_budget_refuses_once_the_budget_is_spent(db: AsyncSession) -> None:
    owner = await create_user(db)
    project = await create_project(db, creator=owner)
    now = datetime.now(UTC)
    await set_setting(db, project, "monthlyTokenBudget", 100)
    await create_usage(
        db, user=owner, project=project, created_at=now, input_tokens=60, output_tokens=39
    )
    await ensure_within_budget(db=db, project_id=project.id)  # 99 < 100

    await create_usage(
        db, user=owner, project=project, created_at=now, input_tokens=0, output_tokens=1
    )
    with pytest.raises(QuotaExceeded) as raised:
        await ensure_within_budget(db=db, project_id=project.id)  # 100 >= 100
    assert raised.value.code is ErrorCode.QUOTA_EXCEEDED
    assert raised.value.extensions == {
        "budget": "PROJECT",
        "limit": 100,
        "used": 100,
        "resetsAt": next_month_start(now).isoformat(),
    }

    # Next month the budget is fresh again.
    await ensure_within_budget(db=db, project_id=project.id, now=next_month_start(now))


async def test_ensure_within_budget_without_budget_or_project_passes(db: AsyncSession) -> None:
    owner = await create_user(db)
    unlimited = await create_project(db, creator=owner)
    await create_usage(
        db, user=owner, project=unlimited, created_at=datetime.now(UTC), input_tokens=10**9
    )
    await ensure_within_budget(db=db, project_id=unlimited.id)
    await ensure_within_budget(db=db, project_id=None)
    await ensure_within_budget(db=db, project_id=uuid.uuid4())

    # A budget that is not an integer is ignored; a budget of 0 refuses at once.
    odd = await create_project(db, creator=owner)
    await set_setting(db, odd, "monthlyTokenBudget", {"tokens": 5})
    await ensure_within_budget(db=db, project_id=odd.id)
    zero = await create_project(db, creator=owner)
    await set_setting(db, zero, "monthlyTokenBudget", 0)
    with pytest.raises(QuotaExceeded):
        await ensure_within_budget(db=db, project_id=zero.id)
