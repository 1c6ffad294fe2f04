"""Every table, so `metadata` is complete (what Alembic compares the database with). It
imports every domain's models, so it sits above the domains, with the app."""

from atlas_gql.ai.models import Assistant, File, FileAssociation, Message, Thread
from atlas_gql.auth.models import (
    ApiKey,
    Permission,
    RefreshToken,
    Role,
    RolePermission,
    Session,
    User,
    UserRole,
)
from atlas_gql.db.base import metadata
from atlas_gql.logs.models import ActivityLog, ApiUsageLog, ErrorLog
from atlas_gql.projects.models import Project, ProjectMember, ProjectSetting

__all__ = [
    "ActivityLog",
    "ApiKey",
    "ApiUsageLog",
    "Assistant",
    "ErrorLog",
    "File",
    "FileAssociation",
    "Message",
    "Permission",
    "Project",
    "ProjectMember",
    "ProjectSetting",
    "RefreshToken",
    "Role",
    "RolePermission",
    "Session",
    "Thread",
    "User",
    "UserRole",
    "metadata",
]
