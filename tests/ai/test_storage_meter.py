"""Vector-store storage metered per store and day (ai/storage.py, `atlas-gql meter-storage`)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.storage import STORAGE_ENDPOINT, meter_storage, storage_cost_usd
from atlas_gql.ai.vector_stores import VectorStores
from atlas_gql.config import Settings
from atlas_gql.logs.models import ApiUsageLog, UsagePurpose
from tests.ai.conftest import AIServer
from tests.ai.test_replies import rows
from tests.ai.test_tools import SECRET, assistant_with, indexed_file, store_of


def test_storage_is_priced_per_gb_day() -> None:
    settings = Settings(atlas_vector_store_gb_day_usd=0.10)
    assert storage_cost_usd(settings, 1_000_000_000) == Decimal("0.100000")
    assert storage_cost_usd(settings, 2_500_000) == Decimal("0.000250")
    assert storage_cost_usd(settings, 0) == Decimal(0)


async def test_each_store_is_metered_once_a_day(ai: AIServer) -> None:
    people = ai.people
    assistant_id = await assistant_with(
        ai, ["FILE_SEARCH"], token=people.manager, project_id=people.project_id
    )
    await indexed_file(ai, assistant_id, token=people.manager)
    store_id = await store_of(ai, assistant_id)
    runtime = ai.server.app.state.atlas["runtime"]
    stores = VectorStores(ai.server.services.ai.provider.client)
    settings = Settings(atlas_vector_store_gb_day_usd=1_000_000.0)  # visible on a tiny file
    day = date(2026, 11, 3)

    async def meter() -> int:
        return await meter_storage(
            sessionmaker=runtime.sessionmaker, stores=stores, settings=settings, day=day
        )

    assert await meter() >= 1
    assert await meter() == 0  # the same day again: nothing more
    [row] = await rows(
        ai,
        sa.select(ApiUsageLog).where(
            col(ApiUsageLog.endpoint) == STORAGE_ENDPOINT, col(ApiUsageLog.model) == store_id
        ),
    )
    assert row.cost_usd == storage_cost_usd(settings, len(SECRET)) > 0
    assert (row.input_tokens, row.output_tokens) == (0, 0)
    assert row.purpose is UsagePurpose.STORAGE
    assert row.project_id == people.project_uuid
    assert row.created_at.date() == day
    # A store the provider lost (404) is skipped: no row, no failure.
    ai.fake.vector_stores.stores.pop(store_id)
    await meter_storage(
        sessionmaker=runtime.sessionmaker, stores=stores, settings=settings, day=date(2026, 11, 4)
    )
    lost = sa.select(ApiUsageLog).where(col(ApiUsageLog.model) == store_id)
    assert len(await rows(ai, lost)) == 1
