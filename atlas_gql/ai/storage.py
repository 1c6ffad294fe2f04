"""Vector-store storage, metered: OpenAI bills the bytes its vector stores hold per GB-day.
`meter_storage` (run daily by `atlas-gql meter-storage`, e.g. from cron) writes one
ApiUsageLog row per store and UTC day: `endpoint` "vector_store_storage", `purpose` STORAGE,
`model` the store's id, no tokens, `cost_usd` = usage_bytes / 1e9 x
ATLAS_VECTOR_STORE_GB_DAY_USD, on the owner's project and creator (so `apiUsage` and
`Project.usageThisMonth` show it). The provider's free first GB is per organisation: ATLAS
charges every byte to its store (an upper bound).

Running it twice the same day writes nothing more (one row per store and day, checked under
an advisory lock); a store the provider no longer has is skipped and logged."""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.models import Assistant, Thread
from atlas_gql.ai.pricing import COST_QUANTUM
from atlas_gql.ai.provider import UpstreamFailure
from atlas_gql.ai.vector_stores import VectorStores
from atlas_gql.config import Settings
from atlas_gql.db.utils import execute_transaction
from atlas_gql.logs.models import ApiUsageLog, UsagePurpose

logger = logging.getLogger(__name__)

STORAGE_ENDPOINT = "vector_store_storage"
BYTES_PER_GB = Decimal(1_000_000_000)


@dataclass(frozen=True)
class MeteredStore:
    store_id: str
    user_id: uuid.UUID | None
    project_id: uuid.UUID | None
    thread_id: uuid.UUID | None


def storage_cost_usd(settings: Settings, usage_bytes: int) -> Decimal:
    """One day of `usage_bytes` at ATLAS_VECTOR_STORE_GB_DAY_USD, rounded to 1e-6."""
    price = Decimal(str(settings.atlas_vector_store_gb_day_usd))
    return (Decimal(usage_bytes) / BYTES_PER_GB * price).quantize(COST_QUANTUM)


async def _stores(sessionmaker: async_sessionmaker[AsyncSession]) -> list[MeteredStore]:
    async with sessionmaker() as db:
        assistants = await db.execute(
            sa.select(
                col(Assistant.vector_store_id),
                col(Assistant.created_by_id),
                col(Assistant.project_id),
            ).where(col(Assistant.vector_store_id).is_not(None))
        )
        threads = await db.execute(
            sa.select(
                col(Thread.vector_store_id),
                col(Thread.created_by_id),
                col(Thread.project_id),
                col(Thread.id),
            ).where(col(Thread.vector_store_id).is_not(None))
        )
        found = [MeteredStore(str(s), u, p, None) for s, u, p in assistants.all()]
        found += [MeteredStore(str(s), u, p, t) for s, u, p, t in threads.all()]
    return found


async def _write_once(db: AsyncSession, *, row: ApiUsageLog) -> bool:
    """Add the day's row of a store unless it is there (under a lock per store and day)."""
    day = row.created_at.date()
    start = datetime.combine(day, time(), tzinfo=UTC)
    key = f"atlas:storage:{row.model}:{day.isoformat()}"
    await db.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))))
    exists = await db.scalar(
        sa.select(sa.func.count()).where(
            col(ApiUsageLog.endpoint) == STORAGE_ENDPOINT,
            col(ApiUsageLog.model) == row.model,
            col(ApiUsageLog.created_at) >= start,
            col(ApiUsageLog.created_at) < start + timedelta(days=1),
        )
    )
    if exists:
        return False
    db.add(row)
    return True


async def meter_storage(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    stores: VectorStores,
    settings: Settings,
    day: date | None = None,
) -> int:
    """Write the storage rows of `day` (default: today, UTC) not written yet; how many."""
    day = day or datetime.now(UTC).date()
    start = datetime.combine(day, time(), tzinfo=UTC)
    written = 0
    for store in await _stores(sessionmaker):
        try:
            usage_bytes = await stores.usage_bytes(store.store_id)
        except UpstreamFailure as failure:
            logger.warning("storage of %s not metered: %s", store.store_id, failure.detail)
            continue
        row = ApiUsageLog(
            user_id=store.user_id,
            project_id=store.project_id,
            thread_id=store.thread_id,
            endpoint=STORAGE_ENDPOINT,
            model=store.store_id,
            cost_usd=storage_cost_usd(settings, usage_bytes),
            status="storage",
            purpose=UsagePurpose.STORAGE,
            created_at=max(start, min(datetime.now(UTC), start + timedelta(hours=23))),
        )
        if await execute_transaction(sessionmaker, functools.partial(_write_once, row=row)):
            written += 1
    return written
