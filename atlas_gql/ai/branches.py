"""The message tree's commands (docs/branches.md): regenerate a reply, edit a question, switch
the branch shown. A regenerated reply and an edited question are siblings of the message
they replace, which stays; each new reply runs through the same path as sendMessage
(`messages.prepare_reply` / `messages.start_reply`: rate, budgets, CONFLICT, streaming,
usage, failures) and becomes the thread's active leaf.

Who may: regenerating and editing post in the thread (USE_AI, MEMBER+ of its project);
switching the branch changes what everyone reading the thread is shown, so it needs the same
right to post. An archived thread refuses all three (CONFLICT) until unarchived. A message
the viewer may not see is NOT_FOUND."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import tree
from atlas_gql.ai.messages import (
    SentMessage,
    ask,
    check_content,
    get_message,
    prepare_reply,
    start_reply,
    store_exchange,
)
from atlas_gql.ai.models import AssociableType, File, FileAssociation, Message, MessageRole, Thread
from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.ai.threads import get_thread, require_open, require_posting
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.errors import BadInput


async def _files_of(db: ReadSession, message: Message) -> list[File]:
    """The files sent with a message (given to the model again with its new reply)."""
    rows = await db.execute(
        sa.select(File)
        .join(FileAssociation, col(FileAssociation.file_id) == col(File.id))
        .where(
            col(FileAssociation.associable_type) == AssociableType.MESSAGE,
            col(FileAssociation.associable_id) == message.id,
        )
        .order_by(col(FileAssociation.created_at), col(FileAssociation.id))
    )
    return list(rows.scalars())


async def regenerate_message(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, message_id: uuid.UUID
) -> SentMessage:
    """A new reply (IN_PROGRESS, streamed on threadEvents) to the user message an ASSISTANT
    message answers, as that message's sibling. BAD_USER_INPUT for another kind of message;
    otherwise sendMessage's errors (CONFLICT while a reply runs, QUOTA_EXCEEDED, ...)."""
    actor.require(PermissionName.USE_AI)
    original = await get_message(db=db, viewer=actor.viewer_required, message_id=message_id)
    if original.role is not MessageRole.ASSISTANT:
        raise BadInput(
            "regenerateMessage takes an ASSISTANT message (use editMessage for your own).",
            field="messageId",
        )
    question = await db.get(Message, original.parent_id) if original.parent_id else None
    if question is None or question.role is not MessageRole.USER:
        raise BadInput("This reply answers no user message to ask again.", field="messageId")
    context = await prepare_reply(
        db=db, actor=actor, ai=ai, thread_id=original.thread_id, field="messageId"
    )
    files = await _files_of(db, question)
    reply, after_sequence, _ = await start_reply(
        db=db, ai=ai, context=context, question=question, files=files,
        created_question=False, now=datetime.now(UTC),
    )  # fmt: skip
    return await store_exchange(
        db=db, actor=actor, context=context, sent=SentMessage(question, reply, after_sequence),
        action="message.regenerate", entity=reply, details={"regenerates": str(original.id)},
    )  # fmt: skip


async def edit_message(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, message_id: uuid.UUID, content: str
) -> SentMessage:
    """A new user message with `content` as the sibling of a USER message (keeping its
    files), and a reply to it; the old branch stays. BAD_USER_INPUT for another kind of
    message or empty content; otherwise sendMessage's errors."""
    actor.require(PermissionName.USE_AI)
    content = check_content(ai.settings, content)
    original = await get_message(db=db, viewer=actor.viewer_required, message_id=message_id)
    if original.role is not MessageRole.USER:
        raise BadInput(
            "editMessage takes a USER message (use regenerateMessage for a reply).",
            field="messageId",
        )
    context = await prepare_reply(
        db=db, actor=actor, ai=ai, thread_id=original.thread_id, field="messageId"
    )
    files = await _files_of(db, original)
    question, reply, after_sequence = await ask(
        db=db, ai=ai, context=context, content=content, parent_id=original.parent_id, files=files
    )
    return await store_exchange(
        db=db, actor=actor, context=context, sent=SentMessage(question, reply, after_sequence),
        action="message.edit", entity=question,
        details={"edits": str(original.id), "chars": len(content)},
    )  # fmt: skip


async def select_branch(*, db: AsyncSession, actor: Actor, message_id: uuid.UUID) -> Thread:
    """Show the branch through a message: the thread's active leaf becomes the newest leaf
    under it (itself when it has no reply). Needs the right to post in the thread."""
    viewer = actor.viewer_required
    message = await get_message(db=db, viewer=viewer, message_id=message_id)
    thread = await get_thread(db=db, viewer=viewer, thread_id=message.thread_id)
    await require_posting(db, viewer, thread, action="switch branches in its threads")
    # Archived: what the thread shows is frozen with it (docs/threads.md).
    require_open(thread, to="switch branches")
    thread.active_leaf_id = await tree.newest_leaf_under(db, message.id)
    actor.record(
        db, "thread.select_branch", thread, project_id=thread.project_id,
        details={"messageId": str(message.id), "leafId": str(thread.active_leaf_id)},
    )  # fmt: skip
    return await stored(db, thread)
