"""Project roles: who may do what in a project. Used by every domain that touches projects
(projects, threads, messages, logs), so the rule lives in one place.

Visibility: a viewer who is not a member (and not ADMIN) gets NOT_FOUND, never FORBIDDEN, so
ids do not reveal existence. A member without the needed role gets FORBIDDEN.

What each role may do (ADMIN may do anything):
- OWNER: everything, including deleting the project and making other members OWNER.
- MANAGER: edit the project, its settings and threads; add, change and remove members
  other than OWNERs, and never grant OWNER.
- MEMBER: use the project's threads.
- VIEWER: read only.
The last OWNER of a project can be neither removed nor demoted (CONFLICT)."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import Forbidden, NotFound
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from atlas_gql.projects.rules import ROLE_RANK


def role_at_least(role: ProjectRole | None, minimum: ProjectRole) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[minimum]


def can_see_project(viewer: Viewer | None, role: ProjectRole | None) -> bool:
    """Whether a viewer with `role` in a project (None: not a member) may see it."""
    return viewer is not None and (viewer.is_admin or role is not None)


def may_manage_member(
    *, viewer: Viewer, actor_role: ProjectRole | None, member_role: ProjectRole
) -> bool:
    """Whether the viewer (with `actor_role` in the project) may grant, change or take away
    `member_role`: OWNER and ADMIN any role, MANAGER any but OWNER, others none."""
    if viewer.is_admin or actor_role == ProjectRole.OWNER:
        return True
    return actor_role == ProjectRole.MANAGER and member_role != ProjectRole.OWNER


async def project_role_of(
    *, db: ReadSession, project_id: uuid.UUID, user_id: uuid.UUID
) -> ProjectRole | None:
    statement = sa.select(col(ProjectMember.role)).where(
        col(ProjectMember.project_id) == project_id, col(ProjectMember.user_id) == user_id
    )
    return (await db.execute(statement)).scalar_one_or_none()


def check_project_role(
    viewer: Viewer, role: ProjectRole | None, minimum: ProjectRole, *, action: str = "do this"
) -> ProjectRole | None:
    """`role` (the viewer's in an existing project, None: not a member) when it is at least
    `minimum`: NOT_FOUND for a non-member, FORBIDDEN below `minimum`; ADMIN passes."""
    if viewer.is_admin:
        return role
    if role is None:
        raise NotFound("Project not found.")
    if not role_at_least(role, minimum):
        raise Forbidden(f"You need the {minimum.value} role or higher in this project to {action}.")
    return role


async def require_project_role(
    db: ReadSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    minimum: ProjectRole,
    *,
    action: str = "do this",
) -> ProjectRole | None:
    """The viewer's role in the project when it is at least `minimum`.

    NOT_FOUND when the project does not exist or the viewer is not a member; FORBIDDEN when
    the viewer is a member with a lower role. ADMIN passes (returns their role, maybe None).
    A change that depends on the role must read it again under its lock (`members.py`)."""
    role = await project_role_of(db=db, project_id=project_id, user_id=viewer.user_id)
    if viewer.is_admin and await db.get(Project, project_id) is None:
        raise NotFound("Project not found.")
    return check_project_role(viewer, role, minimum, action=action)
