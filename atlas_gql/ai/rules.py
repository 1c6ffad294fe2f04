"""Who sees and who may change assistants, threads, messages and files, as SQL over a viewer
reference (see `auth.rules`): one definition for the resolver path and the compiled read path.

Seeing:
- an assistant: the members of its project (its creator alone for a personal one), ADMIN;
- a thread: the members of its project (its creator alone for a personal one), ADMIN;
  a message: whoever sees its thread;
- a file: its uploader, whoever sees something it is attached to, ADMIN.

Rights follow membership (docs/security.md): inside a project, having created something gives
rights only while its creator holds a current role there, read from `project_members` on every
check, so a demotion or a removal takes them away at once:
- change or delete an assistant: ADMIN; a personal one's creator; for one shared with a
  project, a MANAGER+ of the project (its creator only while MANAGER+);
- rename or delete a thread: ADMIN; a personal one's creator; in a project, its creator while
  MEMBER+, and any MANAGER+;
- post in a thread (send, attach files): ADMIN; a personal one's creator; any MEMBER+ of its
  project;
- stop a reply or attach files to a message: ADMIN; its sender while they may post in its
  thread; a MANAGER+ of the thread's project.

Feedback (issue 15 part 3): a reply is rated by whoever sees it; the ratings are read by
ADMIN and the MANAGER+ of the thread's project (`feedback_visible`).

Field-level (issue 10 part 12): an assistant's instructions are for those who may change the
assistant (`assistant_manageable`); anyone else who sees it reads `instructions: null`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import Assistant, AssociableType, FileAssociation, Message, Thread
from atlas_gql.auth.rules import SqlBool, ViewerRef, viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of
from atlas_gql.projects.models import ProjectRole
from atlas_gql.projects.rules import member_project_ids, roles_from

assistants = table_of(Assistant)
threads = table_of(Thread)
messages = table_of(Message)
associations = table_of(FileAssociation)

# The project roles that carry a right: MEMBER+ posts and keeps a creator's rights on a
# thread, MANAGER+ manages what the project shares and what its members made.
POSTING_ROLES = roles_from(ProjectRole.MEMBER)
MANAGING_ROLES = roles_from(ProjectRole.MANAGER)


def _personal_of_viewer(viewer: ViewerRef, row: sa.FromClause) -> SqlBool:
    """A row outside any project that the viewer created."""
    return sa.and_(row.c.project_id.is_(None), row.c.created_by_id == viewer.user_id)


def _in_projects_where(
    viewer: ViewerRef, row: sa.FromClause, roles: tuple[ProjectRole, ...]
) -> SqlBool:
    return row.c.project_id.in_(member_project_ids(viewer, roles=roles))


def assistant_visible(viewer: ViewerRef, assistant: sa.FromClause) -> SqlBool:
    return sa.or_(
        viewer.is_admin,
        _personal_of_viewer(viewer, assistant),
        assistant.c.project_id.in_(member_project_ids(viewer)),
    )


def assistant_manageable(viewer: ViewerRef, assistant: sa.FromClause) -> SqlBool:
    """Who may change or delete an assistant (and attach files to it), and so read its
    instructions."""
    return sa.or_(
        viewer.is_admin,
        _personal_of_viewer(viewer, assistant),
        _in_projects_where(viewer, assistant, MANAGING_ROLES),
    )


def assistant_instructions_visible(viewer: ViewerRef, assistant: sa.FromClause) -> SqlBool:
    """Whether the viewer reads the assistant's instructions: those who may change it."""
    return assistant_manageable(viewer, assistant)


def thread_visible(viewer: ViewerRef, thread: sa.FromClause) -> SqlBool:
    return sa.or_(
        viewer.is_admin,
        thread.c.project_id.in_(member_project_ids(viewer)),
        sa.and_(thread.c.project_id.is_(None), thread.c.created_by_id == viewer.user_id),
    )


def thread_changeable(viewer: ViewerRef, thread: sa.FromClause) -> SqlBool:
    """Who may rename or delete a thread."""
    return sa.or_(
        viewer.is_admin,
        _personal_of_viewer(viewer, thread),
        sa.and_(
            thread.c.created_by_id == viewer.user_id,
            _in_projects_where(viewer, thread, POSTING_ROLES),
        ),
        _in_projects_where(viewer, thread, MANAGING_ROLES),
    )


def thread_postable(viewer: ViewerRef, thread: sa.FromClause) -> SqlBool:
    """Who may post in a thread: send messages, attach files to it."""
    return sa.or_(
        viewer.is_admin,
        _personal_of_viewer(viewer, thread),
        _in_projects_where(viewer, thread, POSTING_ROLES),
    )


def message_changeable(viewer: ViewerRef, message: sa.FromClause) -> SqlBool:
    """Who may stop a reply or attach files to a message."""
    thread = threads.alias()
    return sa.or_(
        viewer.is_admin,
        sa.exists(
            sa.select(sa.literal(1))
            .select_from(thread)
            .where(
                thread.c.id == message.c.thread_id,
                sa.or_(
                    sa.and_(message.c.user_id == viewer.user_id, thread_postable(viewer, thread)),
                    _in_projects_where(viewer, thread, MANAGING_ROLES),
                ),
            )
        ),
    )


def feedback_visible(viewer: ViewerRef, thread: sa.FromClause) -> SqlBool:
    """Who reads the ratings of a thread's replies in `feedback`: ADMIN, and a MANAGER+ of
    the thread's project (ratings in personal threads are ADMIN's only)."""
    return sa.or_(viewer.is_admin, _in_projects_where(viewer, thread, MANAGING_ROLES))


def check(
    rule: Callable[[ViewerRef, sa.FromClause], SqlBool],
    viewer: ViewerRef,
    table: sa.Table,
    row_id: uuid.UUID,
) -> sa.Select[Any]:
    """Whether `rule` holds for the row `row_id` of `table`, as a statement: one boolean, or
    no row when there is no such row."""
    return sa.select(rule(viewer, table)).select_from(table).where(table.c.id == row_id)


async def holds(
    db: ReadSession,
    rule: Callable[[ViewerRef, sa.FromClause], SqlBool],
    viewer: Viewer,
    table: sa.Table,
    row_id: uuid.UUID,
) -> bool:
    """Whether `rule` lets `viewer` act on the row `row_id` of `table` (the services' check),
    read from the database now: a role changed a moment ago counts."""
    return bool(await db.scalar(check(rule, viewer_literals(viewer), table, row_id)))


def message_visible(viewer: ViewerRef, message: sa.FromClause) -> SqlBool:
    thread = threads.alias()
    return sa.exists(
        sa.select(sa.literal(1))
        .select_from(thread)
        .where(thread.c.id == message.c.thread_id, thread_visible(viewer, thread))
    )


def file_visible(viewer: ViewerRef, file: sa.FromClause) -> SqlBool:
    assistant, thread, message = assistants.alias(), threads.alias(), messages.alias()
    message_thread = threads.alias()
    attached_to_visible = sa.exists(
        sa.select(sa.literal(1)).where(
            associations.c.file_id == file.c.id,
            sa.or_(
                sa.and_(
                    associations.c.associable_type == AssociableType.ASSISTANT,
                    associations.c.associable_id.in_(
                        sa.select(assistant.c.id).where(assistant_visible(viewer, assistant))
                    ),
                ),
                sa.and_(
                    associations.c.associable_type == AssociableType.THREAD,
                    associations.c.associable_id.in_(
                        sa.select(thread.c.id).where(thread_visible(viewer, thread))
                    ),
                ),
                sa.and_(
                    associations.c.associable_type == AssociableType.MESSAGE,
                    associations.c.associable_id.in_(
                        sa.select(message.c.id)
                        .join(message_thread, message_thread.c.id == message.c.thread_id)
                        .where(thread_visible(viewer, message_thread))
                    ),
                ),
            ),
        )
    )
    return sa.or_(viewer.is_admin, file.c.uploaded_by_id == viewer.user_id, attached_to_visible)


async def visible_page(
    db: ReadSession,
    entity: type[Assistant] | type[Thread],
    *where: Any,
    project_id: uuid.UUID | None,
    ordering: Ordering,
    request: PageRequest,
) -> Page[Any]:
    """One page of the assistants or threads matching `where` (the viewer's rule first), in
    one project when `project_id` is given."""
    statement = sa.select(entity).where(*where)
    if project_id is not None:
        statement = statement.where(col(entity.project_id) == project_id)
    return await paginate(db, statement, ordering=ordering, request=request)
