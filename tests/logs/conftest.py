"""Fixtures of the logs tests: users, projects and usage rows made inside the test transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from atlas_gql.auth.models import Role, RoleName, User, UserRole
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog, ErrorSource
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole, ProjectSetting


class Factory:
    """Rows for one test; flushed (not committed) into the rolled-back test transaction."""

    def __init__(self, db: AsyncSession) -> None:
        self.db = db

    async def user(self, role: RoleName = RoleName.USER, *, email: str | None = None) -> User:
        user = User(
            email=email or f"logs-{uuid.uuid4().hex[:10]}@example.com",
            password_hash="not-a-real-hash",
            name="Log Tester",
        )
        self.db.add(user)
        await self.db.flush()
        role_row = (await self.db.execute(select(Role).where(col(Role.name) == role))).scalar_one()
        self.db.add(UserRole(user_id=user.id, role_id=role_row.id))
        await self.db.flush()
        return user

    async def project(
        self, owner: User, *, members: dict[uuid.UUID, ProjectRole] | None = None
    ) -> Project:
        project = Project(name=f"Logs {uuid.uuid4().hex[:6]}", created_by_id=owner.id)
        self.db.add(project)
        await self.db.flush()
        self.db.add(ProjectMember(project_id=project.id, user_id=owner.id, role=ProjectRole.OWNER))
        for user_id, role in (members or {}).items():
            self.db.add(ProjectMember(project_id=project.id, user_id=user_id, role=role))
        await self.db.flush()
        return project

    async def budget(self, project: Project, value: Any) -> None:
        self.db.add(
            ProjectSetting(project_id=project.id, setting_key="monthlyTokenBudget", value=value)
        )
        await self.db.flush()

    async def usage(
        self,
        *,
        user: User | None,
        project: Project | None,
        created_at: datetime,
        model: str = "gpt-4o-mini",
        input_tokens: int = 10,
        output_tokens: int = 5,
        cost: str = "0.001000",
    ) -> ApiUsageLog:
        row = ApiUsageLog(
            user_id=user.id if user else None,
            project_id=project.id if project else None,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=Decimal(cost),
            created_at=created_at,
        )
        self.db.add(row)
        await self.db.flush()
        return row

    async def activity(
        self,
        *,
        created_at: datetime,
        user: User | None = None,
        project: Project | None = None,
        action: str = "test.action",
        entity_type: str | None = "Test",
        details: Any = None,
    ) -> ActivityLog:
        row = ActivityLog(
            user_id=user.id if user else None,
            project_id=project.id if project else None,
            action=action,
            entity_type=entity_type,
            entity_id=str(uuid.uuid4()),
            ip_address="198.51.100.1",
            user_agent="pytest",
            details=details,
            created_at=created_at,
        )
        self.db.add(row)
        await self.db.flush()
        return row

    async def error(
        self,
        *,
        created_at: datetime,
        source: ErrorSource = ErrorSource.GRAPHQL,
        message: str = "boom",
        upstream_status: int | None = None,
    ) -> ErrorLog:
        row = ErrorLog(
            request_id=uuid.uuid4().hex,
            source=source,
            error_type="builtins.RuntimeError",
            message=message,
            upstream_status=upstream_status,
            created_at=created_at,
            fingerprint=uuid.uuid4().hex,
            window_start=created_at,
            last_seen_at=created_at,
        )
        self.db.add(row)
        await self.db.flush()
        return row


def global_id(type_name: str, object_id: uuid.UUID) -> str:
    from atlas_gql.ids import encode_global_id

    return encode_global_id(type_name, object_id)


@pytest.fixture
def factory(db: AsyncSession) -> Factory:
    return Factory(db)
