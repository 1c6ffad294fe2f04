"""`Actor.created`: a new row's one way in (added, flushed, recorded, read back)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import User
from atlas_gql.logs.models import ActivityLog
from tests.factories import unique_email


async def _actions_about(db: AsyncSession, entity_id: uuid.UUID) -> list[tuple[str, object]]:
    rows = await db.execute(
        sa.select(col(ActivityLog.action), col(ActivityLog.details)).where(
            col(ActivityLog.entity_id) == str(entity_id)
        )
    )
    return [(action, details) for action, details in rows.all()]


async def test_created_answers_the_row_as_stored_and_records_the_action_about_it(
    db: AsyncSession,
) -> None:
    row = User(email=unique_email("created"), password_hash="not-a-hash")
    user = await Actor.system().created(db, "user.create", row, details={"why": "test"})
    assert user is row
    # Read back with what the database set.
    assert user.created_at is not None
    assert user.is_active is True
    assert await _actions_about(db, user.id) == [("user.create", {"why": "test"})]


async def test_a_row_the_database_refuses_is_refused_at_once_and_recorded_nowhere(
    db: AsyncSession,
) -> None:
    email = unique_email("taken")
    await Actor.system().created(db, "user.create", User(email=email, password_hash="x"))
    # The same address in another letter case: the unique index refuses it within `created`
    # (not later, at the commit), so a service can answer CONFLICT (as members.add_member).
    twin = User(email=email.upper(), password_hash="x")
    with pytest.raises(IntegrityError):
        async with db.begin_nested():
            await Actor.system().created(db, "user.create", twin)
    assert await _actions_about(db, twin.id) == []
    # The operation goes on after the refusal.
    other = await Actor.system().created(
        db, "user.create", User(email=unique_email("ok"), password_hash="x")
    )
    assert [action for action, _ in await _actions_about(db, other.id)] == ["user.create"]
