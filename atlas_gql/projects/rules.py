"""Project visibility and roles as SQL over a viewer reference (see `auth.rules`): one
definition for the resolver path and the compiled read path."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from atlas_gql.auth.rules import SqlBool, ViewerRef
from atlas_gql.db.tables import table_of
from atlas_gql.projects.models import ProjectMember, ProjectRole

members = table_of(ProjectMember)

# Higher rank = more rights. OWNER > MANAGER > MEMBER > VIEWER.
ROLE_RANK: dict[ProjectRole, int] = {
    ProjectRole.VIEWER: 1,
    ProjectRole.MEMBER: 2,
    ProjectRole.MANAGER: 3,
    ProjectRole.OWNER: 4,
}


def roles_from(minimum: ProjectRole) -> tuple[ProjectRole, ...]:
    """The roles at least `minimum`, highest first (`roles_from(MANAGER)`: OWNER, MANAGER)."""
    return tuple(
        sorted(
            (role for role in ProjectRole if ROLE_RANK[role] >= ROLE_RANK[minimum]),
            key=ROLE_RANK.__getitem__,
            reverse=True,
        )
    )


def member_project_ids(
    viewer: ViewerRef, *, roles: Iterable[ProjectRole | sa.ColumnElement[Any]] | None = None
) -> sa.Select[Any]:
    """The projects the viewer belongs to (with one of `roles`, when given), as a subquery."""
    statement = sa.select(members.c.project_id).where(members.c.user_id == viewer.user_id)
    if roles is not None:
        statement = statement.where(members.c.role.in_(list(roles)))
    return statement


def project_visible(viewer: ViewerRef, project_id: sa.ColumnElement[Any]) -> SqlBool:
    """A project is visible to its members and to ADMIN; to anyone else it does not exist."""
    return sa.or_(viewer.is_admin, project_id.in_(member_project_ids(viewer)))


def viewer_project_role(viewer: ViewerRef, project_id: sa.ColumnElement[Any]) -> Any:
    """The viewer's role in the project (NULL when not a member), as a scalar subquery."""
    return (
        sa.select(members.c.role)
        .where(members.c.project_id == project_id, members.c.user_id == viewer.user_id)
        .scalar_subquery()
    )


def has_project_role(
    viewer: ViewerRef, project_id: sa.ColumnElement[Any], roles: Iterable[ProjectRole]
) -> SqlBool:
    """Whether the viewer is a member of the project with one of `roles`."""
    return project_id.in_(member_project_ids(viewer, roles=roles))
