"""The shared rule functions, called as the resolver path calls them (a viewer reference of
constants), select exactly the rows the services' own rules selected before they shared them
(kept below, in the ORM form the services wrote them in, as the reference), for every viewer;
and an ADMIN's constants fold away (no membership subquery)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlmodel import col

from atlas_gql.ai import rules as ai_rules
from atlas_gql.ai.models import Assistant, AssociableType, File, FileAssociation, Message, Thread
from atlas_gql.auth import rules as auth_rules
from atlas_gql.auth.models import PermissionName, RoleName, User
from atlas_gql.auth.sessions import load_viewer_for_session
from atlas_gql.auth.tokens import decode_access_token
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.db.tables import table_of
from atlas_gql.logs import rules as logs_rules
from atlas_gql.logs.models import ActivityLog
from atlas_gql.projects import rules as project_rules
from atlas_gql.projects.models import Project, ProjectMember, ProjectRole
from tests.graph.compiled.conftest import World

# -- the reference: the rules as the services wrote them before they shared them ------------


def visible_project_ids(viewer: Viewer) -> Any:
    if viewer.is_admin:
        return sa.select(col(Project.id))
    return sa.select(col(ProjectMember.project_id)).where(
        col(ProjectMember.user_id) == viewer.user_id
    )


def managed_project_ids(viewer: Viewer) -> Any:
    return sa.select(col(ProjectMember.project_id)).where(
        col(ProjectMember.user_id) == viewer.user_id,
        col(ProjectMember.role).in_((ProjectRole.OWNER, ProjectRole.MANAGER)),
    )


def assistant_visible_to(viewer: Viewer) -> Any:
    if viewer.is_admin:
        return sa.true()
    return sa.or_(
        col(Assistant.created_by_id) == viewer.user_id,
        col(Assistant.project_id).in_(visible_project_ids(viewer)),
    )


def thread_visible_to(viewer: Viewer) -> Any:
    if viewer.is_admin:
        return sa.true()
    return sa.or_(
        col(Thread.project_id).in_(visible_project_ids(viewer)),
        sa.and_(col(Thread.project_id).is_(None), col(Thread.created_by_id) == viewer.user_id),
    )


def file_visible_to(viewer: Viewer) -> Any:
    if viewer.is_admin:
        return sa.true()
    link = FileAssociation
    attached_to_visible = (
        sa.select(sa.literal(1))
        .where(
            col(link.file_id) == col(File.id),
            sa.or_(
                sa.and_(
                    col(link.associable_type) == AssociableType.ASSISTANT,
                    col(link.associable_id).in_(
                        sa.select(col(Assistant.id)).where(assistant_visible_to(viewer))
                    ),
                ),
                sa.and_(
                    col(link.associable_type) == AssociableType.THREAD,
                    col(link.associable_id).in_(
                        sa.select(col(Thread.id)).where(thread_visible_to(viewer))
                    ),
                ),
                sa.and_(
                    col(link.associable_type) == AssociableType.MESSAGE,
                    col(link.associable_id).in_(
                        sa.select(col(Message.id))
                        .join(Thread, col(Thread.id) == col(Message.thread_id))
                        .where(thread_visible_to(viewer))
                    ),
                ),
            ),
        )
        .exists()
    )
    return sa.or_(col(File.uploaded_by_id) == viewer.user_id, attached_to_visible)


# -- the checks --------------------------------------------------------------------------------


async def viewers(db: AsyncSession, world: World, settings: Settings) -> dict[str, Viewer]:
    found = {}
    for label, token in world.tokens.items():
        claims = decode_access_token(token, settings=settings)
        viewer = await load_viewer_for_session(
            db=db, user_id=claims.user_id, session_id=claims.session_id
        )
        assert viewer is not None
        found[label] = viewer
    return found


async def ids(db: AsyncSession, statement: Any) -> set[Any]:
    return set((await db.execute(statement)).scalars())


async def test_rules_select_what_the_service_rules_select(
    compiled_engine: AsyncEngine, world: World, compiled_settings: Settings
) -> None:
    async with AsyncSession(compiled_engine) as db:
        for label, viewer in (await viewers(db, world, compiled_settings)).items():
            ref = auth_rules.viewer_literals(viewer)
            project = table_of(Project)
            assert await ids(
                db,
                sa.select(project.c.id).where(project_rules.project_visible(ref, project.c.id)),
            ) == await ids(
                db,
                sa.select(col(Project.id)).where(col(Project.id).in_(visible_project_ids(viewer))),
            ), label
            pairs = [
                (Assistant, ai_rules.assistant_visible, assistant_visible_to(viewer)),
                (Thread, ai_rules.thread_visible, thread_visible_to(viewer)),
                (File, ai_rules.file_visible, file_visible_to(viewer)),
            ]
            for model, rule, today in pairs:
                table = table_of(model)
                shared = await ids(db, sa.select(table.c.id).where(rule(ref, table)))
                expected = await ids(db, sa.select(table.c.id).where(today))
                assert shared == expected, (label, model)
                assert shared, (label, model)  # each viewer sees some: the check has teeth
            message = table_of(Message)
            assert await ids(
                db, sa.select(message.c.id).where(ai_rules.message_visible(ref, message))
            ) == await ids(
                db,
                sa.select(col(Message.id))
                .join(Thread, col(Thread.id) == col(Message.thread_id))
                .where(thread_visible_to(viewer)),
            ), label
            activity = table_of(ActivityLog)
            managed = await ids(db, managed_project_ids(viewer))
            expected = await ids(
                db,
                sa.select(col(ActivityLog.id)).where(
                    sa.true()
                    if viewer.is_admin
                    else col(ActivityLog.project_id).in_(list(managed) or [None])
                ),
            )
            assert (
                await ids(
                    db,
                    sa.select(activity.c.id).where(logs_rules.activity_visible(ref, activity)),
                )
                == expected
            ), label
            reads = (await db.execute(sa.select(logs_rules.reads_activity(ref)))).scalar_one()
            assert reads == (viewer.is_admin or bool(managed)), label
            user = table_of(User)
            visible_users = await ids(
                db, sa.select(user.c.id).where(auth_rules.user_visible(ref, user))
            )
            if viewer.has_permission(PermissionName.MANAGE_USERS):
                assert len(visible_users) > 1, label
            else:
                assert visible_users == {viewer.user_id}, label


def test_constants_fold_for_an_admin_and_anonymous() -> None:
    thread = table_of(Thread)
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    admin = Viewer(
        user_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        email="a@example.com",
        roles=frozenset({RoleName.ADMIN}),
        permissions=frozenset(),
    )
    as_admin = str(ai_rules.thread_visible(auth_rules.viewer_literals(admin), thread).compile(
        dialect=dialect
    ))  # fmt: skip
    assert as_admin == "true"
    anonymous = ai_rules.thread_visible(auth_rules.viewer_literals(None), thread)
    text = str(anonymous.compile(dialect=dialect))
    # No `IS NULL` comparison with the anonymous viewer's id: it matches nothing.
    assert "IS NULL AND" in text  # the personal-thread branch's own `project_id IS NULL`
    assert "created_by_id IS NULL" not in text


# -- field-level rules (issue 10 part 12) --------------------------------------------------------


async def test_field_rules_agree_with_their_python_twins(
    compiled_engine: AsyncEngine, world: World, compiled_settings: Settings
) -> None:
    """`user_grants_visible` (SQL) and `user_grants_visible_to` (the resolver path's Python)
    give the same answer for every viewer and user; `assistant_manageable` selects exactly the
    assistants the rule says the viewer may change: ADMIN any, a personal one its creator, a
    shared one a current MANAGER+ of its project (rights follow membership)."""

    async with AsyncSession(compiled_engine) as db:
        all_viewers = await viewers(db, world, compiled_settings)
        user = table_of(User)
        user_ids = await ids(db, sa.select(user.c.id))
        assistant = table_of(Assistant)
        rows = (await db.execute(sa.select(assistant))).all()
        member = table_of(ProjectMember)
        roles = {
            (project_id, user_id): role
            for project_id, user_id, role in await db.execute(
                sa.select(member.c.project_id, member.c.user_id, member.c.role)
            )
        }
        for label, viewer in [*all_viewers.items(), ("anonymous", None)]:
            ref = auth_rules.viewer_literals(viewer)
            shown = await ids(
                db, sa.select(user.c.id).where(auth_rules.user_grants_visible(ref, user))
            )
            twin = {uid for uid in user_ids if auth_rules.user_grants_visible_to(viewer, uid)}
            assert shown == twin, label
            if viewer is None:
                assert shown == set(), label
                continue
            manageable = await ids(
                db, sa.select(assistant.c.id).where(ai_rules.assistant_manageable(ref, assistant))
            )
            expected = {
                row.id
                for row in rows
                if viewer.is_admin
                or (row.project_id is None and row.created_by_id == viewer.user_id)
                or roles.get((row.project_id, viewer.user_id)) in {"OWNER", "MANAGER"}
            }
            assert manageable == expected, label
