"""Visibility of assistants, threads, messages and files as SQL over a viewer reference (see
`auth.rules`): one definition for the resolver path and the compiled read path.

- an assistant: its creator, the members of its project, ADMIN;
- a thread: the members of its project (its creator alone for a thread without a project),
  ADMIN; a message: whoever sees its thread;
- a file: its uploader, whoever sees something it is attached to, ADMIN.

Field-level (issue 10 part 12): an assistant's instructions are for those who may change the
assistant (`assistant_manageable`); anyone else who sees it reads `instructions: null`."""

from __future__ import annotations

import sqlalchemy as sa

from atlas_gql.ai.models import Assistant, AssociableType, FileAssociation, Message, Thread
from atlas_gql.auth.rules import SqlBool, ViewerRef
from atlas_gql.db.tables import table_of
from atlas_gql.projects.models import ProjectRole
from atlas_gql.projects.rules import member_project_ids

assistants = table_of(Assistant)
threads = table_of(Thread)
messages = table_of(Message)
associations = table_of(FileAssociation)


def assistant_visible(viewer: ViewerRef, assistant: sa.FromClause) -> SqlBool:
    return sa.or_(
        viewer.is_admin,
        assistant.c.created_by_id == viewer.user_id,
        assistant.c.project_id.in_(member_project_ids(viewer)),
    )


# Who changes an assistant shared with a project, besides its creator and ADMIN.
ASSISTANT_MANAGER_ROLES = (ProjectRole.OWNER, ProjectRole.MANAGER)


def assistant_manageable(viewer: ViewerRef, assistant: sa.FromClause) -> SqlBool:
    """Whether the viewer may change the assistant: ADMIN, its creator, a MANAGER+ of the
    project it is shared with (`ai.assistants.may_manage`; test_rules.py checks they agree)."""
    return sa.or_(
        viewer.is_admin,
        assistant.c.created_by_id == viewer.user_id,
        assistant.c.project_id.in_(member_project_ids(viewer, roles=ASSISTANT_MANAGER_ROLES)),
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
