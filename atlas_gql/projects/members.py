"""Who belongs to a project, with which role: add, change, remove (and leave). Role changes
lock the project row, so two OWNERs demoting each other at once cannot leave it without one.
See `access` for what each role may do."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import User
from atlas_gql.db.inputs import Command
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound
from atlas_gql.projects.access import may_manage_member, project_role_of, require_project_role
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
    actor_role = await require_project_role(
        db, viewer, project_id, ProjectRole.MANAGER, action="add members"
    )
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=data.role):
        raise Forbidden("Only an OWNER can make someone an OWNER.")
    user = await db.get(User, data.user_id)
    if user is None:
        raise NotFound("User not found.", field="userId")
    if not user.is_active:
        raise BadInput("This user is deactivated.", field="userId")
    await load_project(db, project_id, lock=True)
    if await _member(db, project_id, data.user_id) is not None:
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
    actor_role = await require_project_role(
        db, viewer, project_id, ProjectRole.MANAGER, action="change members"
    )
    member = await _locked_member(db, project_id, user_id)
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
    leaving = user_id == viewer.user_id and (
        await project_role_of(db=db, project_id=project_id, user_id=viewer.user_id) is not None
    )
    actor_role: ProjectRole | None = None
    if not leaving:
        actor_role = await require_project_role(
            db, viewer, project_id, ProjectRole.MANAGER, action="remove members"
        )
    member = await _locked_member(db, project_id, user_id)
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


async def _member(
    db: ReadSession, project_id: uuid.UUID, user_id: uuid.UUID
) -> ProjectMember | None:
    statement = sa.select(ProjectMember).where(
        col(ProjectMember.project_id) == project_id, col(ProjectMember.user_id) == user_id
    )
    return (await db.execute(statement)).scalar_one_or_none()


async def _locked_member(
    db: ReadSession, project_id: uuid.UUID, user_id: uuid.UUID
) -> ProjectMember:
    """The membership to change, with the project row locked (so owner counts hold until
    commit); NOT_FOUND when the user is not a member."""
    await load_project(db, project_id, lock=True)
    member = await _member(db, project_id, user_id)
    if member is None:
        raise NotFound("This user is not a member of the project.", field="userId")
    return member


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
