"""Per-request DataLoaders of the projects domain: one batch of SQL per relation, whatever the
number of projects on the page. None of them checks visibility — their callers do (through
`viewer_role_by_project` and `access.can_see_project`). A project's threads are the AI
domain's (`ai.loaders.threads_page`)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.loaders import ReadSessionSource, pages_by_parent, rows_by_id, viewer_keyed
from atlas_gql.db.pagination import Ordering
from atlas_gql.db.session import ReadSession
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole, ProjectSetting

# Members oldest first (the creator leads).
MEMBER_ORDERING = Ordering(sort=col(ProjectMember.created_at), id=col(ProjectMember.id))

project_by_id = rows_by_id(Project)
member_by_id = rows_by_id(ProjectMember)
# A page of each project's members, oldest first.
members_page = pages_by_parent(
    ProjectMember, parent_column=col(ProjectMember.project_id), ordering=MEMBER_ORDERING
)


async def _viewer_roles(
    db: ReadSession, viewer: Viewer, project_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ProjectRole]:
    rows = await db.execute(
        sa.select(col(ProjectMember.project_id), col(ProjectMember.role)).where(
            col(ProjectMember.user_id) == viewer.user_id,
            col(ProjectMember.project_id).in_(project_ids),
        )
    )
    return {project_id: ProjectRole(role) for project_id, role in rows.all()}


# The signed-in viewer's role in each project; None when not a member (or signed out).
viewer_role_by_project = viewer_keyed(_viewer_roles, default=None)


def settings_by_project(db: ReadSessionSource) -> DataLoader[uuid.UUID, list[ProjectSetting]]:
    """Each project's settings, ordered by key."""

    async def load(project_ids: Sequence[uuid.UUID]) -> list[list[ProjectSetting]]:
        rows = await db().execute(
            sa.select(ProjectSetting)
            .where(col(ProjectSetting.project_id).in_(project_ids))
            .order_by(col(ProjectSetting.project_id), col(ProjectSetting.setting_key))
        )
        grouped: dict[uuid.UUID, list[ProjectSetting]] = defaultdict(list)
        for setting in rows.scalars():
            grouped[setting.project_id].append(setting)
        return [grouped[project_id] for project_id in project_ids]

    return DataLoader(load_fn=load)
