"""Import and export of threads (issue 15 part 6, docs/import-export.md).

- `export_thread`: a thread the viewer sees, as the ATLAS JSON format (its whole tree) or as
  Markdown (the branch shown).
- `export_project`: every thread of a project in the ATLAS format (MANAGER+, ADMIN).
- `import_threads`: an ATLAS export or ChatGPT's `conversations.json` into new threads of a
  project (MEMBER+) or personal ones. The whole file is read and checked first (a malformed
  file is BAD_USER_INPUT naming the problem, and nothing is stored); then **each thread is
  stored in a short transaction of its own** (`execute_transaction`), so a thread that
  cannot be stored leaves nothing behind and does not undo the others; the result says which
  thread became what. Imported threads get an OpenAI conversation only when someone replies.

Exports run in the query's read session; their activity row is written in a short
transaction of its own (a query's session never commits)."""

from __future__ import annotations

import enum
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import transfer_formats as formats
from atlas_gql.ai import tree
from atlas_gql.ai.assistants import get_assistant
from atlas_gql.ai.files import UploadLike, file_visible_to, require_upload
from atlas_gql.ai.models import File, Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.orchestrator import AIRuntime
from atlas_gql.ai.project_content import DEFAULT_ASSISTANT_ID
from atlas_gql.ai.threads import ThreadCreate, create_thread, get_thread
from atlas_gql.auth.actor import Actor, Entity, EntityRef
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.session import ReadSession, stored
from atlas_gql.db.utils import execute_transaction
from atlas_gql.errors import AtlasError, BadInput
from atlas_gql.ids import decode_id_of
from atlas_gql.logs.audit import ErrorLogPolicy, record_error
from atlas_gql.logs.models import ErrorSource
from atlas_gql.projects.access import require_project_role
from atlas_gql.projects.models import ProjectRole, ProjectSetting

logger = logging.getLogger(__name__)

# The most messages one export document holds (a thread's tree, or a project's threads).
MAX_EXPORT_MESSAGES = 50_000


class ExportFormat(enum.StrEnum):
    JSON = "JSON"
    MARKDOWN = "MARKDOWN"


class ImportFormat(enum.StrEnum):
    ATLAS = "ATLAS"
    CHATGPT = "CHATGPT"


@dataclass(frozen=True)
class ThreadImport:
    upload: UploadLike
    format: ImportFormat
    # The project to import into (MEMBER+); personal threads when None.
    project_id: uuid.UUID | None = None
    # Who answers in the imported threads; the project's `defaultAssistantId` when None.
    assistant_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        require_upload(self.upload)


@dataclass(frozen=True)
class ImportedThreadResult:
    """One thread of the file: the thread stored, or why it was not."""

    index: int
    title: str | None
    messages: int
    thread: Thread | None = None
    error: str | None = None


async def _record_later(
    ai: AIRuntime, actor: Actor, action: str, entity: Entity | EntityRef, **kw: Any
) -> None:
    """An activity row in a short transaction of its own (a query's session never commits)."""

    async def write(db: AsyncSession) -> None:
        actor.record(db, action, entity, **kw)

    await execute_transaction(ai.sessionmaker, write)


async def _thread_messages(db: ReadSession, thread_ids: Any) -> list[Message]:
    rows = await db.execute(
        sa.select(Message)
        .where(col(Message.thread_id).in_(thread_ids))
        .order_by(col(Message.created_at), col(Message.id))
        .limit(MAX_EXPORT_MESSAGES + 1)
    )
    found = list(rows.scalars())
    if len(found) > MAX_EXPORT_MESSAGES:
        raise BadInput(
            f"Too large to export in one document (over {MAX_EXPORT_MESSAGES} messages)."
        )
    return found


async def _visible_files(
    db: ReadSession, viewer: Viewer, file_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str | None]:
    """Of `file_ids`, the files the viewer may see, with their upstream ids (one statement)."""
    if not file_ids:
        return {}
    rows = await db.execute(
        sa.select(col(File.id), col(File.openai_file_id)).where(
            col(File.id).in_(list(file_ids)), file_visible_to(viewer)
        )
    )
    return {row.id: row.openai_file_id for row in rows}


async def export_thread(
    *, db: ReadSession, actor: Actor, ai: AIRuntime, thread_id: uuid.UUID, format: ExportFormat
) -> str:
    """A thread the viewer sees (NOT_FOUND otherwise): JSON (the ATLAS format, its whole
    tree) or MARKDOWN (the branch shown)."""
    thread = await get_thread(db=db, viewer=actor.viewer_required, thread_id=thread_id)
    if format is ExportFormat.MARKDOWN:
        path = (
            await tree.path_to(db, thread.active_leaf_id, limit=MAX_EXPORT_MESSAGES)
            if thread.active_leaf_id is not None
            else []
        )
        text = formats.markdown_document(thread, path)
    else:
        messages = await _thread_messages(db, [thread.id])
        visible = await _visible_files(db, actor.viewer_required, formats.cited_file_ids(messages))
        text = formats.atlas_document(
            [formats.thread_document(thread, messages, visible_files=visible.keys())],
            exported_at=datetime.now(UTC),
        )
    await _record_later(
        ai, actor, "thread.export", thread, project_id=thread.project_id,
        details={"format": format.value},
    )  # fmt: skip
    return text


async def export_project(
    *, db: ReadSession, actor: Actor, ai: AIRuntime, project_id: uuid.UUID
) -> str:
    """Every thread of a project, whole trees, in the ATLAS format (MANAGER+ or ADMIN;
    NOT_FOUND for a project the viewer is not in, FORBIDDEN below MANAGER)."""
    await require_project_role(
        db, actor.viewer_required, project_id, ProjectRole.MANAGER, action="export"
    )
    threads = list(
        (
            await db.execute(
                sa.select(Thread)
                .where(col(Thread.project_id) == project_id)
                .order_by(col(Thread.created_at), col(Thread.id))
            )
        ).scalars()
    )
    ids = sa.select(col(Thread.id)).where(col(Thread.project_id) == project_id)
    by_thread: dict[uuid.UUID, list[Message]] = defaultdict(list)
    messages = await _thread_messages(db, ids)
    for message in messages:
        by_thread[message.thread_id].append(message)
    visible = await _visible_files(db, actor.viewer_required, formats.cited_file_ids(messages))
    text = formats.atlas_document(
        [
            formats.thread_document(thread, by_thread[thread.id], visible_files=visible.keys())
            for thread in threads
        ],
        exported_at=datetime.now(UTC),
    )
    await _record_later(
        ai, actor, "project.export", ("Project", project_id), project_id=project_id,
        details={"threads": len(threads)},
    )  # fmt: skip
    return text


async def _default_assistant(db: ReadSession, project_id: uuid.UUID | None) -> uuid.UUID:
    value = (
        await db.scalar(
            sa.select(col(ProjectSetting.value)).where(
                col(ProjectSetting.project_id) == project_id,
                col(ProjectSetting.setting_key) == DEFAULT_ASSISTANT_ID,
            )
        )
        if project_id is not None
        else None
    )
    if not isinstance(value, str):
        raise BadInput(
            "Name the assistant of the imported threads (`assistantId`): the project has no "
            f"`{DEFAULT_ASSISTANT_ID}` setting.",
            field="assistantId",
        )
    return decode_id_of(value, "Assistant", field="assistantId")


def _cited_file(key: str | None) -> uuid.UUID | None:
    """The ATLAS file a citation of the file names (None for an id of another kind or none)."""
    if key is None:
        return None
    try:
        return decode_id_of(key, "File")
    except BadInput:
        return None


def _stored_citations(
    citations: list[formats.ImportedCitation], files: dict[uuid.UUID, str | None]
) -> list[dict[str, Any]] | None:
    """Imported citations as `messages.citations` holds them (ai/citations.py): a FILE
    citation links its file only when the importer may see it (`files`); otherwise it keeps
    its title, quote and place, naming no file."""
    if not citations:
        return None
    stored = []
    for citation in citations:
        file_id = _cited_file(citation.file_key)
        linked = file_id is not None and file_id in files
        stored.append(
            {
                "kind": citation.kind,
                "fileId": str(file_id) if linked else None,
                "openaiFileId": files[file_id] if linked and file_id is not None else None,
                "url": citation.url,
                "title": citation.title,
                "quote": citation.quote,
                "startIndex": citation.start_index,
                "endIndex": citation.end_index,
            }
        )
    return stored


async def _store_thread(
    db: AsyncSession,
    *,
    actor: Actor,
    imported: formats.ImportedThread,
    data: ThreadImport,
    assistant_id: uuid.UUID,
    files: dict[uuid.UUID, str | None],
) -> Thread:
    """One imported thread and its messages, in the caller's (short) transaction."""
    thread = await create_thread(
        db=db,
        actor=actor,
        data=ThreadCreate(
            assistant_id=assistant_id, project_id=data.project_id, title=imported.title
        ),
    )
    if imported.created_at is not None:
        thread.created_at = imported.created_at
    ids = {message.key: uuid.uuid4() for message in imported.messages}
    viewer = actor.viewer_required
    # Parents come first (formats._ordered): inserted in this order, each parent exists.
    db.add_all(
        [
            Message(
                id=ids[message.key],
                thread_id=thread.id,
                parent_id=ids[message.parent_key] if message.parent_key else None,
                # The importer stands for the file's person; a reply is the thread's assistant.
                user_id=viewer.user_id if message.role is MessageRole.USER else None,
                assistant_id=assistant_id if message.role is MessageRole.ASSISTANT else None,
                role=message.role,
                content=message.content,
                status=message.status,
                created_at=message.created_at,
                completed_at=message.completed_at
                or (message.created_at if message.status is MessageStatus.COMPLETED else None),
                model=message.model,
                input_tokens=message.input_tokens,
                output_tokens=message.output_tokens,
                error=message.error,
                citations=_stored_citations(message.citations, files),
            )
            for message in imported.messages
        ]
    )
    await db.flush()
    thread.active_leaf_id = ids[imported.active_leaf_key] if imported.active_leaf_key else None
    actor.record(
        db, "thread.import", thread, project_id=data.project_id,
        details={"format": data.format.value, "messages": len(imported.messages)},
    )  # fmt: skip
    return await stored(db, thread)


async def import_threads(
    *, ai: AIRuntime, actor: Actor, data: ThreadImport
) -> list[ImportedThreadResult]:
    """Import every thread of the file, each in its own transaction (see the module's
    docstring). BAD_USER_INPUT for a file too large, malformed, or empty; NOT_FOUND /
    FORBIDDEN for a project or assistant the viewer may not use."""
    actor.require(PermissionName.USE_AI)
    viewer = actor.viewer_required
    limit = ai.settings.atlas_max_upload_bytes
    content = await data.upload.read(limit + 1)
    if len(content) > limit:
        raise BadInput(f"The file is larger than {limit} bytes.", field="file")
    reader = formats.read_chatgpt if data.format is ImportFormat.CHATGPT else formats.read_atlas
    threads = reader(content, max_chars=ai.settings.atlas_max_message_chars)
    if not threads:
        raise BadInput("The file holds no thread to import.", field="file")
    # Checked once before anything is stored (each thread's transaction checks again).
    async with ai.sessionmaker() as db:
        if data.project_id is not None:
            await require_project_role(
                db, viewer, data.project_id, ProjectRole.MEMBER, action="import threads"
            )
        assistant_id = data.assistant_id or await _default_assistant(db, data.project_id)
        assistant = await get_assistant(
            db=db, viewer=viewer, assistant_id=assistant_id, field="assistantId"
        )
        if assistant.project_id is not None and assistant.project_id != data.project_id:
            raise BadInput("This assistant belongs to another project.", field="assistantId")
        # The cited files the importer may see: only those stay linked.
        cited = {
            file_id
            for imported in threads
            for message in imported.messages
            for citation in message.citations
            if (file_id := _cited_file(citation.file_key)) is not None
        }
        files = await _visible_files(db, viewer, cited)
    results: list[ImportedThreadResult] = []
    for index, imported in enumerate(threads):
        outcome = functools.partial(
            ImportedThreadResult, index, imported.title, len(imported.messages)
        )
        try:
            thread = await execute_transaction(
                ai.sessionmaker,
                functools.partial(
                    _store_thread, actor=actor, imported=imported, data=data,
                    assistant_id=assistant.id, files=files,
                ),
            )  # fmt: skip
        except AtlasError as error:
            results.append(outcome(error=error.message))
        except Exception as error:
            await record_error(
                sessionmaker=ai.sessionmaker, request_id=actor.request_id,
                source=ErrorSource.BACKGROUND, error=error, path=f"importThreads/{index}",
                user_id=viewer.user_id, policy=ErrorLogPolicy.from_settings(ai.settings),
            )  # fmt: skip
            results.append(outcome(error="The thread could not be stored (a server error)."))
        else:
            results.append(outcome(thread=thread))
    return results
