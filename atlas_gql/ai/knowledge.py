"""The knowledge behind file search: an OpenAI vector store per assistant and per thread with
files, kept in step with their attachments, and the stores a reply may read.

- Attaching a file to an assistant or a thread (Responses adapter only) marks the file
  `index_status` IN_PROGRESS in the operation; once the operation commits, a background task
  creates the owner's store if it has none (one conditional UPDATE keeps the first of two
  concurrent creations; the other store is deleted), adds the file, waits for the upstream's
  indexing, and records COMPLETED or FAILED with `index_error` (and an ErrorLog row). Attaching
  again a file whose indexing did not complete starts it again.
- Detaching removes the file from the store after the commit; deleting the file removes it
  from every store that held it, then deletes it upstream; deleting an assistant or thread
  deletes its store after the commit. An upstream failure there is logged (ErrorLog), never
  the user's error: the attachment is gone from ATLAS either way, and a reply only reads the
  stores of the thread and of its assistant.
- No database connection is held during an upstream call: each step is a short session.

Who reads what (`vector_store_ids_for`): a reply in a thread reads the thread's own store and
its assistant's store only when the sender may see that assistant (a personal assistant used
in a project thread is its creator's: other members get no answers from its files). A file
attached to either is visible to whoever sees the thread (ai.rules.file_visible), so no
reply draws on a file its sender could not see."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai import rules
from atlas_gql.ai.models import (
    Assistant,
    AssistantTool,
    AssociableType,
    File,
    FileAssociation,
    FileIndexStatus,
    Thread,
)
from atlas_gql.ai.provider import Provider, UpstreamFailure, record_upstream_failure
from atlas_gql.ai.vector_stores import INDEX_FAILED_ERROR, IndexState, VectorStores
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.db.session import ReadSession, after_commit
from atlas_gql.db.utils import execute_transaction
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.audit import ErrorLogPolicy, record_error
from atlas_gql.logs.models import ErrorSource

logger = logging.getLogger(__name__)


class KnowledgeRuntime(Protocol):
    """What this module uses of the AI runtime (`orchestrator.AIRuntime`), named here so that
    the services of assistants and threads need not import the orchestrator (which imports
    them, through titles)."""

    provider: Provider
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    spawn: Callable[..., asyncio.Task[Any]]


OWNERS: dict[AssociableType, type[Assistant] | type[Thread]] = {
    AssociableType.ASSISTANT: Assistant,
    AssociableType.THREAD: Thread,
}
# Polling the upstream's indexing: first pause, longest pause, and when to give up (seconds).
POLL_FIRST = 0.5
POLL_MAX = 5.0
INDEX_WAIT_MAX = 600.0
INDEX_TIMEOUT_ERROR = "The AI provider did not finish indexing the file in time."


def indexes(ai: KnowledgeRuntime, kind: AssociableType) -> bool:
    """Attachments of this kind are indexed (an assistant's or a thread's, on an adapter
    with vector stores)."""
    return kind in OWNERS and ai.provider.supports_tools


async def after_attach(
    db: AsyncSession,
    ai: KnowledgeRuntime,
    *,
    kind: AssociableType,
    owner_id: uuid.UUID,
    file: File,
    new: bool,
) -> None:
    """A file was attached (`new`) or attached again: index it once the operation commits
    (attached again: only when its indexing did not complete)."""
    if not indexes(ai, kind) or not file.openai_file_id:
        return
    if not new and file.index_status is FileIndexStatus.COMPLETED:
        return
    file.index_status, file.index_error = FileIndexStatus.IN_PROGRESS, None
    await db.flush()
    file_id = file.id

    async def start() -> None:
        ai.spawn(_index(ai, kind, owner_id, file_id), name=f"index-{file_id}")

    after_commit(db, start)


async def after_detach(
    db: AsyncSession, ai: KnowledgeRuntime, *, kind: AssociableType, owner_id: uuid.UUID, file: File
) -> None:
    """A file was detached: take it out of the owner's store once the operation commits; a
    file no longer attached to any assistant or thread is no longer indexed."""
    if not indexes(ai, kind):
        return
    still = await db.scalar(
        sa.select(sa.func.count()).where(
            col(FileAssociation.file_id) == file.id,
            col(FileAssociation.associable_type).in_(list(OWNERS)),
        )
    )
    if not still:
        file.index_status, file.index_error = None, None
        await db.flush()
    store_id = await _store_id(db, kind, owner_id)
    if store_id is None or not file.openai_file_id:
        return
    stores, openai_file_id = VectorStores.of(ai.provider), file.openai_file_id
    assert stores is not None

    async def start() -> None:
        ai.spawn(
            _upstream(ai, stores.remove_file(store_id, openai_file_id), what="remove", of=file),
            name=f"unindex-{file.id}",
        )

    after_commit(db, start)


def after_owner_delete(db: AsyncSession, ai: KnowledgeRuntime, store_id: str | None) -> None:
    """An assistant or thread is being deleted: delete its store once that commits."""
    stores = VectorStores.of(ai.provider)
    if store_id is None or stores is None:
        return

    async def start() -> None:
        ai.spawn(_upstream(ai, stores.delete(store_id), what="delete", of=None), name=store_id)

    after_commit(db, start)


async def stores_holding(db: ReadSession, file_id: uuid.UUID) -> list[str]:
    """The stores of the assistants and threads a file is attached to."""
    found: list[str] = []
    for kind, model in OWNERS.items():
        ids = sa.select(col(FileAssociation.associable_id)).where(
            col(FileAssociation.file_id) == file_id,
            col(FileAssociation.associable_type) == kind,
        )
        rows = await db.execute(
            sa.select(col(model.vector_store_id)).where(
                col(model.id).in_(ids), col(model.vector_store_id).is_not(None)
            )
        )
        found += [store for store in rows.scalars() if store]
    return found


async def remove_from_stores(
    ai: KnowledgeRuntime, store_ids: list[str], openai_file_id: str
) -> None:
    """Take a deleted file out of the stores that held it (best effort, logged)."""
    stores = VectorStores.of(ai.provider)
    if stores is None:
        return
    for store_id in store_ids:
        await _upstream(ai, stores.remove_file(store_id, openai_file_id), what="remove", of=None)


async def vector_store_ids_for(
    db: ReadSession, viewer: Viewer, *, thread: Thread, assistant: Assistant
) -> list[str]:
    """The stores file search may read for `viewer`'s message in `thread`: the thread's own,
    and the assistant's when the viewer may see the assistant. Empty without FILE_SEARCH."""
    if AssistantTool.FILE_SEARCH.value not in (assistant.tools or []):
        return []
    ids = [thread.vector_store_id] if thread.vector_store_id else []
    if assistant.vector_store_id:
        visible = await rules.holds(db, rules.assistant_visible, viewer, rules.assistants,
                                    assistant.id)  # fmt: skip
        if visible:
            ids.append(assistant.vector_store_id)
    return ids


# -- the background steps ------------------------------------------------------------------


async def _store_id(db: ReadSession, kind: AssociableType, owner_id: uuid.UUID) -> str | None:
    model = OWNERS[kind]
    store: str | None = await db.scalar(
        sa.select(col(model.vector_store_id)).where(col(model.id) == owner_id)
    )
    return store


async def _ensure_store(
    ai: KnowledgeRuntime, stores: VectorStores, kind: AssociableType, owner_id: uuid.UUID
) -> str | None:
    """The owner's store, created if it has none; None when the owner is gone."""
    model = OWNERS[kind]
    async with ai.sessionmaker() as db:
        existing = await db.execute(
            sa.select(col(model.vector_store_id)).where(col(model.id) == owner_id)
        )
        row = existing.first()
    if row is None:
        return None
    if row[0]:
        return str(row[0])
    owner = encode_global_id(model.__name__, owner_id)
    created = await stores.create(name=f"ATLAS {model.__name__.lower()} {owner_id}", owner=owner)

    async def keep(db: AsyncSession) -> tuple[str | None, str | None]:
        """(the store kept if ours, else the owner's current store)."""
        kept = await db.scalar(
            sa.update(model)
            .where(col(model.id) == owner_id, col(model.vector_store_id).is_(None))
            # Bookkeeping, not an edit of the owner: updatedAt stays.
            .values(vector_store_id=created, updated_at=col(model.updated_at))
            .returning(col(model.vector_store_id))
        )
        if kept is not None:
            return kept, None
        current = await db.scalar(
            sa.select(col(model.vector_store_id)).where(col(model.id) == owner_id)
        )
        return None, current

    kept, current = await execute_transaction(ai.sessionmaker, keep)
    if kept is not None:
        return created
    # Another attach created one first (or the owner is gone): keep theirs, drop ours.
    await _upstream(ai, stores.delete(created), what="delete", of=None)
    return str(current) if current else None


async def _index(
    ai: KnowledgeRuntime,
    kind: AssociableType,
    owner_id: uuid.UUID,
    file_id: uuid.UUID,
) -> None:
    """Add the file to its owner's store and record the outcome on the file."""
    stores = VectorStores.of(ai.provider)
    assert stores is not None
    async with ai.sessionmaker() as db:
        file = await db.get(File, file_id)
    if file is None or not file.openai_file_id:
        return
    openai_file_id = file.openai_file_id
    store_id: str | None = None
    try:
        store_id = await _ensure_store(ai, stores, kind, owner_id)
        if store_id is None:
            return
        state = await stores.add_file(store_id, openai_file_id)
        state = await _wait_indexed(stores, store_id, openai_file_id, state)
    except UpstreamFailure as failure:
        await _record_index(ai, file, FileIndexStatus.FAILED, failure.message, failure=failure)
        return
    except Exception as error:
        logger.exception("indexing file %s failed", file_id)
        await _record_index(ai, file, FileIndexStatus.FAILED, INDEX_FAILED_ERROR, error=error)
        return
    if state.status == "completed":
        await _record_index(ai, file, FileIndexStatus.COMPLETED, None)
    else:
        text = INDEX_TIMEOUT_ERROR if state.status == "in_progress" else INDEX_FAILED_ERROR
        await _record_index(ai, file, FileIndexStatus.FAILED, text, detail=state.error)
    # Detached while it was being added (the removal may have run before the add landed):
    # take it out again, so the store holds only attached files.
    async with ai.sessionmaker() as db:
        attached = await db.scalar(
            sa.select(col(FileAssociation.id)).where(
                col(FileAssociation.file_id) == file_id,
                col(FileAssociation.associable_type) == kind,
                col(FileAssociation.associable_id) == owner_id,
            )
        )
    if attached is None:
        await _upstream(ai, stores.remove_file(store_id, openai_file_id), what="remove", of=file)


async def _wait_indexed(
    stores: VectorStores, store_id: str, openai_file_id: str, state: IndexState
) -> IndexState:
    pause, waited = POLL_FIRST, 0.0
    while state.status == "in_progress" and waited < INDEX_WAIT_MAX:
        await asyncio.sleep(pause)
        waited += pause
        pause = min(pause * 2, POLL_MAX)
        state = await stores.file_state(store_id, openai_file_id)
    return state


async def _record_index(
    ai: KnowledgeRuntime,
    file: File,
    status: FileIndexStatus,
    error_text: str | None,
    *,
    failure: UpstreamFailure | None = None,
    error: BaseException | None = None,
    detail: str | None = None,
) -> None:

    async def store(db: AsyncSession) -> None:
        await db.execute(
            sa.update(File)
            .where(col(File.id) == file.id)
            .values(index_status=status, index_error=error_text)
        )

    # The ErrorLog row first: a file shown FAILED has its row already.
    if status is FileIndexStatus.FAILED:
        await record_error(
            sessionmaker=ai.sessionmaker,
            request_id=uuid.uuid4().hex,
            source=ErrorSource.UPSTREAM if error is None else ErrorSource.BACKGROUND,
            error=error,
            error_type="IndexFailed" if error is None else None,
            message=(failure.detail or failure.message) if failure else (detail or error_text),
            path=f"index/{encode_global_id('File', file.id)}",
            user_id=file.uploaded_by_id,
            upstream_status=failure.http_status if failure else None,
            upstream_request_id=failure.request_id if failure else None,
            details={"fileId": str(file.id), "openaiFileId": file.openai_file_id},
            policy=ErrorLogPolicy.from_settings(ai.settings),
        )
    await execute_transaction(ai.sessionmaker, store)


async def _upstream(ai: KnowledgeRuntime, call: Any, *, what: str, of: File | None) -> None:
    """Run a store call whose failure is logged (ErrorLog), never raised."""
    try:
        await call
    except UpstreamFailure as failure:
        logger.warning("vector store %s failed: %s", what, failure.detail)
        await record_upstream_failure(
            failure,
            sessionmaker=ai.sessionmaker,
            request_id=uuid.uuid4().hex,
            path=f"vector-store/{what}",
            user_id=of.uploaded_by_id if of else None,
            details={"fileId": str(of.id)} if of else None,
            policy=ErrorLogPolicy.from_settings(ai.settings),
        )
