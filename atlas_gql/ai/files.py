"""Files: uploaded to OpenAI Files (a File row keeps `openaiFileId`), attached to assistants,
threads and messages through FileAssociation.

Who: a file is visible to its uploader, ADMIN, and whoever sees something it is attached to.
Its uploader (or ADMIN) attaches it: to an assistant or thread they may manage or post in,
to a message they sent. Only its uploader (or ADMIN) deletes it."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import Assistant, AssociableType, File, FileAssociation, Message, Thread
from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.ai.provider import UpstreamFailure
from atlas_gql.ai.service import (
    NO_CLIENT,
    Client,
    assistant_visible_to,
    get_assistant,
    get_message,
    get_thread,
    log_activity,
    may_manage,
    require_use_ai,
    thread_visible_to,
)
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput, Forbidden, NotFound, UpstreamError
from atlas_gql.ids import decode_global_id
from atlas_gql.logs.audit import record_error
from atlas_gql.logs.models import ErrorSource
from atlas_gql.projects.access import require_project_role
from atlas_gql.projects.models import ProjectRole

logger = logging.getLogger(__name__)

PURPOSES = ("user_data", "assistants", "vision")
FILENAME_MAX = 255
TARGET_TYPES = {
    "Assistant": AssociableType.ASSISTANT,
    "Thread": AssociableType.THREAD,
    "Message": AssociableType.MESSAGE,
}


class UploadLike(Protocol):
    """What Starlette's UploadFile offers (Strawberry's `Upload` on ASGI)."""

    @property
    def filename(self) -> str | None: ...

    @property
    def content_type(self) -> str | None: ...

    async def read(self, size: int = -1) -> bytes: ...


def file_visible_to(viewer: Viewer) -> Any:
    if viewer.is_admin:
        return sa.true()
    association = FileAssociation
    attached_to_visible = (
        sa.select(sa.literal(1))
        .where(
            col(association.file_id) == col(File.id),
            sa.or_(
                sa.and_(
                    col(association.associable_type) == AssociableType.ASSISTANT,
                    col(association.associable_id).in_(
                        sa.select(col(Assistant.id)).where(assistant_visible_to(viewer))
                    ),
                ),
                sa.and_(
                    col(association.associable_type) == AssociableType.THREAD,
                    col(association.associable_id).in_(
                        sa.select(col(Thread.id)).where(thread_visible_to(viewer))
                    ),
                ),
                sa.and_(
                    col(association.associable_type) == AssociableType.MESSAGE,
                    col(association.associable_id).in_(
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


async def upload_file(
    *,
    db: AsyncSession,
    viewer: Viewer,
    ai: AIRuntime,
    upload: UploadLike,
    purpose: str | None = None,
    client: Client = NO_CLIENT,
) -> File:
    """Store an upload in OpenAI Files and record it (BAD_USER_INPUT when too large or
    empty, UPSTREAM_ERROR when OpenAI refuses it)."""
    require_use_ai(viewer)
    purpose = purpose or "user_data"
    if purpose not in PURPOSES:
        raise BadInput(f"`purpose` must be one of {', '.join(PURPOSES)}.", field="purpose")
    # Resolving the viewer began a transaction on this session: end it, so no pooled
    # connection is held while the file is read and sent upstream (up to the size limit and
    # the upstream timeout). Only reads happened; the row is written after the upload.
    await db.rollback()
    limit = ai.settings.atlas_max_upload_bytes
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise BadInput(f"The file is larger than {limit} bytes.", field="file")
    if not content:
        raise BadInput("The file is empty.", field="file")
    filename = (upload.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    filename = filename.strip()[:FILENAME_MAX] or "upload"
    try:
        openai_file_id = await ai.provider.upload_file(
            filename=filename, content=content, mime_type=upload.content_type, purpose=purpose
        )
    except UpstreamFailure as failure:
        request_id = uuid.uuid4().hex
        await record_error(
            sessionmaker=ai.sessionmaker,
            request_id=request_id,
            source=ErrorSource.UPSTREAM,
            error_type="UpstreamFailure",
            message=failure.detail or failure.message,
            path="uploadFile",
            user_id=viewer.user_id,
            upstream_status=failure.http_status,
            upstream_request_id=failure.request_id,
            details={"filename": filename, "bytes": len(content)},
        )
        raise UpstreamError(
            "The AI provider did not accept the file.", requestId=request_id
        ) from failure
    file = File(
        filename=filename,
        bytes=len(content),
        mime_type=(upload.content_type or None),
        purpose=purpose,
        openai_file_id=openai_file_id,
        uploaded_by_id=viewer.user_id,
    )
    db.add(file)
    await db.flush()
    log_activity(
        db, viewer, client, "file.upload", "File", file.id, None,
        {"filename": filename, "bytes": len(content)},
    )  # fmt: skip
    await db.commit()
    await db.refresh(file)
    return file


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
        assistant = await get_assistant(db=db, viewer=viewer, assistant_id=object_id)
        if not await may_manage(
            db, viewer, project_id=assistant.project_id, created_by_id=assistant.created_by_id
        ):
            raise Forbidden("Only its creator or a project manager may change this assistant.")
        return kind, object_id, assistant.project_id
    if kind is AssociableType.THREAD:
        thread = await get_thread(db=db, viewer=viewer, thread_id=object_id)
        if thread.project_id is not None:
            await require_project_role(
                db=db,
                viewer=viewer,
                project_id=thread.project_id,
                minimum=ProjectRole.MEMBER,
                action="attach files to its threads",
            )
        return kind, object_id, thread.project_id
    message = await get_message(db=db, viewer=viewer, message_id=object_id)
    message_thread = await db.get(Thread, message.thread_id)
    project_id = message_thread.project_id if message_thread else None
    if message.user_id != viewer.user_id and not await may_manage(
        db, viewer, project_id=project_id, created_by_id=message.user_id or uuid.UUID(int=0)
    ):
        raise Forbidden("Only its sender or a project manager may change this message.")
    return kind, object_id, project_id


async def attach_file(
    *,
    db: AsyncSession,
    viewer: Viewer,
    file_id: uuid.UUID,
    target_id: str,
    client: Client = NO_CLIENT,
) -> File:
    """Attach a file (idempotent)."""
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
        log_activity(
            db, viewer, client, "file.attach", "File", file.id, project_id,
            {"target": kind.value, "targetId": str(object_id)},
        )  # fmt: skip
        await db.commit()
    return file


async def detach_file(
    *,
    db: AsyncSession,
    viewer: Viewer,
    file_id: uuid.UUID,
    target_id: str,
    client: Client = NO_CLIENT,
) -> bool:
    """Detach a file; False when it was not attached there."""
    file = await get_file(db=db, viewer=viewer, file_id=file_id)
    kind, object_id, project_id = await _target(db, viewer, target_id)
    deleted = await db.execute(
        sa.delete(FileAssociation).where(
            col(FileAssociation.file_id) == file.id,
            col(FileAssociation.associable_type) == kind,
            col(FileAssociation.associable_id) == object_id,
        )
    )
    if not deleted.rowcount:  # type: ignore[attr-defined]
        return False
    log_activity(
        db, viewer, client, "file.detach", "File", file.id, project_id,
        {"target": kind.value, "targetId": str(object_id)},
    )  # fmt: skip
    await db.commit()
    return True


async def delete_file(
    *,
    db: AsyncSession,
    viewer: Viewer,
    ai: AIRuntime,
    file_id: uuid.UUID,
    client: Client = NO_CLIENT,
) -> bool:
    """Delete a file everywhere: its attachments, its row, and (best effort) upstream."""
    file = await _own_file(db, viewer, file_id)
    openai_file_id = file.openai_file_id
    await db.execute(sa.delete(FileAssociation).where(col(FileAssociation.file_id) == file.id))
    log_activity(
        db, viewer, client, "file.delete", "File", file.id, None, {"filename": file.filename}
    )
    await db.delete(file)
    # The commit returns the connection to the pool before the upstream call.
    await db.commit()
    if openai_file_id:
        try:
            await ai.provider.delete_file(openai_file_id)
        except UpstreamFailure:
            logger.warning("could not delete upstream file %s", openai_file_id)
    return True
