"""Files: uploaded to OpenAI Files (a File row keeps `openaiFileId`), attached to assistants,
threads and messages through FileAssociation.

Who: a file is visible to its uploader, ADMIN, and whoever sees something it is attached to.
Its uploader (or ADMIN) attaches it: to an assistant or thread they may manage or post in,
to a message they sent. Only its uploader (or ADMIN) deletes it.

Transactions: no connection is held while bytes travel to or from OpenAI. An upload's row is
stored after the upstream call, in a short transaction of its own (the upstream file exists
from then on, whatever the operation does next); a deletion's rows are removed in a short
transaction before the upstream call."""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import knowledge, rules
from atlas_gql.ai.assistants import managed_assistant
from atlas_gql.ai.messages import get_message
from atlas_gql.ai.models import AssociableType, File, FileAssociation, Thread
from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.ai.provider import UpstreamFailure, record_upstream_failure
from atlas_gql.ai.threads import get_thread, require_posting
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import unstorable_character
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import BadInput, Forbidden, NotFound, UpstreamError
from atlas_gql.ids import decode_global_id
from atlas_gql.logs.audit import ErrorLogPolicy

logger = logging.getLogger(__name__)

PURPOSES = ("user_data", "assistants", "vision")
TARGET_TYPES = {
    "Assistant": AssociableType.ASSISTANT,
    "Thread": AssociableType.THREAD,
    "Message": AssociableType.MESSAGE,
}


@runtime_checkable
class UploadLike(Protocol):
    """What Starlette's UploadFile offers (Strawberry's `Upload` on ASGI)."""

    @property
    def filename(self) -> str | None: ...

    @property
    def content_type(self) -> str | None: ...

    async def read(self, size: int = -1) -> bytes: ...


def require_upload(value: object) -> None:
    """BAD_USER_INPUT unless `value` is an uploaded file: over JSON a client can put any
    value (a string, a number, null) where a multipart request's file part goes."""
    if not isinstance(value, UploadLike):
        raise BadInput("`file` must be a file part of a GraphQL multipart request.", field="file")


@dataclass(frozen=True)
class FileUpload:
    upload: UploadLike
    # user_data (the default), assistants or vision.
    purpose: str | None = None

    def __post_init__(self) -> None:
        require_upload(self.upload)


def file_visible_to(viewer: Viewer) -> Any:
    """The files `viewer` may see, as a SQL condition: the shared rule (`ai.rules`)."""
    return rules.file_visible(viewer_literals(viewer), table_of(File))


async def get_file(*, db: ReadSession, viewer: Viewer, file_id: uuid.UUID) -> File:
    """A file the viewer may see; NOT_FOUND otherwise."""
    file = (
        await db.execute(sa.select(File).where(col(File.id) == file_id, file_visible_to(viewer)))
    ).scalar_one_or_none()
    if file is None:
        raise NotFound("File not found.")
    return file


async def _own_file(db: ReadSession, viewer: Viewer, file_id: uuid.UUID) -> File:
    file = await get_file(db=db, viewer=viewer, file_id=file_id)
    if file.uploaded_by_id != viewer.user_id and not viewer.is_admin:
        raise Forbidden("Only the file's uploader may do this.")
    return file


async def upload_file(*, ai: AIRuntime, actor: Actor, data: FileUpload) -> File:
    """Store an upload in OpenAI Files and record it (BAD_USER_INPUT when too large or
    empty, UPSTREAM_ERROR when OpenAI refuses it)."""
    actor.require(PermissionName.USE_AI)
    viewer = actor.viewer_required
    purpose = data.purpose or "user_data"
    if purpose not in PURPOSES:
        raise BadInput(f"`purpose` must be one of {', '.join(PURPOSES)}.", field="purpose")
    limit = ai.settings.atlas_max_upload_bytes
    content = await data.upload.read(limit + 1)
    if len(content) > limit:
        raise BadInput(f"The file is larger than {limit} bytes.", field="file")
    if not content:
        raise BadInput("The file is empty.", field="file")
    filename = (data.upload.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    filename = filename.strip()[: TEXT_LIMITS.filename] or "upload"
    mime_type = (data.upload.content_type or "")[: TEXT_LIMITS.filename] or None
    for text in (filename, mime_type or ""):
        # Multipart headers are the one client text the sanitising layer does not see.
        problem = unstorable_character(text)
        if problem is not None:
            raise BadInput(f"The file's name or type contains {problem}.", field="file")
    try:
        openai_file_id = await ai.provider.upload_file(
            filename=filename, content=content, mime_type=mime_type, purpose=purpose
        )
    except UpstreamFailure as failure:
        await record_upstream_failure(
            failure,
            sessionmaker=ai.sessionmaker,
            request_id=actor.request_id,
            path="uploadFile",
            user_id=viewer.user_id,
            details={"filename": filename, "bytes": len(content)},
            policy=ErrorLogPolicy.from_settings(ai.settings),
        )
        raise UpstreamError(
            "The AI provider did not accept the file.", requestId=actor.request_id
        ) from failure
    file = File(
        filename=filename,
        bytes=len(content),
        mime_type=mime_type,
        purpose=purpose,
        openai_file_id=openai_file_id,
        uploaded_by_id=viewer.user_id,
    )
    return await execute_transaction(
        ai.sessionmaker, functools.partial(_store_upload, actor=actor, file=file)
    )


async def _store_upload(db: AsyncSession, *, actor: Actor, file: File) -> File:
    details = {"filename": file.filename, "bytes": file.bytes}
    return await actor.created(db, "file.upload", file, details=details)


async def _target(
    db: ReadSession, viewer: Viewer, target_id: str
) -> tuple[AssociableType, uuid.UUID, uuid.UUID | None]:
    """(kind, id, project) of an attachment target the viewer may change; NOT_FOUND when
    they may not see it, FORBIDDEN when they may not change it."""
    type_name, object_id = decode_global_id(target_id, field="targetId")
    kind = TARGET_TYPES.get(type_name)
    if kind is None:
        raise BadInput("`targetId` must be an Assistant, Thread or Message ID.", field="targetId")
    if kind is AssociableType.ASSISTANT:
        assistant = await managed_assistant(db, viewer, object_id, action="change")
        return kind, object_id, assistant.project_id
    if kind is AssociableType.THREAD:
        thread = await get_thread(db=db, viewer=viewer, thread_id=object_id)
        await require_posting(db, viewer, thread, action="attach files to its threads")
        return kind, object_id, thread.project_id
    message = await get_message(db=db, viewer=viewer, message_id=object_id)
    message_thread = await db.get(Thread, message.thread_id)
    project_id = message_thread.project_id if message_thread else None
    if not await rules.holds(db, rules.message_changeable, viewer, rules.messages, message.id):
        raise Forbidden(
            "Only its sender (a MEMBER or higher of the project) or a project manager may change "
            "this message."
        )
    return kind, object_id, project_id


async def attach_file(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, file_id: uuid.UUID, target_id: str
) -> File:
    """Attach a file (idempotent). Attached to an assistant or a thread, it is indexed for
    file search once the operation commits (`indexStatus`; ai/knowledge.py)."""
    viewer = actor.viewer_required
    file = await _own_file(db, viewer, file_id)
    kind, object_id, project_id = await _target(db, viewer, target_id)
    exists = await db.scalar(
        sa.select(col(FileAssociation.id)).where(
            col(FileAssociation.file_id) == file.id,
            col(FileAssociation.associable_type) == kind,
            col(FileAssociation.associable_id) == object_id,
        )
    )
    if exists is None:
        db.add(FileAssociation(file_id=file.id, associable_type=kind, associable_id=object_id))
        actor.record(
            db, "file.attach", file, project_id=project_id,
            details={"target": kind.value, "targetId": str(object_id)},
        )  # fmt: skip
        await db.flush()
    await knowledge.after_attach(
        db, ai, kind=kind, owner_id=object_id, file=file, new=exists is None
    )
    return file


async def detach_file(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, file_id: uuid.UUID, target_id: str
) -> File:
    """Detach a file (idempotent: a file not attached there is left as it is); detached
    from an assistant or thread, it leaves its vector store once the operation commits."""
    viewer = actor.viewer_required
    file = await get_file(db=db, viewer=viewer, file_id=file_id)
    kind, object_id, project_id = await _target(db, viewer, target_id)
    deleted = await db.execute(
        sa.delete(FileAssociation).where(
            col(FileAssociation.file_id) == file.id,
            col(FileAssociation.associable_type) == kind,
            col(FileAssociation.associable_id) == object_id,
        )
    )
    if deleted.rowcount:  # type: ignore[attr-defined]
        actor.record(
            db, "file.detach", file, project_id=project_id,
            details={"target": kind.value, "targetId": str(object_id)},
        )  # fmt: skip
        await knowledge.after_detach(db, ai, kind=kind, owner_id=object_id, file=file)
    return file


async def delete_file(*, ai: AIRuntime, actor: Actor, file_id: uuid.UUID) -> bool:
    """Delete a file everywhere: its attachments and its row (in a short transaction of its
    own, so no connection is held during the upstream call), then, best effort, upstream:
    out of the vector stores that held it, and from OpenAI Files."""
    openai_file_id, store_ids = await execute_transaction(
        ai.sessionmaker, functools.partial(_delete_rows, actor=actor, file_id=file_id)
    )
    if openai_file_id:
        await knowledge.remove_from_stores(ai, store_ids, openai_file_id)
        try:
            await ai.provider.delete_file(openai_file_id)
        except UpstreamFailure:
            logger.warning("could not delete upstream file %s", openai_file_id)
    return True


async def _delete_rows(
    db: AsyncSession, *, actor: Actor, file_id: uuid.UUID
) -> tuple[str | None, list[str]]:
    file = await _own_file(db, actor.viewer_required, file_id)
    store_ids = await knowledge.stores_holding(db, file.id)
    await db.execute(sa.delete(FileAssociation).where(col(FileAssociation.file_id) == file.id))
    actor.record(db, "file.delete", file, details={"filename": file.filename})
    await db.delete(file)
    return file.openai_file_id, store_ids
