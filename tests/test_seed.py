"""The seed creates exactly what DESIGN.md lists, and running it again changes nothing."""

from __future__ import annotations

import bcrypt
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from atlas_gql.config import Settings
from atlas_gql.seed import seed
from tests.conftest import SEED_PASSWORD

COUNT_TABLES = (
    "roles",
    "permissions",
    "role_permissions",
    "users",
    "user_roles",
    "projects",
    "project_members",
    "assistants",
    "threads",
    "messages",
)


async def _counts(db: AsyncSession) -> dict[str, int]:
    return {
        table: int((await db.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one())
        for table in COUNT_TABLES
    }


async def test_seed_contents(db: AsyncSession) -> None:
    grants: dict[str, int] = dict(
        (
            await db.execute(
                sa.text(
                    "SELECT r.name, count(*) FROM roles r "
                    "JOIN role_permissions rp ON rp.role_id = r.id GROUP BY r.name"
                )
            )
        ).all()
    )
    assert grants == {"ADMIN": 3, "PROJECT_MANAGER": 2, "USER": 1}
    users: dict[str, str] = dict(
        (
            await db.execute(
                sa.text(
                    "SELECT u.email, r.name FROM users u JOIN user_roles ur ON ur.user_id = u.id "
                    "JOIN roles r ON r.id = ur.role_id"
                )
            )
        ).all()
    )
    assert users == {
        "admin@example.com": "ADMIN",
        "user@example.com": "USER",
        "pm@example.com": "PROJECT_MANAGER",
    }
    hashes = (await db.execute(sa.text("SELECT password_hash FROM users"))).scalars().all()
    assert all(bcrypt.checkpw(SEED_PASSWORD.encode(), h.encode()) for h in hashes)
    members: dict[str, str] = dict(
        (
            await db.execute(
                sa.text(
                    "SELECT u.email, m.role FROM project_members m JOIN users u ON u.id = m.user_id"
                )
            )
        ).all()
    )
    assert members == {"pm@example.com": "OWNER", "user@example.com": "MEMBER"}
    counts = await _counts(db)
    assert counts["projects"] == 1
    assert counts["assistants"] == 1
    assert counts["threads"] == 1
    assert counts["messages"] >= 2


async def test_seed_twice_leaves_the_same_rows(db: AsyncSession, settings: Settings) -> None:
    before = await _counts(db)
    report = await seed(db, settings=settings)
    await db.flush()
    assert report.created_sample is False
    assert await _counts(db) == before
