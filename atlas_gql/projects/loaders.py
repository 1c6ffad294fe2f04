"""Per-request DataLoaders of the projects domain: one batch of SQL per relation, whatever the
number of projects on the page. None of them checks visibility — their callers do (through
`viewer_role_by_project` and `access.can_see_project`)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.ai.models import Thread
from atlas_gql.graph.pagination import Ordering, Page, paginate_by_parent
from atlas_gql.graph.relay import PageRequest
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole, ProjectSetting

if TYPE_CHECKING:
    from atlas_gql.graph.context import Context

PageKey = tuple[uuid.UUID, PageRequest]


# Members oldest first (the creator leads); threads newest first.
MEMBER_ORDERING = Ordering(sort=col(ProjectMember.created_at), id=col(ProjectMember.id))
THREAD_ORDERING = Ordering(sort=col(Thread.created_at), id=col(Thread.id), descending=True)


def project_by_id(context: Context) -> DataLoader[uuid.UUID, Project | None]:
    """Projects by id, without a visibility check (callers check)."""

    async def load(ids: Sequence[uuid.UUID]) -> list[Project | None]:
        rows = await context.db.execute(sa.select(Project).where(col(Project.id).in_(ids)))
        by_id = {project.id: project for project in rows.scalars()}
        return [by_id.get(project_id) for project_id in ids]

    return DataLoader(load_fn=load)


def viewer_role_by_project(context: Context) -> DataLoader[uuid.UUID, ProjectRole | None]:
    """The signed-in viewer's role in each project; None when not a member (or signed out)."""

    async def load(project_ids: Sequence[uuid.UUID]) -> list[ProjectRole | None]:
        viewer = await context.viewer()
        if viewer is None:
            return [None for _ in project_ids]
        rows = await context.db.execute(
            sa.select(col(ProjectMember.project_id), col(ProjectMember.role)).where(
                col(ProjectMember.user_id) == viewer.user_id,
                col(ProjectMember.project_id).in_(project_ids),
            )
        )
        roles: dict[uuid.UUID, ProjectRole] = {
            project_id: ProjectRole(role) for project_id, role in rows.all()
        }
        return [roles.get(project_id) for project_id in project_ids]

    return DataLoader(load_fn=load)


def member_by_id(context: Context) -> DataLoader[uuid.UUID, ProjectMember | None]:
    async def load(ids: Sequence[uuid.UUID]) -> list[ProjectMember | None]:
        rows = await context.db.execute(
            sa.select(ProjectMember).where(col(ProjectMember.id).in_(ids))
        )
        by_id = {member.id: member for member in rows.scalars()}
        return [by_id.get(member_id) for member_id in ids]

    return DataLoader(load_fn=load)


def settings_by_project(context: Context) -> DataLoader[uuid.UUID, list[ProjectSetting]]:
    """Each project's settings, ordered by key."""

    async def load(project_ids: Sequence[uuid.UUID]) -> list[list[ProjectSetting]]:
        rows = await context.db.execute(
            sa.select(ProjectSetting)
            .where(col(ProjectSetting.project_id).in_(project_ids))
            .order_by(col(ProjectSetting.project_id), col(ProjectSetting.setting_key))
        )
        grouped: dict[uuid.UUID, list[ProjectSetting]] = defaultdict(list)
        for setting in rows.scalars():
            grouped[setting.project_id].append(setting)
        return [grouped[project_id] for project_id in project_ids]

    return DataLoader(load_fn=load)


def _pages_by_parent(
    context: Context,
    fetch: Callable[[AsyncSession, list[uuid.UUID], PageRequest], Awaitable[dict[Any, Page[Any]]]],
) -> DataLoader[PageKey, Page[Any]]:
    """A loader of (parent id, page request) -> page: one paginate_by_parent call (two
    statements) per distinct page request in the batch. A bad cursor fails only its keys."""

    async def load(keys: Sequence[PageKey]) -> list[Page[Any] | BaseException]:
        by_request: dict[PageRequest, list[uuid.UUID]] = defaultdict(list)
        for parent_id, request in keys:
            by_request[request].append(parent_id)
        results: dict[PageRequest, dict[Any, Page[Any]] | BaseException] = {}
        for request, parent_ids in by_request.items():
            try:
                results[request] = await fetch(context.db, parent_ids, request)
            except Exception as error:  # handed to the waiting resolvers by the DataLoader
                results[request] = error
        answers: list[Page[Any] | BaseException] = []
        for parent_id, request in keys:
            result = results[request]
            answers.append(result if isinstance(result, BaseException) else result[parent_id])
        return answers

    return DataLoader(load_fn=load)  # type: ignore[arg-type]


def members_page(context: Context) -> DataLoader[PageKey, Page[ProjectMember]]:
    """A page of each project's members, oldest first."""

    async def fetch(
        db: AsyncSession, project_ids: list[uuid.UUID], request: PageRequest
    ) -> dict[Any, Page[Any]]:
        return await paginate_by_parent(
            db,
            ProjectMember,
            parent_column=col(ProjectMember.project_id),
            parent_ids=project_ids,
            ordering=MEMBER_ORDERING,
            request=request,
        )

    return _pages_by_parent(context, fetch)


def threads_page(context: Context) -> DataLoader[PageKey, Page[Thread]]:
    """A page of each project's threads, newest first."""

    async def fetch(
        db: AsyncSession, project_ids: list[uuid.UUID], request: PageRequest
    ) -> dict[Any, Page[Any]]:
        return await paginate_by_parent(
            db,
            Thread,
            parent_column=col(Thread.project_id),
            parent_ids=project_ids,
            ordering=THREAD_ORDERING,
            request=request,
        )

    return _pages_by_parent(context, fetch)
