"""Messages: reading one, sending one (which starts the streamed reply) and stopping a reply.

A message is visible to whoever sees its thread. Posting needs USE_AI and the MEMBER role in
the thread's project (a VIEWER reads but may not post), and stays within the sender's message
rate (a token bucket), the project's monthly token budget and the sender's own. A running
reply is stopped by its sender while they may still post in the thread, a MANAGER+ of the
project, or ADMIN. The rules: `ai.rules`.

Size: over 500 lines on purpose: the checks every new reply passes and the start of
a reply (`prepare_reply`, `ask`, `start_reply`, `check_budgets`) are shared by sendMessage,
editMessage and regenerateMessage (ai/branches.py), and belong next to sending and stopping
one; the statements they run are in ai/reply_reads.py."""

from __future__ import annotations

import asyncio
import functools
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import knowledge, rules
from atlas_gql.ai.events import ThreadEvent, created_event
from atlas_gql.ai.exchange_rows import flush_exchange
from atlas_gql.ai.models import (
    Assistant,
    AssistantTool,
    AssociableType,
    File,
    FileAssociation,
    Message,
    MessageRole,
    MessageStatus,
    Thread,
)
from atlas_gql.ai.orchestrator import AIRuntime, ReplyJob
from atlas_gql.ai.recovery import is_stale
from atlas_gql.ai.reply_reads import (
    BudgetsSpent,
    RunningReply,
    SenderCounted,
    SpentOf,
    message_bucket_key,
    read_sender_and_running,
    read_thread_for_reply,
    spent,
    take_message_token,
)
from atlas_gql.ai.sequences import SequenceBlock
from atlas_gql.ai.threads import require_open, running_reply
from atlas_gql.ai.watch import watch_key
from atlas_gql.auth import buckets
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName, User
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import Settings
from atlas_gql.db.inputs import Command
from atlas_gql.db.session import ReadSession, SerializedAsyncSession, after_commit
from atlas_gql.db.tables import new_row
from atlas_gql.db.utils import AUTOCOMMIT, execute_db_operation, execute_transaction
from atlas_gql.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from atlas_gql.logs.usage import (
    BudgetKind,
    InFlight,
    effective_user_budget,
    ensure_within_budget,
    ensure_within_user_budget,
    user_budget_lock,
)

MAX_FILES_PER_MESSAGE = 20


class MessageSend(Command):
    thread_id: uuid.UUID
    content: str
    # Uploaded files (the sender's) to attach and give to the model.
    file_ids: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True)
class SentMessage:
    """What sendMessage stored, and the number its thread events start after (the exchange's
    events are numbered above it: subscribe with it as `afterSequence` to get them all)."""

    user_message: Message
    assistant_message: Message
    after_sequence: int


async def get_message(*, db: ReadSession, viewer: Viewer, message_id: uuid.UUID) -> Message:
    """A message whose thread the viewer may see; NOT_FOUND otherwise."""
    visible = rules.message_visible(viewer_literals(viewer), rules.messages)
    message = (
        await db.execute(
            sa.select(Message)
            .where(col(Message.id) == message_id, visible)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if message is None:
        raise NotFound("Message not found.")
    return message


RATE_LIMITED_MESSAGE = "You are sending messages too fast; try again shortly."


def message_bucket(settings: Settings, sender: User) -> buckets.Bucket:
    """The sender's sendMessage bucket: their own rate (set by an administrator) or
    ATLAS_USER_MESSAGES_PER_MINUTE, as a burst of that many refilled over a minute."""
    return _message_bucket_of(settings, sender.id, sender.messages_per_minute)


def _message_bucket_of(
    settings: Settings, user_id: uuid.UUID, own_per_minute: int | None
) -> buckets.Bucket:
    per_minute = own_per_minute or settings.atlas_user_messages_per_minute
    return buckets.Bucket.per_period(message_bucket_key(user_id), per_minute, 60)


def message_buckets(settings: Settings, sender: User, actor: Actor) -> list[buckets.Bucket]:
    """What one message takes: a token of the sender's bucket and, sent with a personal API
    key, of the key's own (ATLAS_API_KEY_MESSAGES_PER_MINUTE). Both are taken or neither, so
    keys have their own rate and still cannot multiply their user's."""
    taken = [message_bucket(settings, sender)]
    if actor.api_key_id is not None:
        taken.append(
            buckets.Bucket.per_period(
                f"messages:api_key:{actor.api_key_id}",
                settings.atlas_api_key_messages_per_minute,
                60,
            )
        )
    return taken


def check_content(settings: Settings, content: str) -> str:
    if not content.strip():
        raise BadInput("`content` must not be empty.", field="content")
    if len(content) > settings.atlas_max_message_chars:
        raise BadInput(
            f"`content` must be at most {settings.atlas_max_message_chars} characters.",
            field="content",
        )
    return content


async def files_for_message(
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


@dataclass(frozen=True)
class ReplyContext:
    """What a new reply needs, checked: the sender, the thread (locked until the operation
    commits, with no reply running) and its assistant; the rate counted, the budgets to
    check once the reply is stored."""

    viewer: Viewer
    thread: Thread
    assistant: Assistant
    # The personal API key the reply is sent with (its usage row names it), None for a session.
    api_key_id: uuid.UUID | None
    # The budgets `check_budgets` holds the reply to (None: none): the project's
    # monthlyTokenBudget, the sender's own or ATLAS_USER_MONTHLY_TOKENS.
    project_budget: int | None = None
    user_budget: int | None = None


async def _count_the_message(
    ai: AIRuntime, actor: Actor, viewer: Viewer, thread_id: uuid.UUID
) -> tuple[int | None, RunningReply | Message | None]:
    """Take a token of the sender's message rate (and of their API key's), with their own
    limits read in the same short transaction, in the same statement as the reply running in
    the thread (if any: `read_sender_and_running`); the sender's monthly budget (their own,
    else the default; None: unlimited), and that reply. Without an API key (one bucket), all
    of it is one statement, with no transaction around it (`take_message_token`)."""
    if actor.api_key_id is None:
        return await _count_the_message_alone(ai, viewer, thread_id)
    found: list[tuple[User, Message | None]] = []

    async def buckets_of(db: AsyncSession) -> list[buckets.Bucket]:
        sender, running = await read_sender_and_running(db, viewer.user_id, thread_id)
        if sender is None:
            raise Unauthenticated()
        found[:] = [(sender, running)]
        return message_buckets(ai.settings, sender, actor)

    await buckets.take(
        sessionmaker=ai.sessionmaker, buckets=buckets_of, message=RATE_LIMITED_MESSAGE
    )
    sender, running = found[0]
    budget = effective_user_budget(
        sender.monthly_token_budget, ai.settings.atlas_user_monthly_tokens
    )
    return budget, running


async def _count_the_message_alone(
    ai: AIRuntime, viewer: Viewer, thread_id: uuid.UUID
) -> tuple[int | None, RunningReply | Message | None]:
    """`_count_the_message` for a send with one bucket (the sender's): one statement on the
    driver's connection, with no transaction and no ORM session (`take_message_token`); a
    second one only to tell a refused send when to retry."""

    async def count() -> SenderCounted:
        return await take_message_token(
            ai.sessionmaker, viewer.user_id, thread_id,
            default_per_minute=ai.settings.atlas_user_messages_per_minute,
        )  # fmt: skip

    counted = await execute_db_operation(count, description="the sender's rate", attempts=2)
    if not counted.found:
        raise Unauthenticated()
    if not counted.taken:
        bucket = _message_bucket_of(ai.settings, viewer.user_id, counted.messages_per_minute)

        async def wait(db: AsyncSession) -> int:
            return await buckets.refused(db, bucket)

        retry_after = await execute_transaction(
            ai.sessionmaker, wait, attempts=2, isolation_level=AUTOCOMMIT
        )
        raise RateLimited(RATE_LIMITED_MESSAGE, retry_after=retry_after)
    budget = effective_user_budget(
        counted.monthly_token_budget, ai.settings.atlas_user_monthly_tokens
    )
    return budget, counted.running


class _SenderGates:
    """Per-worker gates, one per sender with a monthly budget: their sends wait here, holding
    no database connection, rather than on the budget's advisory lock (`check_budgets`)
    holding one each. Two sends of one sender are serialised by that lock anyway; a worker
    then has at most one of them waiting on it (other workers' sends still wait there)."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}

    async def enter(self, db: AsyncSession, sender_id: uuid.UUID) -> None:
        """Pass the sender's gate, held until `db` closes (after its commit or rollback);
        once per session (a document with two sends passes it once)."""
        if not isinstance(db, SerializedAsyncSession):
            return
        held: set[uuid.UUID] = db.info.setdefault("atlas_sender_gates", set())
        if sender_id in held:
            return
        lock, users = self._locks.get(sender_id, (asyncio.Lock(), 0))
        self._locks[sender_id] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(sender_id)
            raise
        held.add(sender_id)

        def release() -> None:
            held.discard(sender_id)
            lock.release()
            self._leave(sender_id)

        db.on_close(release)

    def _leave(self, sender_id: uuid.UUID) -> None:
        lock, users = self._locks[sender_id]
        if users == 1:
            del self._locks[sender_id]
        else:
            self._locks[sender_id] = (lock, users - 1)


_GATES: weakref.WeakKeyDictionary[AIRuntime, _SenderGates] = weakref.WeakKeyDictionary()


async def prepare_reply(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, thread_id: uuid.UUID, field: str
) -> ReplyContext:
    """The checks every new reply passes (sendMessage, editMessage, regenerateMessage): USE_AI,
    the sender's message rate, the thread visible (NOT_FOUND) and postable (FORBIDDEN), not
    archived and no other reply running (CONFLICT), an assistant (BAD_USER_INPUT on
    `field`). The project's and the sender's monthly budgets (QUOTA_EXCEEDED) are checked
    last, once the reply is stored (`check_budgets`).

    Statements: the sender's rate, committed on its own (the sender and the thread's running
    reply read by the same statement, with no BEGIN/COMMIT around it: `take_message_token`;
    with an API key, a short transaction of its own), then the thread once, locked
    (`read_thread_for_reply`, with the project's budget), the same statement taking the
    budgets' locks once it holds the thread's (the project's when it has a budget, then the
    sender's when they have one). A reply IN_PROGRESS that no worker
    runs (none here holds it, and it has not beaten for ATLAS_REPLY_STALE_AFTER) is recovered
    before the thread is locked, through the orchestrator's own short transactions: resumed
    (a background reply, which then still runs: CONFLICT below) or finished INCOMPLETE."""
    actor.require(PermissionName.USE_AI)
    viewer = actor.viewer_required
    # The sender's limits, and their rate counted, before the operation's session holds a
    # connection. A send refused later (CONFLICT, QUOTA_EXCEEDED, ...) still counts, so a
    # loop of sends cannot hammer the locks below.
    user_budget, running = await _count_the_message(ai, actor, viewer, thread_id)
    if running is not None and running.id not in ai.replies and is_stale(running, ai.settings):
        await ai.recover_reply(message_id=running.id, thread_id=thread_id)
    if user_budget is not None:
        await _GATES.setdefault(ai, _SenderGates()).enter(db, viewer.user_id)
    # The lock serialises sends in this thread until the operation commits; the same
    # statement takes the budgets' locks (`check_budgets`), once it holds the thread's.
    user_lock = None if user_budget is None else user_budget_lock(viewer.user_id)
    locked = await read_thread_for_reply(db, viewer, thread_id, lock=True, user_lock=user_lock)
    if not locked.postable:
        raise Forbidden(
            "You need the MEMBER role or higher in this project to post in its threads."
        )
    thread = locked.thread
    if locked.fresh:
        running_id = locked.running_id
    else:
        stale_read = await running_reply(db, thread.id)
        running_id = None if stale_read is None else stale_read.id
    if running_id is not None:
        raise Conflict("A reply is already in progress in this thread; wait or cancel it.")
    require_open(thread)
    assistant = locked.assistant
    if assistant is None:
        raise BadInput("This thread has no assistant any more.", field=field)
    return ReplyContext(
        viewer=viewer,
        thread=thread,
        assistant=assistant,
        api_key_id=actor.api_key_id,
        project_budget=locked.project_budget if thread.project_id is not None else None,
        user_budget=user_budget,
    )


def budgets_to_read(context: ReplyContext, reply: Message) -> SpentOf | None:
    """The budgets `check_budgets` holds `reply` to (None: none): the project's when it has
    one, the sender's when they have one."""
    project_id = context.thread.project_id
    checks_project = project_id is not None and context.project_budget is not None
    checks_user = context.user_budget is not None
    if not (checks_project or checks_user):
        return None
    return SpentOf(
        reply_id=reply.id,
        project_id=project_id if checks_project else None,
        user_id=context.viewer.user_id if checks_user else None,
    )


async def check_budgets(
    *,
    db: AsyncSession,
    context: ReplyContext,
    to_read: SpentOf | None,
    read: BudgetsSpent | None = None,
) -> None:
    """The project's and the sender's monthly budgets (QUOTA_EXCEEDED), for a reply stored
    (flushed) in this transaction: the last check of sendMessage, editMessage and
    regenerateMessage before their commit. The thread's locked read took each budget's
    advisory lock (`prepare_reply`), which the transaction keeps until it commits, so
    concurrent sends in the project (or of the sender) wait for it: the less that comes after,
    the shorter they wait (with a connection each). The replies in flight they count are the
    others. `to_read`: the budgets the reply is held to (`budgets_to_read`); `read`: what the
    exchange's statement read of them, else one statement reads both here (a later statement
    than the locks')."""
    if to_read is None:
        return
    both = read if read is not None else await spent(db, to_read)

    async def spent_of(kind: BudgetKind) -> tuple[int, InFlight]:
        counted = both.project if kind is BudgetKind.PROJECT else both.user
        assert counted is not None
        return counted

    # The project's first, then the sender's; the sender's budget counts their replies
    # everywhere, personal threads included.
    if to_read.project_id is not None:
        await ensure_within_budget(
            db=db,
            project_id=to_read.project_id,
            spent=functools.partial(spent_of, BudgetKind.PROJECT),
            budget=context.project_budget,
            locked=True,
        )
    await ensure_within_user_budget(
        db=db,
        user_id=context.viewer.user_id,
        budget=context.user_budget,
        locked=True,
        spent=functools.partial(spent_of, BudgetKind.USER),
    )


async def ask(
    *,
    db: AsyncSession,
    ai: AIRuntime,
    context: ReplyContext,
    content: str,
    parent_id: uuid.UUID | None,
    files: Sequence[File],
) -> tuple[Message, Message, int]:
    """Store a user message (COMPLETED) of the context's sender after `parent_id`, with
    `files` attached, and start the reply to it (`start_reply`): the question, the reply and
    the event number the exchange's events start after."""
    now = datetime.now(UTC)
    # Built from values this code made: no SQLModel `__init__` (db/tables.py `new_row`).
    question = new_row(
        Message,
        thread_id=context.thread.id,
        parent_id=parent_id,
        user_id=context.viewer.user_id,
        role=MessageRole.USER,
        content=content,
        status=MessageStatus.COMPLETED,
        created_at=now,
        completed_at=now,
    )
    # Ids are made here (not by the database), so nothing is flushed until the caller's one
    # flush: the exchange's rows go in together (the two messages in one INSERT).
    db.add(question)
    for file in files:
        db.add(
            FileAssociation(
                file_id=file.id, associable_type=AssociableType.MESSAGE, associable_id=question.id
            )
        )
    reply, after_sequence, _ = await start_reply(
        db=db, ai=ai, context=context, question=question, files=files,
        created_question=True, now=now,
    )  # fmt: skip
    return question, reply, after_sequence


async def start_reply(
    *,
    db: AsyncSession,
    ai: AIRuntime,
    context: ReplyContext,
    question: Message,
    files: Sequence[File],
    created_question: bool,
    now: datetime,
) -> tuple[Message, int, list[ThreadEvent]]:
    """Store the reply (IN_PROGRESS) to `question` (a user message, stored by the caller in
    this operation when `created_question`), make it the thread's active leaf, and start the
    streamed reply once the operation commits. Returns the reply, the event number the
    exchange's events start after, and its MessageCreated events.

    Upstream (docs/branches.md): a reply whose question follows the message the thread's
    OpenAI conversation ends with (or a thread without one yet) goes on in the conversation;
    any other reply (a branch) sends its branch's history as `input`, without it."""
    thread, assistant = context.thread, context.assistant
    # The reply records who asked (its sender, who may cancel it).
    reply = new_row(
        Message,
        thread_id=thread.id,
        parent_id=question.id,
        user_id=context.viewer.user_id,
        assistant_id=assistant.id,
        role=MessageRole.ASSISTANT,
        content="",
        status=MessageStatus.IN_PROGRESS,
        model=assistant.model,
        created_at=max(now, question.created_at) + timedelta(microseconds=1),
        heartbeat_at=now,
        reply_worker_id=ai.worker_id,
    )
    after_sequence = thread.last_event_sequence
    numbers, sequences = SequenceBlock.open(thread, taken=2 if created_question else 1)
    # The snapshot of this exchange: its messages, up to the reply's MessageCreated.
    reply.content_sequence = numbers[-1]
    db.add(reply)
    in_conversation = (
        thread.openai_thread_id is None or thread.conversation_leaf_id == question.parent_id
    )
    thread.active_leaf_id = reply.id
    if in_conversation:
        # The conversation gets the question and this reply.
        thread.conversation_leaf_id = reply.id
    tools = tuple(tool for tool in AssistantTool if tool.value in (assistant.tools or []))
    vector_store_ids = await knowledge.vector_store_ids_for(
        db, context.viewer, thread=thread, assistant=assistant
    )
    job = ReplyJob(
        thread_id=thread.id,
        project_id=thread.project_id,
        user_id=context.viewer.user_id,
        user_message_id=question.id,
        assistant_message_id=reply.id,
        model=assistant.model,
        instructions=assistant.instructions,
        temperature=assistant.temperature,
        content=question.content,
        openai_file_ids=[file.openai_file_id for file in files if file.openai_file_id],
        conversation_id=thread.openai_thread_id if in_conversation else None,
        sequences=sequences,
        in_conversation=in_conversation,
        history_leaf_id=question.parent_id,
        api_key_id=context.api_key_id,
        tools=tools,
        vector_store_ids=vector_store_ids,
    )
    created: list[ThreadEvent] = [created_event(numbers[-1], reply)]
    if created_question:
        created.insert(0, created_event(numbers[0], question))

    async def start() -> None:
        # Its sender's credential and right to the thread were checked in this transaction:
        # the exchange's access re-check need not ask again for them (ai/watch.py).
        ai.watches.vouch(
            watch_key(context.viewer, thread.id), (event.sequence for event in created)
        )
        ai.start_reply(job, created=created)

    # The reply task reads what this operation stores: it starts once that is committed.
    after_commit(db, start)
    return reply, after_sequence, created


async def send_message(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, data: MessageSend
) -> SentMessage:
    """Store the user's message (COMPLETED, after the thread's active leaf) and the
    assistant's (IN_PROGRESS), and start the streamed reply once they are committed. CONFLICT
    while another reply of the thread runs or when the thread is archived; RATE_LIMITED past
    the sender's message rate; QUOTA_EXCEEDED past the project's or the sender's monthly
    token budget (`budget: PROJECT | USER`)."""
    actor.require(PermissionName.USE_AI)
    content = check_content(ai.settings, data.content)
    context = await prepare_reply(
        db=db, actor=actor, ai=ai, thread_id=data.thread_id, field="threadId"
    )
    files = await files_for_message(db, context.viewer, data.file_ids)
    user_message, reply, after_sequence = await ask(
        db=db, ai=ai, context=context, content=content,
        parent_id=context.thread.active_leaf_id, files=files,
    )  # fmt: skip
    return await store_exchange(
        db=db, actor=actor, context=context, sent=SentMessage(user_message, reply, after_sequence),
        action="message.send", entity=user_message,
        details={"chars": len(content), "files": len(files)},
    )  # fmt: skip


async def store_exchange(
    *,
    db: AsyncSession,
    actor: Actor,
    context: ReplyContext,
    sent: SentMessage,
    action: str,
    entity: Message,
    details: dict[str, Any],
) -> SentMessage:
    """The end of sendMessage, editMessage and regenerateMessage: the activity row (`action`
    on `entity`, naming the thread), the exchange's rows flushed, the budgets checked last
    (`check_budgets`)."""
    thread = context.thread
    activity = actor.record(
        db, action, entity, project_id=thread.project_id,
        details={"threadId": str(thread.id), **details},
    )  # fmt: skip
    # The exchange's statement reads the budgets too (the thread's locked read took their locks).
    to_read = budgets_to_read(context, sent.assistant_message)
    read = await flush_exchange(db, thread=thread, activity=activity, spent=to_read)
    await check_budgets(db=db, context=context, to_read=to_read, read=read)
    return sent


async def cancel_message(
    *, db: AsyncSession, actor: Actor, ai: AIRuntime, message_id: uuid.UUID
) -> Message:
    """Stop a running reply: CANCELLED with its partial text (its sender, a project
    MANAGER+, ADMIN). A reply already cancelled is returned as it is; a finished one is a
    CONFLICT. The reply's task (or, when none runs it, the orchestrator) stores the outcome in
    its own short transaction."""
    viewer = actor.viewer_required
    message = await get_message(db=db, viewer=viewer, message_id=message_id)
    thread = await db.get(Thread, message.thread_id)
    assert thread is not None
    if not await rules.holds(db, rules.message_changeable, viewer, rules.messages, message.id):
        raise Forbidden(
            "Only its sender (a MEMBER or higher of the project) or a project manager may stop "
            "this reply."
        )
    if message.status is MessageStatus.CANCELLED:
        return message
    if message.status is not MessageStatus.IN_PROGRESS:
        raise Conflict(f"This message is {message.status.value}, not in progress.")
    actor.record(db, "message.cancel", message, project_id=thread.project_id)
    await db.flush()
    await ai.cancel_reply(message_id=message.id, thread_id=thread.id)
    return await get_message(db=db, viewer=viewer, message_id=message_id)
