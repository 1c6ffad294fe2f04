"""Who reads which log rows, as SQL over a viewer reference (see `auth.rules`): one definition
for the resolver path and the compiled read path.

ADMIN reads every activity row; a project OWNER or MANAGER reads the rows of their projects.
Error rows are ADMIN's only."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from atlas_gql.auth.rules import SqlBool, ViewerRef
from atlas_gql.projects.models import ProjectRole
from atlas_gql.projects.rules import member_project_ids

LOG_READER_ROLES = (ProjectRole.OWNER, ProjectRole.MANAGER)


def managed_project_ids(viewer: ViewerRef) -> sa.Select[Any]:
    """Projects where the viewer is OWNER or MANAGER, as a subquery."""
    return member_project_ids(viewer, roles=LOG_READER_ROLES)


def reads_activity(viewer: ViewerRef) -> SqlBool:
    """Whether the viewer may list activity at all (ADMIN, or a manager of some project)."""
    return sa.or_(viewer.is_admin, sa.exists(managed_project_ids(viewer)))


def activity_visible(viewer: ViewerRef, activity: sa.FromClause) -> SqlBool:
    return sa.or_(viewer.is_admin, activity.c.project_id.in_(managed_project_ids(viewer)))


def error_logs_visible(viewer: ViewerRef) -> SqlBool:
    return viewer.is_admin
