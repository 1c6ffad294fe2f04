"""Per-request DataLoaders of the logs domain: one SQL statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.logs.models import ActivityLog, ErrorLog
from atlas_gql.logs.usage import UsageTotals, usage_this_month

if TYPE_CHECKING:
    from atlas_gql.graph.context import Context


def activity_log_by_id(context: Context) -> DataLoader[uuid.UUID, ActivityLog | None]:
    async def load(ids: Sequence[uuid.UUID]) -> list[ActivityLog | None]:
        rows = await context.db.execute(sa.select(ActivityLog).where(col(ActivityLog.id).in_(ids)))
        by_id = {row.id: row for row in rows.scalars()}
        return [by_id.get(row_id) for row_id in ids]

    return DataLoader(load_fn=load)


def error_log_by_id(context: Context) -> DataLoader[uuid.UUID, ErrorLog | None]:
    async def load(ids: Sequence[uuid.UUID]) -> list[ErrorLog | None]:
        rows = await context.db.execute(sa.select(ErrorLog).where(col(ErrorLog.id).in_(ids)))
        by_id = {row.id: row for row in rows.scalars()}
        return [by_id.get(row_id) for row_id in ids]

    return DataLoader(load_fn=load)


def usage_this_month_by_project(context: Context) -> DataLoader[uuid.UUID, UsageTotals]:
    """Token and cost totals of the current UTC month per project (one GROUP BY per batch)."""

    async def load(project_ids: Sequence[uuid.UUID]) -> list[UsageTotals]:
        totals = await usage_this_month(db=context.db, project_ids=project_ids)
        return [totals[project_id] for project_id in project_ids]

    return DataLoader(load_fn=load)
