"""Threads: conversations with an assistant, in a project or personal.

Visible to the members of their project (to their creator alone for a personal thread) and to
ADMIN (NOT_FOUND otherwise). Renamed and deleted by ADMIN, a MANAGER+ of their project, or
their creator while they may post there (MEMBER+ in a project; FORBIDDEN once demoted to
VIEWER, NOT_FOUND once removed). Starting one in a project needs USE_AI and the MEMBER role.
The rules: `ai.rules`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel, col

from atlas_gql.ai import knowledge, rules
from atlas_gql.ai.assistants import clean_text, get_assistant
from atlas_gql.ai.attachments import attached_to, delete_attachments
from atlas_gql.ai.models import AssociableType, Message, MessageStatus, Thread
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import Command, PartialUpdate
from atlas_gql.db.pagination import Ordering, Page, PageRequest
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.db.tables import table_of
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound
from atlas_gql.projects.access import require_project_role
from atlas_gql.projects.models import ProjectRole

THREAD_ORDERING = Ordering(sort=col(Thread.created_at), id=col(Thread.id), descending=True)


def _title(title: str | None) -> str | None:
    return (
        clean_text(title, field="title", limit=TEXT_LIMITS.thread_title)
        if title is not None
        else None
    )


Title = Annotated[str | None, AfterValidator(_title)]


class ThreadCreate(Command):
    assistant_id: uuid.UUID
    # In this project (MEMBER+); personal when None.
    project_id: uuid.UUID | None = None
    title: Title = None


class ThreadUpdate(PartialUpdate):
    """`title`: null clears it. `pinned` and `archived` may be left out, never null;
    `archived` sets `archived_at` (now) or clears it."""

    not_null = frozenset({"pinned", "archived"})

    title: Title = None
    pinned: bool | None = None
    archived: bool | None = None

    def changes(self) -> dict[str, Any]:
        """The set fields as columns: `archived` becomes `archived_at` (kept when the thread
        is archived already, see `apply`)."""
        changes = super().changes()
        if "archived" in changes:
            changes["archived_at"] = datetime.now(UTC) if changes.pop("archived") else None
        return changes

    def apply(self, row: SQLModel) -> dict[str, Any]:
        if self.archived and getattr(row, "archived_at", None) is not None:
            # Archiving an archived thread keeps when it was archived.
            return ThreadUpdate.model_validate(
                self.model_dump(include=self.model_fields_set - {"archived"})
            ).apply(row)
        return super().apply(row)


def require_open(thread: Thread, *, to: str = "send messages") -> None:
    """CONFLICT when the thread is archived: its conversation is frozen (no new message, no
    other branch shown) until it is unarchived."""
    if thread.archived_at is not None:
        raise Conflict(f"This thread is archived; unarchive it to {to}.")


def thread_visible_to(viewer: Viewer) -> Any:
    """The threads `viewer` may see, as a SQL condition: the shared rule (`ai.rules`)."""
    return rules.thread_visible(viewer_literals(viewer), rules.threads)


async def list_threads(
    *,
    db: ReadSession,
    actor: Actor,
    request: PageRequest,
    project_id: uuid.UUID | None = None,
    archived: bool | None = None,
    pinned: bool | None = None,
) -> Page[Thread]:
    """The threads the viewer may see, newest first: not archived unless `archived` is true
    (then the archived ones only); pinned or not when `pinned` is given."""
    archived_at = col(Thread.archived_at)
    conditions = [
        thread_visible_to(actor.viewer_required),
        archived_at.is_not(None) if archived else archived_at.is_(None),
    ]
    if pinned is not None:
        conditions.append(col(Thread.pinned).is_(pinned))
    return await rules.visible_page(
        db, Thread, *conditions, project_id=project_id, ordering=THREAD_ORDERING, request=request
    )


async def get_thread(
    *, db: ReadSession, viewer: Viewer, thread_id: uuid.UUID, for_update: bool = False
) -> Thread:
    """A thread the viewer may see; NOT_FOUND otherwise. `for_update` locks its row (read
    again, in the same statement), which serialises sendMessage on the thread."""
    statement = sa.select(Thread).where(col(Thread.id) == thread_id, thread_visible_to(viewer))
    if for_update:
        statement = statement.with_for_update(of=Thread).execution_options(populate_existing=True)
    thread = (await db.execute(statement)).scalar_one_or_none()
    if thread is None:
        raise NotFound("Thread not found.")
    return thread


async def managed_thread(
    db: ReadSession, viewer: Viewer, thread_id: uuid.UUID, *, action: str, lock: bool = False
) -> Thread:
    """A thread the viewer may change (rename, pin, archive, delete, name again): NOT_FOUND
    when they cannot see it, FORBIDDEN when they may not change it."""
    thread = await get_thread(db=db, viewer=viewer, thread_id=thread_id, for_update=lock)
    if not await rules.holds(db, rules.thread_changeable, viewer, rules.threads, thread.id):
        raise Forbidden(
            f"Only its creator (a MEMBER or higher of its project) or a project manager may "
            f"{action} this thread."
        )
    return thread


async def require_posting(db: ReadSession, viewer: Viewer, thread: Thread, *, action: str) -> None:
    """FORBIDDEN unless the viewer may post in the thread they see (MEMBER+ of its project)."""
    if not await rules.holds(db, rules.thread_postable, viewer, rules.threads, thread.id):
        raise Forbidden(f"You need the MEMBER role or higher in this project to {action}.")


async def running_reply(db: ReadSession, thread_id: uuid.UUID) -> Message | None:
    """The thread's reply IN_PROGRESS, if one runs (one at a time per thread)."""
    return (
        await db.execute(
            sa.select(Message)
            .where(
                col(Message.thread_id) == thread_id,
                col(Message.status) == MessageStatus.IN_PROGRESS,
            )
            .limit(1)
        )
    ).scalar_one_or_none()


def last_event_sequence_of(threads: sa.FromClause) -> sa.ColumnElement[int]:
    """A thread's event cursor, as SQL: the number of the last event whose effect its stored
    rows hold. While a reply runs, that is where the reply's saved text ends
    (`Message.content_sequence`, written with the text): the thread's own mark is then a
    reservation above numbers not yet used. Otherwise the thread's mark, which the end of the
    last reply set to its final event's number in the transaction that stored the reply."""
    reply = table_of(Message).alias("running_reply")
    running = (
        sa.select(
            sa.func.coalesce(
                reply.c.content_sequence,
                reply.c.event_sequence_base + reply.c.upstream_sequence,
            )
        )
        .where(
            reply.c.thread_id == threads.c.id,
            reply.c.status == MessageStatus.IN_PROGRESS.value,
        )
        .order_by(reply.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.func.coalesce(running, threads.c.last_event_sequence)


async def last_event_sequences(
    db: ReadSession, thread_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """The event cursor of each thread (see `last_event_sequence_of`), by id. Read in the same
    snapshot as the messages (a query operation reads one snapshot), `messages` plus
    `threadEvents(afterSequence: cursor)` is every event's effect exactly once."""
    threads = table_of(Thread)
    rows = await db.execute(
        sa.select(threads.c.id, last_event_sequence_of(threads)).where(threads.c.id.in_(thread_ids))
    )
    return {thread_id: int(sequence) for thread_id, sequence in rows.all()}


async def create_thread(*, db: AsyncSession, actor: Actor, data: ThreadCreate) -> Thread:
    """A new thread with an assistant, in a project (MEMBER+) or personal. The OpenAI
    conversation is created with the first reply, so this never waits on the upstream."""
    actor.require(PermissionName.USE_AI)
    viewer = actor.viewer_required
    if data.project_id is not None:
        await require_project_role(
            db, viewer, data.project_id, ProjectRole.MEMBER, action="start threads"
        )
    assistant = await get_assistant(
        db=db, viewer=viewer, assistant_id=data.assistant_id, field="assistantId"
    )
    if assistant.project_id is not None and assistant.project_id != data.project_id:
        raise BadInput("This assistant belongs to another project.", field="assistantId")
    thread = Thread(
        title=data.title,
        project_id=data.project_id,
        assistant_id=assistant.id,
        created_by_id=viewer.user_id,
    )
    return await actor.created(
        db, "thread.create", thread, project_id=data.project_id,
        details={"assistantId": str(assistant.id)},
    )  # fmt: skip


async def update_thread(
    *, db: AsyncSession, actor: Actor, thread_id: uuid.UUID, data: ThreadUpdate
) -> Thread:
    """Rename, pin or archive a thread (its creator while MEMBER+, a project MANAGER+,
    ADMIN); what is left out stays."""
    thread = await managed_thread(db, actor.viewer_required, thread_id, action="change")
    changed = data.apply(thread)
    details: dict[str, Any] = {}
    if "pinned" in changed:
        details["pinned"] = thread.pinned
    if "archived_at" in changed:
        details["archived"] = thread.archived_at is not None
    actor.record(db, "thread.update", thread, project_id=thread.project_id, details=details or None)
    return await stored(db, thread)


async def delete_thread(
    *, db: AsyncSession, actor: Actor, ai: knowledge.KnowledgeRuntime, thread_id: uuid.UUID
) -> bool:
    """Delete a thread and its messages (its creator while MEMBER+, a project MANAGER+,
    ADMIN). Refused while a reply runs (cancel it first). Its vector store is deleted
    upstream once this commits."""
    thread = await managed_thread(db, actor.viewer_required, thread_id, action="delete", lock=True)
    if await running_reply(db, thread.id) is not None:
        raise Conflict("A reply is running in this thread; cancel it first.")
    message_ids = sa.select(col(Message.id)).where(col(Message.thread_id) == thread.id)
    await delete_attachments(
        db,
        attached_to(AssociableType.MESSAGE, message_ids),
        attached_to(AssociableType.THREAD, [thread.id]),
    )
    knowledge.after_owner_delete(db, ai, thread.vector_store_id)
    actor.record(db, "thread.delete", thread, project_id=thread.project_id)
    await db.delete(thread)
    await db.flush()
    return True
