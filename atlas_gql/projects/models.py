"""Projects, their members (with a project role) and their JSON settings."""

from __future__ import annotations

import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field

from atlas_gql.db.base import Named, Timestamped, enum_column, foreign_key, jsonb_column


class ProjectRole(enum.StrEnum):
    OWNER = "OWNER"
    MANAGER = "MANAGER"
    MEMBER = "MEMBER"
    VIEWER = "VIEWER"


class Project(Named, table=True):
    __tablename__ = "projects"

    created_by_id: uuid.UUID = foreign_key("users.id", ondelete="RESTRICT")


class ProjectMember(Timestamped, table=True):
    __tablename__ = "project_members"
    __table_args__ = (sa.UniqueConstraint("project_id", "user_id"),)

    # Indexed by the unique (project_id, user_id) it leads.
    project_id: uuid.UUID = foreign_key("projects.id", index=False)
    user_id: uuid.UUID = foreign_key("users.id")
    role: ProjectRole = enum_column(ProjectRole, "project_role")


class ProjectSetting(Timestamped, table=True):
    __tablename__ = "project_settings"
    __table_args__ = (sa.UniqueConstraint("project_id", "setting_key"),)

    project_id: uuid.UUID = foreign_key("projects.id", index=False)
    setting_key: str = Field(max_length=64)
    value: Any = jsonb_column(nullable=False)
