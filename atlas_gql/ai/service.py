"""The rules of the AI domain: assistants, threads, messages (send, cancel).

Visibility (NOT_FOUND otherwise, so ids do not leak):
- an assistant: its creator, the members of its project, ADMIN;
- a thread: the members of its project (its creator alone for a thread without a project),
  ADMIN; a message: whoever sees its thread.
Changes: an assistant or a thread is changed by its creator, a MANAGER+ of its project, or
ADMIN (FORBIDDEN for other viewers who see it). Posting needs USE_AI and the MEMBER role
(a VIEWER reads but may not post). A running reply is stopped by its sender or a MANAGER+."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.events import created_event
from atlas_gql.ai.models import (
    Assistant,
    AssociableType,
    File,
    FileAssociation,
    Message,
    MessageRole,
    MessageStatus,
    Thread,
)
from atlas_gql.ai.orchestrator import AIRuntime, ReplyJob
from atlas_gql.ai.pricing import allowed_models
from atlas_gql.ai.recovery import is_stale
from atlas_gql.ai.sequences import SequenceBlock
from atlas_gql.auth.models import PermissionName
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.errors import BadInput, Conflict, Forbidden, NotFound
from atlas_gql.logs.audit import record_activity
from atlas_gql.logs.usage import CHARS_PER_TOKEN, InFlight, ensure_within_budget
from atlas_gql.projects.access import (
    project_role_of,
    require_project_role,
    role_at_least,
    visible_project_ids,
)
from atlas_gql.projects.models import ProjectRole

NAME_MAX = 200
TITLE_MAX = 300
INSTRUCTIONS_MAX = 256_000
MAX_FILES_PER_MESSAGE = 20

ASSISTANT_ORDERING = Ordering(sort=col(Assistant.created_at), id=col(Assistant.id), descending=True)
THREAD_ORDERING = Ordering(sort=col(Thread.created_at), id=col(Thread.id), descending=True)


@dataclass(frozen=True)
class Client:
    """Where a request came from, for activity rows."""

    ip_address: str | None = None
    user_agent: str | None = None


NO_CLIENT = Client()


def require_use_ai(viewer: Viewer) -> None:
    if not viewer.has_permission(PermissionName.USE_AI):
        raise Forbidden("This requires the USE_AI permission.")


def log_activity(
    db: AsyncSession,
    viewer: Viewer,
    client: Client,
    action: str,
    entity_type: str,
    entity_id: uuid.UUID,
    project_id: uuid.UUID | None,
    details: dict[str, Any] | None = None,
) -> None:
    record_activity(
        db=db,
        action=action,
        user_id=viewer.user_id,
        entity_type=entity_type,
        entity_id=entity_id,
        project_id=project_id,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        details=details,
    )


# -- visibility as SQL predicates (so lists filter in the database) -------------------------


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


async def may_manage(
    db: ReadSession, viewer: Viewer, *, project_id: uuid.UUID | None, created_by_id: uuid.UUID
) -> bool:
    """Creator, MANAGER+ of the project, or ADMIN."""
    if viewer.is_admin or viewer.user_id == created_by_id:
        return True
    if project_id is None:
        return False
    role = await project_role_of(db=db, project_id=project_id, user_id=viewer.user_id)
    return role_at_least(role, ProjectRole.MANAGER)


# -- assistants ------------------------------------------------------------------------------


def _clean_name(name: str, *, field: str = "name", limit: int = NAME_MAX) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise BadInput(f"`{field}` must not be empty.", field=field)
    if len(cleaned) > limit:
        raise BadInput(f"`{field}` must be at most {limit} characters.", field=field)
    return cleaned


def _check_model(settings: Settings, model: str) -> str:
    models = allowed_models(settings)
    if model not in models:
        raise BadInput(f"Unknown model {model!r}; allowed: {', '.join(models)}.", field="model")
    return model


def _check_temperature(temperature: float | None) -> float | None:
    if temperature is not None and not 0 <= temperature <= 2:
        raise BadInput("`temperature` must be between 0 and 2.", field="temperature")
    return temperature


def _check_instructions(instructions: str | None) -> str | None:
    if instructions is not None and len(instructions) > INSTRUCTIONS_MAX:
        raise BadInput(
            f"`instructions` must be at most {INSTRUCTIONS_MAX} characters.", field="instructions"
        )
    return instructions


async def list_assistants(
    *, db: ReadSession, viewer: Viewer, request: PageRequest, project_id: uuid.UUID | None = None
) -> Page[Assistant]:
    """The assistants the viewer may see, newest first."""
    statement = sa.select(Assistant).where(assistant_visible_to(viewer))
    if project_id is not None:
        statement = statement.where(col(Assistant.project_id) == project_id)
    return await paginate(db, statement, ordering=ASSISTANT_ORDERING, request=request)


async def get_assistant(*, db: ReadSession, viewer: Viewer, assistant_id: uuid.UUID) -> Assistant:
    """An assistant the viewer may see; NOT_FOUND otherwise."""
    assistant = (
        await db.execute(
            sa.select(Assistant).where(
                col(Assistant.id) == assistant_id, assistant_visible_to(viewer)
            )
        )
    ).scalar_one_or_none()
    if assistant is None:
        raise NotFound("Assistant not found.")
    return assistant


async def create_assistant(
    *,
    db: AsyncSession,
    viewer: Viewer,
    settings: Settings,
    name: str,
    model: str | None = None,
    instructions: str | None = None,
    temperature: float | None = None,
    description: str | None = None,
    project_id: uuid.UUID | None = None,
    client: Client = NO_CLIENT,
) -> Assistant:
    """A new assistant, personal or (for a MANAGER+ of the project) shared with a project."""
    require_use_ai(viewer)
    if project_id is not None:
        await require_project_role(
            db=db,
            viewer=viewer,
            project_id=project_id,
            minimum=ProjectRole.MANAGER,
            action="configure the project's assistants",
        )
    assistant = Assistant(
        name=_clean_name(name),
        description=description,
        model=_check_model(settings, model or settings.atlas_default_model),
        instructions=_check_instructions(instructions),
        temperature=_check_temperature(temperature),
        project_id=project_id,
        created_by_id=viewer.user_id,
    )
    db.add(assistant)
    await db.flush()
    log_activity(
        db, viewer, client, "assistant.create", "Assistant", assistant.id, project_id,
        {"name": assistant.name, "model": assistant.model},
    )  # fmt: skip
    await db.commit()
    await db.refresh(assistant)
    return assistant


async def update_assistant(
    *,
    db: AsyncSession,
    viewer: Viewer,
    settings: Settings,
    assistant_id: uuid.UUID,
    changes: dict[str, Any],
    client: Client = NO_CLIENT,
) -> Assistant:
    """Change an assistant's name, model, instructions, temperature or description."""
    assistant = await get_assistant(db=db, viewer=viewer, assistant_id=assistant_id)
    if not await may_manage(
        db, viewer, project_id=assistant.project_id, created_by_id=assistant.created_by_id
    ):
        raise Forbidden("Only its creator or a project manager may change this assistant.")
    if "name" in changes:
        assistant.name = _clean_name(changes["name"] or "")
    if "model" in changes:
        assistant.model = _check_model(settings, changes["model"] or "")
    if "instructions" in changes:
        assistant.instructions = _check_instructions(changes["instructions"])
    if "temperature" in changes:
        assistant.temperature = _check_temperature(changes["temperature"])
    if "description" in changes:
        assistant.description = changes["description"]
    log_activity(
        db, viewer, client, "assistant.update", "Assistant", assistant.id, assistant.project_id,
        {"fields": sorted(changes)},
    )  # fmt: skip
    await db.commit()
    await db.refresh(assistant)
    return assistant


async def delete_assistant(
    *, db: AsyncSession, viewer: Viewer, assistant_id: uuid.UUID, client: Client = NO_CLIENT
) -> bool:
    """Delete an assistant; its threads stay (without an assistant)."""
    assistant = await get_assistant(db=db, viewer=viewer, assistant_id=assistant_id)
    if not await may_manage(
        db, viewer, project_id=assistant.project_id, created_by_id=assistant.created_by_id
    ):
        raise Forbidden("Only its creator or a project manager may delete this assistant.")
    await _delete_associations(db, AssociableType.ASSISTANT, [assistant.id])
    log_activity(
        db, viewer, client, "assistant.delete", "Assistant", assistant.id, assistant.project_id
    )
    await db.delete(assistant)
    await db.commit()
    return True


async def _delete_associations(
    db: AsyncSession, kind: AssociableType, ids: Sequence[uuid.UUID] | Any
) -> None:
    await db.execute(
        sa.delete(FileAssociation).where(
            col(FileAssociation.associable_type) == kind,
            col(FileAssociation.associable_id).in_(ids),
        )
    )


# -- threads ---------------------------------------------------------------------------------


async def list_threads(
    *, db: ReadSession, viewer: Viewer, request: PageRequest, project_id: uuid.UUID | None = None
) -> Page[Thread]:
    """The threads the viewer may see, newest first."""
    statement = sa.select(Thread).where(thread_visible_to(viewer))
    if project_id is not None:
        statement = statement.where(col(Thread.project_id) == project_id)
    return await paginate(db, statement, ordering=THREAD_ORDERING, request=request)


async def get_thread(
    *, db: ReadSession, viewer: Viewer, thread_id: uuid.UUID, for_update: bool = False
) -> Thread:
    """A thread the viewer may see; NOT_FOUND otherwise."""
    statement = sa.select(Thread).where(col(Thread.id) == thread_id, thread_visible_to(viewer))
    thread = (await db.execute(statement)).scalar_one_or_none()
    if thread is None:
        raise NotFound("Thread not found.")
    if for_update:
        # Lock the row (re-read): serializes sendMessage on this thread.
        locked = await db.execute(
            sa.select(Thread)
            .where(col(Thread.id) == thread_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        thread = locked.scalar_one()
    return thread


async def create_thread(
    *,
    db: AsyncSession,
    viewer: Viewer,
    assistant_id: uuid.UUID,
    project_id: uuid.UUID | None = None,
    title: str | None = None,
    client: Client = NO_CLIENT,
) -> Thread:
    """A new thread with an assistant, in a project (MEMBER+) or personal. The OpenAI
    conversation is created with the first reply, so this never waits on the upstream."""
    require_use_ai(viewer)
    if project_id is not None:
        await require_project_role(
            db=db,
            viewer=viewer,
            project_id=project_id,
            minimum=ProjectRole.MEMBER,
            action="start threads",
        )
    assistant = (
        await db.execute(
            sa.select(Assistant).where(
                col(Assistant.id) == assistant_id, assistant_visible_to(viewer)
            )
        )
    ).scalar_one_or_none()
    if assistant is None:
        raise NotFound("Assistant not found.", field="assistantId")
    if assistant.project_id is not None and assistant.project_id != project_id:
        raise BadInput("This assistant belongs to another project.", field="assistantId")
    thread = Thread(
        title=_clean_name(title, field="title", limit=TITLE_MAX) if title is not None else None,
        project_id=project_id,
        assistant_id=assistant.id,
        created_by_id=viewer.user_id,
    )
    db.add(thread)
    await db.flush()
    log_activity(
        db, viewer, client, "thread.create", "Thread", thread.id, project_id,
        {"assistantId": str(assistant.id)},
    )  # fmt: skip
    await db.commit()
    await db.refresh(thread)
    return thread


async def update_thread(
    *,
    db: AsyncSession,
    viewer: Viewer,
    thread_id: uuid.UUID,
    title: str | None,
    client: Client = NO_CLIENT,
) -> Thread:
    """Rename a thread (creator, project MANAGER+, ADMIN)."""
    thread = await get_thread(db=db, viewer=viewer, thread_id=thread_id)
    if not await may_manage(
        db, viewer, project_id=thread.project_id, created_by_id=thread.created_by_id
    ):
        raise Forbidden("Only its creator or a project manager may rename this thread.")
    thread.title = _clean_name(title, field="title", limit=TITLE_MAX) if title is not None else None
    log_activity(db, viewer, client, "thread.update", "Thread", thread.id, thread.project_id)
    await db.commit()
    await db.refresh(thread)
    return thread


async def delete_thread(
    *, db: AsyncSession, viewer: Viewer, thread_id: uuid.UUID, client: Client = NO_CLIENT
) -> bool:
    """Delete a thread and its messages (creator, project MANAGER+, ADMIN). Refused while a
    reply runs (cancel it first)."""
    thread = await get_thread(db=db, viewer=viewer, thread_id=thread_id, for_update=True)
    if not await may_manage(
        db, viewer, project_id=thread.project_id, created_by_id=thread.created_by_id
    ):
        raise Forbidden("Only its creator or a project manager may delete this thread.")
    if await _running_reply(db, thread.id) is not None:
        raise Conflict("A reply is running in this thread; cancel it first.")
    message_ids = sa.select(col(Message.id)).where(col(Message.thread_id) == thread.id)
    await _delete_associations(db, AssociableType.MESSAGE, message_ids)
    await _delete_associations(db, AssociableType.THREAD, [thread.id])
    log_activity(db, viewer, client, "thread.delete", "Thread", thread.id, thread.project_id)
    await db.delete(thread)
    await db.commit()
    return True


# -- messages --------------------------------------------------------------------------------


async def get_message(*, db: ReadSession, viewer: Viewer, message_id: uuid.UUID) -> Message:
    """A message whose thread the viewer may see; NOT_FOUND otherwise."""
    message = (
        await db.execute(
            sa.select(Message)
            .join(Thread, col(Thread.id) == col(Message.thread_id))
            .where(col(Message.id) == message_id, thread_visible_to(viewer))
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if message is None:
        raise NotFound("Message not found.")
    return message


async def _running_reply(db: ReadSession, thread_id: uuid.UUID) -> Message | None:
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


async def _replies_in_flight(db: ReadSession, project_id: uuid.UUID) -> InFlight:
    """The project's replies IN_PROGRESS and the tokens reckoned for them: each counts the
    estimate of its saved partial text (ceil(chars / 4)), and at least 1 token, so a project
    one token under its budget runs one reply at a time."""
    chars = sa.func.length(col(Message.content))
    reckoned = sa.func.greatest(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)
    replies, tokens = (
        await db.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(reckoned), 0)).where(
                col(Message.status) == MessageStatus.IN_PROGRESS,
                col(Message.role) == MessageRole.ASSISTANT,
                col(Message.thread_id).in_(
                    sa.select(col(Thread.id)).where(col(Thread.project_id) == project_id)
                ),
            )
        )
    ).one()
    return InFlight(replies=int(replies), tokens=int(tokens))


def _check_content(settings: Settings, content: str) -> str:
    if not content.strip():
        raise BadInput("`content` must not be empty.", field="content")
    if len(content) > settings.atlas_max_message_chars:
        raise BadInput(
            f"`content` must be at most {settings.atlas_max_message_chars} characters.",
            field="content",
        )
    return content


async def _files_for_message(
    db: ReadSession, viewer: Viewer, file_ids: Sequence[uuid.UUID]
) -> list[File]:
    unique_ids = list(dict.fromkeys(file_ids))
    if len(unique_ids) > MAX_FILES_PER_MESSAGE:
        raise BadInput(f"At most {MAX_FILES_PER_MESSAGE} files per message.", field="fileIds")
    if not unique_ids:
        return []
    statement = sa.select(File).where(col(File.id).in_(unique_ids))
    if not viewer.is_admin:
        statement = statement.where(col(File.uploaded_by_id) == viewer.user_id)
    files = {file.id: file for file in (await db.execute(statement)).scalars()}
    missing = [file_id for file_id in unique_ids if file_id not in files]
    if missing:
        raise NotFound("File not found.", field="fileIds")
    for file in files.values():
        if not file.openai_file_id:
            raise BadInput(f"File {file.filename!r} was not stored upstream.", field="fileIds")
    return [files[file_id] for file_id in unique_ids]


async def send_message(
    *,
    db: AsyncSession,
    viewer: Viewer,
    ai: AIRuntime,
    thread_id: uuid.UUID,
    content: str,
    file_ids: Sequence[uuid.UUID] = (),
    client: Client = NO_CLIENT,
) -> tuple[Message, Message]:
    """Store the user's message (COMPLETED) and the assistant's (IN_PROGRESS) in one
    transaction and start the streamed reply in the background. CONFLICT while another reply
    of the thread runs; QUOTA_EXCEEDED past the project's budget."""
    require_use_ai(viewer)
    content = _check_content(ai.settings, content)
    for _ in range(2):
        thread = await get_thread(db=db, viewer=viewer, thread_id=thread_id, for_update=True)
        if thread.project_id is not None:
            await require_project_role(
                db=db,
                viewer=viewer,
                project_id=thread.project_id,
                minimum=ProjectRole.MEMBER,
                action="post in its threads",
            )
        running = await _running_reply(db, thread.id)
        if running is None:
            break
        if running.id in ai.replies or not is_stale(running, ai.settings):
            raise Conflict("A reply is already in progress in this thread; wait or cancel it.")
        # Its worker is gone: resume it (a background reply: CONFLICT next time round) or
        # finish it (outside our lock), then try again.
        orphan_id, orphan_thread_id = running.id, thread.id
        await db.rollback()
        await ai.recover_reply(message_id=orphan_id, thread_id=orphan_thread_id)
    else:
        raise Conflict("A reply is already in progress in this thread; wait or cancel it.")
    if thread.assistant_id is None:
        raise BadInput("This thread has no assistant any more.", field="threadId")
    assistant = await db.get(Assistant, thread.assistant_id)
    if assistant is None:
        raise BadInput("This thread has no assistant any more.", field="threadId")
    files = await _files_for_message(db, viewer, file_ids)
    # Takes the project's budget lock (held until the commit below stores this reply
    # IN_PROGRESS), so concurrent sends in other threads of the project count it.
    if thread.project_id is not None:
        await ensure_within_budget(
            db=db,
            project_id=thread.project_id,
            in_flight=functools.partial(_replies_in_flight, db, thread.project_id),
        )

    now = datetime.now(UTC)
    user_message = Message(
        thread_id=thread.id,
        user_id=viewer.user_id,
        role=MessageRole.USER,
        content=content,
        status=MessageStatus.COMPLETED,
        created_at=now,
        completed_at=now,
    )
    # The reply records who asked (its sender, who may cancel it).
    assistant_message = Message(
        thread_id=thread.id,
        user_id=viewer.user_id,
        role=MessageRole.ASSISTANT,
        content="",
        status=MessageStatus.IN_PROGRESS,
        model=assistant.model,
        created_at=now + timedelta(microseconds=1),
        heartbeat_at=now,
        reply_worker_id=ai.worker_id,
    )
    db.add_all([user_message, assistant_message])
    await db.flush()
    for file in files:
        db.add(
            FileAssociation(
                file_id=file.id,
                associable_type=AssociableType.MESSAGE,
                associable_id=user_message.id,
            )
        )
    (user_created, reply_created), sequences = SequenceBlock.open(thread, taken=2)
    log_activity(
        db, viewer, client, "message.send", "Message", user_message.id, thread.project_id,
        {"threadId": str(thread.id), "chars": len(content), "files": len(files)},
    )  # fmt: skip
    job = ReplyJob(
        thread_id=thread.id,
        project_id=thread.project_id,
        user_id=viewer.user_id,
        user_message_id=user_message.id,
        assistant_message_id=assistant_message.id,
        model=assistant.model,
        instructions=assistant.instructions,
        temperature=assistant.temperature,
        content=content,
        openai_file_ids=[file.openai_file_id for file in files if file.openai_file_id],
        conversation_id=thread.openai_thread_id,
        sequences=sequences,
    )
    await db.commit()
    # Hold a connection again before the payload's relation fields load concurrently.
    await db.refresh(user_message)
    ai.start_reply(
        job,
        created=[
            created_event(user_created, user_message),
            created_event(reply_created, assistant_message),
        ],
    )
    return user_message, assistant_message


async def cancel_message(
    *, db: AsyncSession, viewer: Viewer, ai: AIRuntime, message_id: uuid.UUID,
    client: Client = NO_CLIENT,
) -> Message:  # fmt: skip
    """Stop a running reply: CANCELLED with its partial text (its sender, a project
    MANAGER+, ADMIN). A reply already cancelled is returned as it is; a finished one is a
    CONFLICT."""
    message = await get_message(db=db, viewer=viewer, message_id=message_id)
    thread = await db.get(Thread, message.thread_id)
    assert thread is not None
    may_stop = viewer.is_admin or message.user_id == viewer.user_id
    if not may_stop and thread.project_id is not None:
        role = await project_role_of(db=db, project_id=thread.project_id, user_id=viewer.user_id)
        may_stop = role_at_least(role, ProjectRole.MANAGER)
    if not may_stop:
        raise Forbidden("Only its sender or a project manager may stop this reply.")
    if message.status is MessageStatus.CANCELLED:
        return message
    if message.status is not MessageStatus.IN_PROGRESS:
        raise Conflict(f"This message is {message.status.value}, not in progress.")
    log_activity(db, viewer, client, "message.cancel", "Message", message.id, thread.project_id)
    await db.commit()
    await ai.cancel_reply(message_id=message.id, thread_id=thread.id)
    return await get_message(db=db, viewer=viewer, message_id=message_id)
