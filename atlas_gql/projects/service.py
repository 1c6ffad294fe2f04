"""The rules of projects, members and settings. Every function checks the viewer's project
role (through `access`), raises the project's errors, logs an ActivityLog row and commits;
the graph, the CLI and the tests all go through here."""

from __future__ import annotations

import enum
import json
import re
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.models import PermissionName, User
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound
from atlas_gql.logs.audit import record_activity
from atlas_gql.projects.access import (
    may_manage_member,
    project_role_of,
    require_project_role,
    visible_project_ids,
)
from atlas_gql.projects.hooks import before_project_delete, check_setting_value
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole, ProjectSetting

NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 10_000
SETTING_KEY_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,63}$")
SETTING_VALUE_MAX_BYTES = 64 * 1024

# A setting whose values ATLAS reads, and so checks (other domains check theirs through
# `hooks.check_setting`).
MONTHLY_TOKEN_BUDGET = "monthlyTokenBudget"

# Newest first; the id breaks ties (rows made in one transaction share created_at).
PROJECT_ORDERING = Ordering(sort=col(Project.created_at), id=col(Project.id), descending=True)


class Keep(enum.Enum):
    """Marks an update argument that was not given (leave the column as it is)."""

    KEEP = "KEEP"


KEEP = Keep.KEEP


def clean_name(name: str) -> str:
    """A project name trimmed, 1 to 200 characters (BAD_USER_INPUT otherwise)."""
    trimmed = name.strip()
    if not trimmed:
        raise BadInput("A project name must not be empty.", field="name")
    if len(trimmed) > NAME_MAX_LENGTH:
        raise BadInput(
            f"A project name must be at most {NAME_MAX_LENGTH} characters.", field="name"
        )
    return trimmed


def clean_description(description: str | None) -> str | None:
    """A description trimmed (blank becomes null), at most 10,000 characters."""
    if description is None or not description.strip():
        return None
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise BadInput(
            f"A description must be at most {DESCRIPTION_MAX_LENGTH} characters.",
            field="description",
        )
    return description.strip()


async def list_projects(
    *,
    db: ReadSession,
    viewer: Viewer,
    request: PageRequest,
    search: str | None = None,
    role: ProjectRole | None = None,
) -> Page[Project]:
    """A page of the projects the viewer belongs to (all of them for ADMIN), newest first.
    `search` matches names case-insensitively; `role` keeps those where the viewer has it."""
    statement = sa.select(Project)
    if role is None:
        if not viewer.is_admin:
            statement = statement.where(col(Project.id).in_(visible_project_ids(viewer)))
    else:
        statement = statement.where(
            col(Project.id).in_(
                sa.select(col(ProjectMember.project_id)).where(
                    col(ProjectMember.user_id) == viewer.user_id,
                    col(ProjectMember.role) == role,
                )
            )
        )
    if search is not None and search.strip():
        statement = statement.where(col(Project.name).icontains(search.strip(), autoescape=True))
    return await paginate(db, statement, ordering=PROJECT_ORDERING, request=request)


async def get_project(*, db: ReadSession, viewer: Viewer, project_id: uuid.UUID) -> Project:
    """The project if the viewer may see it; NOT_FOUND otherwise."""
    await require_project_role(
        db=db, viewer=viewer, project_id=project_id, minimum=ProjectRole.VIEWER
    )
    return await _project(db, project_id)


async def create_project(
    *,
    db: AsyncSession,
    viewer: Viewer,
    name: str,
    description: str | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> Project:
    """Create a project (CREATE_PROJECT); the viewer becomes its OWNER."""
    if not viewer.has_permission(PermissionName.CREATE_PROJECT):
        raise Forbidden("This requires the CREATE_PROJECT permission.")
    project = Project(
        name=clean_name(name),
        description=clean_description(description),
        created_by_id=viewer.user_id,
    )
    db.add(project)
    await db.flush()
    db.add(ProjectMember(project_id=project.id, user_id=viewer.user_id, role=ProjectRole.OWNER))
    record_activity(
        db=db,
        action="project.create",
        user_id=viewer.user_id,
        entity_type="Project",
        entity_id=project.id,
        project_id=project.id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"name": project.name},
    )
    await db.commit()
    await db.refresh(project)
    return project


async def update_project(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    name: str | Keep | None = KEEP,
    description: str | Keep | None = KEEP,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> Project:
    """Rename or re-describe a project (MANAGER or higher). Arguments left at KEEP (or a
    null name) do not change."""
    await require_project_role(
        db=db,
        viewer=viewer,
        project_id=project_id,
        minimum=ProjectRole.MANAGER,
        action="change it",
    )
    project = await _project(db, project_id)
    changed: dict[str, Any] = {}
    if isinstance(name, str):
        new_name = clean_name(name)
        if new_name != project.name:
            project.name = changed["name"] = new_name
    if not isinstance(description, Keep):
        new_description = clean_description(description)
        if new_description != project.description:
            project.description = new_description
            changed["description"] = True
    if changed:
        record_activity(
            db=db,
            action="project.update",
            user_id=viewer.user_id,
            entity_type="Project",
            entity_id=project.id,
            project_id=project.id,
            ip_address=ip_address,
            user_agent=user_agent,
            details={"changed": sorted(changed)},
        )
        await db.commit()
        await db.refresh(project)
    return project


async def delete_project(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> None:
    """Delete a project (OWNER or ADMIN) with everything in it: members, settings,
    assistants, threads and their messages (the foreign keys cascade) and the file
    attachments of those; the files themselves stay with their uploaders. Logs keep their
    rows (their project reference becomes null)."""
    await require_project_role(
        db=db,
        viewer=viewer,
        project_id=project_id,
        minimum=ProjectRole.OWNER,
        action="delete it",
    )
    name = (await _project(db, project_id, lock=True)).name
    # What other domains keep in the project and the foreign keys do not reach (the AI
    # domain's file attachments).
    await before_project_delete(db, project_id)
    await db.execute(sa.delete(Project).where(col(Project.id) == project_id))
    # project_id stays null: the row outlives the project (the foreign key is SET NULL).
    record_activity(
        db=db,
        action="project.delete",
        user_id=viewer.user_id,
        entity_type="Project",
        entity_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"name": name, "projectId": str(project_id)},
    )
    await db.commit()


async def add_member(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    role: ProjectRole,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> ProjectMember:
    """Add a user to a project with a role (MANAGER or higher; only an OWNER or ADMIN grants
    OWNER). CONFLICT when they already are a member; NOT_FOUND for an unknown user."""
    actor_role = await require_project_role(
        db=db,
        viewer=viewer,
        project_id=project_id,
        minimum=ProjectRole.MANAGER,
        action="add members",
    )
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=role):
        raise Forbidden("Only an OWNER can make someone an OWNER.")
    user = await db.get(User, user_id)
    if user is None:
        raise NotFound("User not found.", field="userId")
    if not user.is_active:
        raise BadInput("This user is deactivated.", field="userId")
    await _project(db, project_id, lock=True)
    if await _member(db, project_id, user_id) is not None:
        raise Conflict("This user already is a member of the project.")
    member = ProjectMember(project_id=project_id, user_id=user_id, role=role)
    db.add(member)
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise Conflict("This user already is a member of the project.") from None
    record_activity(
        db=db,
        action="member.add",
        user_id=viewer.user_id,
        entity_type="ProjectMember",
        entity_id=member.id,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"userId": str(user_id), "role": role.value},
    )
    await db.commit()
    await db.refresh(member)
    return member


async def update_member(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    role: ProjectRole,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> ProjectMember:
    """Change a member's role (MANAGER or higher; OWNER is granted, and OWNERs changed, only
    by an OWNER or ADMIN — so an OWNER transfers ownership by promoting another member).
    The last OWNER cannot be demoted (CONFLICT)."""
    actor_role = await require_project_role(
        db=db,
        viewer=viewer,
        project_id=project_id,
        minimum=ProjectRole.MANAGER,
        action="change members",
    )
    member = await _locked_member(db, project_id, user_id)
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=member.role):
        raise Forbidden("Only an OWNER can change an OWNER's role.")
    if not may_manage_member(viewer=viewer, actor_role=actor_role, member_role=role):
        raise Forbidden("Only an OWNER can make someone an OWNER.")
    if member.role == role:
        return member
    if member.role == ProjectRole.OWNER:
        await _require_another_owner(db, project_id, "demoted")
    previous = member.role
    member.role = role
    record_activity(
        db=db,
        action="member.update",
        user_id=viewer.user_id,
        entity_type="ProjectMember",
        entity_id=member.id,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"userId": str(user_id), "from": previous.value, "to": role.value},
    )
    await db.commit()
    await db.refresh(member)
    return member


async def remove_member(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> None:
    """Remove a member (MANAGER or higher; OWNERs only by an OWNER or ADMIN). Any member may
    remove themself (leave). The last OWNER cannot be removed (CONFLICT)."""
    leaving = user_id == viewer.user_id and (
        await project_role_of(db=db, project_id=project_id, user_id=viewer.user_id) is not None
    )
    actor_role: ProjectRole | None = None
    if not leaving:
        actor_role = await require_project_role(
            db=db,
            viewer=viewer,
            project_id=project_id,
            minimum=ProjectRole.MANAGER,
            action="remove members",
        )
    member = await _locked_member(db, project_id, user_id)
    if not leaving and not may_manage_member(
        viewer=viewer, actor_role=actor_role, member_role=member.role
    ):
        raise Forbidden("Only an OWNER can remove an OWNER.")
    if member.role == ProjectRole.OWNER:
        await _require_another_owner(db, project_id, "removed")
    await db.delete(member)
    record_activity(
        db=db,
        action="member.remove",
        user_id=viewer.user_id,
        entity_type="ProjectMember",
        entity_id=member.id,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"userId": str(user_id), "role": member.role.value, "left": leaving},
    )
    await db.commit()


async def set_setting(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    key: str,
    value: Any,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> ProjectSetting:
    """Set a JSON setting (MANAGER or higher): one row per key, inserted or updated in one
    statement. Keys match `^[a-zA-Z][a-zA-Z0-9_.-]{0,63}$`; values are any JSON up to 64 KiB;
    known keys are checked (see `validate_setting`)."""
    await require_project_role(
        db=db,
        viewer=viewer,
        project_id=project_id,
        minimum=ProjectRole.MANAGER,
        action="change its settings",
    )
    validate_setting_key(key)
    await validate_setting(db=db, project_id=project_id, key=key, value=value)
    insert = pg_insert(ProjectSetting).values(project_id=project_id, setting_key=key, value=value)
    upsert = insert.on_conflict_do_update(
        index_elements=[col(ProjectSetting.project_id), col(ProjectSetting.setting_key)],
        set_={"value": insert.excluded.value, "updated_at": sa.func.now()},
    ).returning(ProjectSetting)
    setting: ProjectSetting = (
        await db.execute(upsert, execution_options={"populate_existing": True})
    ).scalar_one()
    record_activity(
        db=db,
        action="setting.set",
        user_id=viewer.user_id,
        entity_type="ProjectSetting",
        entity_id=setting.id,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"key": key},
    )
    await db.commit()
    return setting


async def delete_setting(
    *,
    db: AsyncSession,
    viewer: Viewer,
    project_id: uuid.UUID,
    key: str,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> bool:
    """Remove a setting (MANAGER or higher); False when the key was not set."""
    await require_project_role(
        db=db,
        viewer=viewer,
        project_id=project_id,
        minimum=ProjectRole.MANAGER,
        action="change its settings",
    )
    validate_setting_key(key)
    deleted = (
        await db.execute(
            sa.delete(ProjectSetting)
            .where(
                col(ProjectSetting.project_id) == project_id,
                col(ProjectSetting.setting_key) == key,
            )
            .returning(col(ProjectSetting.id))
        )
    ).scalar_one_or_none()
    if deleted is None:
        return False
    record_activity(
        db=db,
        action="setting.delete",
        user_id=viewer.user_id,
        entity_type="ProjectSetting",
        entity_id=deleted,
        project_id=project_id,
        ip_address=ip_address,
        user_agent=user_agent,
        details={"key": key},
    )
    await db.commit()
    return True


def validate_setting_key(key: str) -> None:
    if not SETTING_KEY_PATTERN.fullmatch(key):
        raise BadInput(
            "A setting key starts with a letter and holds at most 64 letters, digits, "
            "'_', '.' or '-'.",
            field="key",
        )


async def validate_setting(*, db: ReadSession, project_id: uuid.UUID, key: str, value: Any) -> None:
    """Any JSON up to 64 KiB (compact UTF-8). Known keys: `defaultAssistantId` is the ID of
    an Assistant of this project; `monthlyTokenBudget` is a non-negative integer."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > SETTING_VALUE_MAX_BYTES:
        raise BadInput(
            f"A setting value must be at most {SETTING_VALUE_MAX_BYTES} bytes of JSON "
            f"(this one is {size}).",
            field="value",
        )
    if key == MONTHLY_TOKEN_BUDGET and (
        not isinstance(value, int) or isinstance(value, bool) or value < 0
    ):
        raise BadInput(f"`{MONTHLY_TOKEN_BUDGET}` must be a non-negative integer.", field="value")
    # Keys other domains give meaning to (`defaultAssistantId`: the AI domain's).
    await check_setting_value(db, project_id, key, value)


async def _project(db: ReadSession, project_id: uuid.UUID, *, lock: bool = False) -> Project:
    """The project row; `lock` holds it FOR UPDATE, which serializes membership changes (so
    two OWNERs demoting each other at once cannot leave the project without one)."""
    statement = sa.select(Project).where(col(Project.id) == project_id)
    if lock:
        statement = statement.with_for_update()
    project = (await db.execute(statement)).scalar_one_or_none()
    if project is None:
        raise NotFound("Project not found.")
    return project


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
    await _project(db, project_id, lock=True)
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
