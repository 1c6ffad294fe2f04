"""What the AI domain keeps inside a project, as `projects` asks it through its hooks: the
file attachments to delete with a project, and the `defaultAssistantId` setting. Importing
`atlas_gql.ai` registers these (see `ai/__init__.py`)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.attachments import attached_to, delete_attachments
from atlas_gql.ai.models import Assistant, AssociableType, Message, Thread
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput
from atlas_gql.ids import decode_id_of
from atlas_gql.projects.hooks import check_setting, on_project_delete

DEFAULT_ASSISTANT_ID = "defaultAssistantId"


@on_project_delete
async def delete_project_attachments(db: AsyncSession, project_id: uuid.UUID) -> None:
    """The file attachments of a project's threads, messages and assistants. FileAssociation
    is polymorphic (no foreign key), so its rows would outlive their targets; the targets
    themselves go with the project (the foreign keys cascade)."""
    thread_ids = sa.select(col(Thread.id)).where(col(Thread.project_id) == project_id)
    message_ids = sa.select(col(Message.id)).where(col(Message.thread_id).in_(thread_ids))
    assistant_ids = sa.select(col(Assistant.id)).where(col(Assistant.project_id) == project_id)
    await delete_attachments(
        db,
        attached_to(AssociableType.THREAD, thread_ids),
        attached_to(AssociableType.MESSAGE, message_ids),
        attached_to(AssociableType.ASSISTANT, assistant_ids),
    )


@check_setting(DEFAULT_ASSISTANT_ID)
async def check_default_assistant(db: ReadSession, project_id: uuid.UUID, value: Any) -> None:
    """`defaultAssistantId` is the ID of an Assistant of this project."""
    if not isinstance(value, str):
        raise BadInput(f"`{DEFAULT_ASSISTANT_ID}` must be an Assistant ID.", field="value")
    assistant_id = decode_id_of(value, "Assistant", field="value")
    assistant = await db.get(Assistant, assistant_id)
    if assistant is None or assistant.project_id != project_id:
        raise BadInput(
            f"`{DEFAULT_ASSISTANT_ID}` must be the ID of an assistant of this project.",
            field="value",
        )
