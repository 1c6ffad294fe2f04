"""Who belongs to a project, with which role: add, change, remove (and leave). See `access`
for what each role may do.

Every change decides under its lock (`_lock_roles`): the project row (FOR NO KEY UPDATE, which
serialises the project's membership changes), then the membership rows of the actor and of the
member changed (FOR UPDATE, in user-id order, read fresh). The actor's role is the one read
there, not one read before waiting: an OWNER demoted while their own change waited for the
lock decides as what they are now, and loses (FORBIDDEN). Owner counts are taken under the same
lock, so the project never ends without an OWNER. Outsiders are refused before any lock is
taken (a first, unlocked check), so they cannot make members' changes wait."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import User
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.inputs import Command
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound
from atlas_gql.projects.access import (
    check_project_role,
    may_manage_member,
    project_role_of,
    require_project_role,
)
from atlas_gql.projects.models import ProjectMember, ProjectRole
from atlas_gql.projects.projects import load_project


class MemberAdd(Command):
    user_id: uuid.UUID
    role: ProjectRole


class MemberUpdate(Command):
    role: ProjectRole


async def add_member(
    *, db: AsyncSession, actor: Actor, project_id: uuid.UUID, data: MemberAdd
) -> ProjectMember:
    """Add a user to a project with a role (MANAGER or higher; only an OWNER or ADMIN grants
    OWNER). CONFLICT when they already are a member; NOT_FOUND for an unknown user."""
    viewer = actor.viewer_required
    action = "add members"
    await require_project_role(db, viewer, project_id, ProjectRole.MANAGER, action=action)
    user = await db.get(User, data.user_id)
    if user is None:
        raise NotFound("User not found.", field="userId")
    if not user.is_active:
        raise BadInput("This user is deactivated.", field="userId")
    actor_role, existing = await _lock_roles(db, viewer, project_id, data.user_id)
    check_project_role(viewer, actor_role, ProjectRole.MANAGER, action=action)
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=data.role):
        raise Forbidden("Only an OWNER can make someone an OWNER.")
    if existing is not None:
        raise Conflict("This user already is a member of the project.")
    member = ProjectMember(project_id=project_id, user_id=data.user_id, role=data.role)
    try:
        async with db.begin_nested():
            db.add(member)
            await db.flush()
    except IntegrityError:
        raise Conflict("This user already is a member of the project.") from None
    actor.record(
        db, "member.add", member, project_id=project_id,
        details={"userId": str(data.user_id), "role": data.role.value},
    )  # fmt: skip
    return await stored(db, member)


async def update_member(
    *,
    db: AsyncSession,
    actor: Actor,
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    data: MemberUpdate,
) -> ProjectMember:
    """Change a member's role (MANAGER or higher; OWNER is granted, and OWNERs changed, only
    by an OWNER or ADMIN — so an OWNER transfers ownership by promoting another member).
    The last OWNER cannot be demoted (CONFLICT)."""
    viewer = actor.viewer_required
    action = "change members"
    await require_project_role(db, viewer, project_id, ProjectRole.MANAGER, action=action)
    actor_role, member = await _lock_roles(db, viewer, project_id, user_id)
    check_project_role(viewer, actor_role, ProjectRole.MANAGER, action=action)
    if member is None:
        raise NotFound("This user is not a member of the project.", field="userId")
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=member.role):
        raise Forbidden("Only an OWNER can change an OWNER's role.")
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=data.role):
        raise Forbidden("Only an OWNER can make someone an OWNER.")
    if member.role == data.role:
        return member
    if member.role == ProjectRole.OWNER:
        await _require_another_owner(db, project_id, "demoted")
    previous = member.role
    member.role = data.role
    actor.record(
        db, "member.update", member, project_id=project_id,
        details={"userId": str(user_id), "from": previous.value, "to": data.role.value},
    )  # fmt: skip
    return await stored(db, member)


async def remove_member(
    *, db: AsyncSession, actor: Actor, project_id: uuid.UUID, user_id: uuid.UUID
) -> ProjectMember:
    """Remove a member (MANAGER or higher; OWNERs only by an OWNER or ADMIN) and return the
    removed membership. Any member may remove themself (leave). The last OWNER cannot be
    removed (CONFLICT)."""
    viewer = actor.viewer_required
    action = "remove members"
    leaving = user_id == viewer.user_id and (
        await project_role_of(db=db, project_id=project_id, user_id=viewer.user_id) is not None
    )
    if not leaving:
        await require_project_role(db, viewer, project_id, ProjectRole.MANAGER, action=action)
    actor_role, member = await _lock_roles(db, viewer, project_id, user_id)
    if leaving:
        # Removed by someone else while waiting: there is nothing left to leave.
        check_project_role(viewer, actor_role, ProjectRole.VIEWER, action="leave it")
    else:
        check_project_role(viewer, actor_role, ProjectRole.MANAGER, action=action)
    if member is None:
        raise NotFound("This user is not a member of the project.", field="userId")
    if not leaving and not may_manage_member(
        viewer=viewer, actor_role=actor_role, member_role=member.role
    ):
        raise Forbidden("Only an OWNER can remove an OWNER.")
    if member.role == ProjectRole.OWNER:
        await _require_another_owner(db, project_id, "removed")
    await db.delete(member)
    actor.record(
        db, "member.remove", member, project_id=project_id,
        details={"userId": str(user_id), "role": member.role.value, "left": leaving},
    )  # fmt: skip
    return member


async def _lock_roles(
    db: ReadSession, viewer: Viewer, project_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[ProjectRole | None, ProjectMember | None]:
    """Lock the project row, then the viewer's and `user_id`'s membership rows (always in this
    order, and the rows by user id, so concurrent changes never deadlock), and read them fresh:
    (the viewer's role, None when not a member; `user_id`'s membership, if any). NOT_FOUND
    when the project is gone. Held until the operation commits."""
    await load_project(db, project_id, lock=True)
    statement = (
        sa.select(ProjectMember)
        .where(
            col(ProjectMember.project_id) == project_id,
            col(ProjectMember.user_id).in_({viewer.user_id, user_id}),
        )
        .order_by(col(ProjectMember.user_id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    rows = {row.user_id: row for row in (await db.execute(statement)).scalars()}
    actor_row = rows.get(viewer.user_id)
    return (actor_row.role if actor_row is not None else None), rows.get(user_id)


async def _require_another_owner(db: ReadSession, project_id: uuid.UUID, verb: str) -> None:
    owners = (
        await db.execute(
            sa.select(sa.func.count())
            .select_from(ProjectMember)
            .where(
                col(ProjectMember.project_id) == project_id,
                col(ProjectMember.role) == ProjectRole.OWNER,
            )
        )
    ).scalar_one()
    if owners <= 1:
        raise Conflict(
            f"The last OWNER of a project cannot be {verb}; make another member OWNER first."
        )
