"""The rules of projects themselves: list, read, create, rename, delete. Every change checks
the actor's project role (through `access`), raises the project's errors and records an
ActivityLog row; the operation boundary commits. Members: `members.py`; settings:
`settings.py`."""

from __future__ import annotations

import uuid
from typing import Annotated

import sqlalchemy as sa
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import Command, PartialUpdate, check_length
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.db.tables import table_of
from atlas_gql.errors import BadInput, NotFound
from atlas_gql.projects import rules
from atlas_gql.projects.access import check_project_role, project_role_of, require_project_role
from atlas_gql.projects.hooks import before_project_delete
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole

# Newest first; the id breaks ties (rows made in one transaction share created_at).
PROJECT_ORDERING = Ordering(sort=col(Project.created_at), id=col(Project.id), descending=True)


def clean_name(name: str) -> str:
    """A project name trimmed, 1 to 200 characters (BAD_USER_INPUT otherwise)."""
    trimmed = name.strip()
    if not trimmed:
        raise BadInput("A project name must not be empty.", field="name")
    if len(trimmed) > TEXT_LIMITS.name:
        raise BadInput(
            f"A project name must be at most {TEXT_LIMITS.name} characters.", field="name"
        )
    return trimmed


def clean_description(description: str | None) -> str | None:
    """A description trimmed (blank becomes null), at most 10,000 characters."""
    if description is None or not description.strip():
        return None
    if len(description) > TEXT_LIMITS.project_description:
        raise BadInput(
            f"A description must be at most {TEXT_LIMITS.project_description} characters.",
            field="description",
        )
    return description.strip()


ProjectName = Annotated[str, AfterValidator(clean_name)]
Description = Annotated[str | None, AfterValidator(clean_description)]


def _search(search: str | None) -> str | None:
    return check_length(search, field="search", limit=TEXT_LIMITS.search)


class ProjectFilter(Command):
    """`search` matches names case-insensitively; `role` keeps projects where the actor has it."""

    search: Annotated[str | None, AfterValidator(_search)] = None
    role: ProjectRole | None = None


class ProjectCreate(Command):
    name: ProjectName
    description: Description = None


class ProjectUpdate(PartialUpdate):
    not_null = frozenset({"name"})
    name: ProjectName | None = None
    description: Description = None


async def list_projects(
    *, db: ReadSession, actor: Actor, request: PageRequest, filter: ProjectFilter
) -> Page[Project]:
    """A page of the projects the viewer belongs to (all of them for ADMIN), newest first."""
    viewer = actor.viewer_required
    statement = sa.select(Project)
    if filter.role is None:
        statement = statement.where(
            rules.project_visible(viewer_literals(viewer), table_of(Project).c.id)
        )
    else:
        statement = statement.where(
            col(Project.id).in_(
                sa.select(col(ProjectMember.project_id)).where(
                    col(ProjectMember.user_id) == viewer.user_id,
                    col(ProjectMember.role) == filter.role,
                )
            )
        )
    if filter.search is not None and filter.search.strip():
        statement = statement.where(
            col(Project.name).icontains(filter.search.strip(), autoescape=True)
        )
    return await paginate(db, statement, ordering=PROJECT_ORDERING, request=request)


async def get_project(*, db: ReadSession, actor: Actor, project_id: uuid.UUID) -> Project:
    """The project if the viewer may see it; NOT_FOUND otherwise."""
    await require_project_role(db, actor.viewer_required, project_id, ProjectRole.VIEWER)
    return await load_project(db, project_id)


async def create_project(*, db: AsyncSession, actor: Actor, data: ProjectCreate) -> Project:
    """Create a project (CREATE_PROJECT); the viewer becomes its OWNER."""
    actor.require(PermissionName.CREATE_PROJECT)
    viewer = actor.viewer_required
    project = Project(name=data.name, description=data.description, created_by_id=viewer.user_id)
    db.add(project)
    await db.flush()
    db.add(ProjectMember(project_id=project.id, user_id=viewer.user_id, role=ProjectRole.OWNER))
    actor.record(db, "project.create", project, project_id=project.id, details={"name": data.name})
    return await stored(db, project)


async def update_project(
    *, db: AsyncSession, actor: Actor, project_id: uuid.UUID, data: ProjectUpdate
) -> Project:
    """Rename or re-describe a project (MANAGER or higher); what was left out stays."""
    await require_project_role(
        db, actor.viewer_required, project_id, ProjectRole.MANAGER, action="change it"
    )
    project = await load_project(db, project_id)
    if changed := data.apply(project):
        actor.record(
            db, "project.update", project, project_id=project.id,
            details={"changed": sorted(changed)},
        )  # fmt: skip
        return await stored(db, project)
    return project


async def delete_project(*, db: AsyncSession, actor: Actor, project_id: uuid.UUID) -> None:
    """Delete a project (OWNER or ADMIN) with everything in it: members, settings,
    assistants, threads and their messages (the foreign keys cascade) and the file
    attachments of those; the files themselves stay with their uploaders. Logs keep their
    rows (their project reference becomes null)."""
    viewer = actor.viewer_required
    await require_project_role(db, viewer, project_id, ProjectRole.OWNER, action="delete it")
    project = await load_project(db, project_id, deleting=True)
    # Decided again under the lock that serialises membership changes: an OWNER demoted
    # while this waited deletes nothing.
    role = await project_role_of(db=db, project_id=project_id, user_id=viewer.user_id)
    check_project_role(viewer, role, ProjectRole.OWNER, action="delete it")
    # What other domains keep in the project and the foreign keys do not reach (the AI
    # domain's file attachments).
    await before_project_delete(db, project_id)
    await db.execute(sa.delete(Project).where(col(Project.id) == project_id))
    # project_id stays null: the row outlives the project (the foreign key is SET NULL).
    actor.record(
        db, "project.delete", ("Project", project_id),
        details={"name": project.name, "projectId": str(project_id)},
    )  # fmt: skip


async def load_project(
    db: ReadSession, project_id: uuid.UUID, *, lock: bool = False, deleting: bool = False
) -> Project:
    """The project row. `lock` holds it FOR NO KEY UPDATE, which serialises membership changes
    (`members.py`) without waiting for rows that merely reference the project (a new thread);
    `deleting` FOR UPDATE, which also waits for those (the delete would, holding the lock)."""
    statement = sa.select(Project).where(col(Project.id) == project_id)
    if deleting:
        statement = statement.with_for_update()
    elif lock:
        statement = statement.with_for_update(key_share=True)
    project = (await db.execute(statement)).scalar_one_or_none()
    if project is None:
        raise NotFound("Project not found.")
    return project
