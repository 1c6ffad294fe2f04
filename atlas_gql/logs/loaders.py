"""Per-request DataLoaders of the logs domain: one SQL statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from atlas_gql.db.loaders import ReadSessionSource, rows_by_id
from atlas_gql.logs.models import ActivityLog, ErrorLog
from atlas_gql.logs.usage import UsageTotals, usage_this_month, user_usage_this_month

activity_log_by_id = rows_by_id(ActivityLog)
error_log_by_id = rows_by_id(ErrorLog)


def usage_this_month_by_project(db: ReadSessionSource) -> DataLoader[uuid.UUID, UsageTotals]:
    """Token and cost totals of the current UTC month per project (one GROUP BY per batch)."""

    async def load(project_ids: Sequence[uuid.UUID]) -> list[UsageTotals]:
        totals = await usage_this_month(db=db(), project_ids=project_ids)
        return [totals[project_id] for project_id in project_ids]

    return DataLoader(load_fn=load)


def usage_this_month_by_user(db: ReadSessionSource) -> DataLoader[uuid.UUID, UsageTotals]:
    """Token and cost totals of the current UTC month per user, the sender of each reply (one
    GROUP BY per batch)."""

    async def load(user_ids: Sequence[uuid.UUID]) -> list[UsageTotals]:
        totals = await user_usage_this_month(db=db(), user_ids=user_ids)
        return [totals[user_id] for user_id in user_ids]

    return DataLoader(load_fn=load)
