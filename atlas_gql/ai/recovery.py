"""Replies no worker runs any more: finding them, resuming them, finishing them.

Liveness: a running reply touches its message's `heartbeat_at` every few seconds (and at
each checkpoint), and every write of its worker is conditional on `reply_worker_id` being
that worker. At start-up, by a periodic sweep, and by a new sendMessage on its thread:
- a *background* reply (its upstream response id and sequence number checkpointed) whose
  heartbeat is older than ATLAS_REPLY_RESUME_AFTER, or that its worker released at shutdown
  (`reply_worker_id` NULL), is claimed (`claim`: one conditional UPDATE, so exactly one worker
  wins) and resumed by the orchestrator from its checkpoint;
- any other reply whose heartbeat is older than ATLAS_REPLY_STALE_AFTER lost its worker and
  is marked INCOMPLETE.
A cancel that no worker answers finishes its reply CANCELLED here too (and cancels a
background response upstream). Either way the text saved so far stays, is counted as
estimated usage, and a final event is published.

A reply's end (its worker's, `orchestrator._store_outcome`, or an orphan's, `finish_orphan`)
is tried again while no connection can be had or the connection drops during its commit
(`while_no_connection`). The database may have committed an end whose answer the dropped
connection lost: the next attempt finds the message final, and publishes its final event when
the end is its own (marked in the same transaction), else nothing.

Size: over 400 lines on purpose: the ways a reply nobody runs ends (claimed and resumed,
finished CANCELLED or INCOMPLETE, swept) and the retried end they share with a worker's own
end read together here."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.events import ThreadEvent, final_event
from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.pricing import cost_usd, tool_cost_usd
from atlas_gql.ai.sequences import take_one_statement
from atlas_gql.config import Settings
from atlas_gql.db.utils import is_connection_error
from atlas_gql.logs.models import ApiUsageLog, UsagePurpose
from atlas_gql.logs.usage import ESTIMATED_SUFFIX, estimate_tokens

logger = logging.getLogger(__name__)

CANCELLED_ERROR = "The reply was stopped."
STALE_ERROR = "The reply stopped making progress (its server went away)."

Publish = Callable[[uuid.UUID, ThreadEvent], Awaitable[bool]]
Resume = Callable[[uuid.UUID], Awaitable[bool]]
CancelUpstream = Callable[[str], None]

T = TypeVar("T")

# Attempts to store a reply's end while no database connection can be had (each waits up to
# ATLAS_DB_POOL_TIMEOUT for one) or the connection drops, and the base of the backoff.
FINISH_ATTEMPTS = 3
BACKOFF_BASE = 0.25


def backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: exponential, jittered."""
    return float(BACKOFF_BASE * 2 ** (attempt - 1) * (1 + random.random()))  # noqa: S311


async def while_no_connection(work: Callable[[], Awaitable[T]], *, what: str) -> T:
    """`work` (a reply's end), tried again (FINISH_ATTEMPTS) while it fails for want of a
    database connection, or because its connection dropped (maybe after the commit)."""
    for attempt in range(1, FINISH_ATTEMPTS + 1):
        try:
            return await work()
        except Exception as error:
            if not is_connection_error(error) or attempt == FINISH_ATTEMPTS:
                raise
            logger.warning("storing the end of %s failed (attempt %d): %r", what, attempt, error)
            await asyncio.sleep(backoff(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


async def _update_in_progress(
    db: AsyncSession, message_id: uuid.UUID, *conditions: sa.ColumnElement[bool], **values: Any
) -> Message | None:
    """Set `values` on the message if it is still IN_PROGRESS (and meets `conditions`): one
    conditional UPDATE, so of several workers at most one gets it. The updated row, or None."""
    statement = (
        sa.update(Message)
        .where(
            col(Message.id) == message_id,
            col(Message.status) == MessageStatus.IN_PROGRESS,
            *conditions,
        )
        .values(**values)
        .returning(Message)
    )
    return (await db.execute(statement)).scalar_one_or_none()


def usage_row(
    settings: Settings, *, endpoint: str, user_id: uuid.UUID | None,
    project_id: uuid.UUID | None, thread_id: uuid.UUID, message_id: uuid.UUID, model: str,
    input_tokens: int, output_tokens: int, latency_ms: int | None, status: str,
    purpose: UsagePurpose = UsagePurpose.REPLY,
    api_key_id: uuid.UUID | None = None,
    file_search_calls: int = 0, web_search_calls: int = 0,
) -> ApiUsageLog:  # fmt: skip
    """The ApiUsageLog row of one model call (a reply, or a title), priced: its tokens plus
    its built-in tool calls (and attributed to the API key it was sent with, if any)."""
    tools = tool_cost_usd(
        settings, file_search_calls=file_search_calls, web_search_calls=web_search_calls
    )
    return ApiUsageLog(
        user_id=user_id,
        api_key_id=api_key_id,
        project_id=project_id,
        thread_id=thread_id,
        message_id=message_id,
        endpoint=endpoint,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_ms=latency_ms,
        cost_usd=cost_usd(
            settings, model=model, input_tokens=input_tokens, output_tokens=output_tokens
        )
        + tools,
        status=status,
        purpose=purpose,
        file_search_calls=file_search_calls,
        web_search_calls=web_search_calls,
        tool_cost_usd=tools,
    )


def stale_before(settings: Settings) -> datetime:
    """Replies whose heartbeat is older than this lost their worker."""
    return datetime.now(UTC) - timedelta(seconds=settings.atlas_reply_stale_after)


def resume_before(settings: Settings) -> datetime:
    """Background replies whose heartbeat is older than this are resumed by another worker."""
    return datetime.now(UTC) - timedelta(seconds=settings.atlas_reply_resume_after)


class ReplyBeat(Protocol):
    """What `is_stale` reads of a running reply (a `Message`, or reply_reads' `RunningReply`)."""

    @property
    def created_at(self) -> datetime | None: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...
    @property
    def reply_worker_id(self) -> uuid.UUID | None: ...
    @property
    def upstream_sequence(self) -> int | None: ...
    @property
    def event_sequence_base(self) -> int | None: ...
    @property
    def openai_response_id(self) -> str | None: ...


def is_resumable(message: ReplyBeat) -> bool:
    """A background reply whose upstream response and position were checkpointed."""
    return (
        message.upstream_sequence is not None
        and message.event_sequence_base is not None
        and message.openai_response_id is not None
    )


def is_stale(message: ReplyBeat, settings: Settings) -> bool:
    """Whether nobody runs this IN_PROGRESS reply any more (it is to be resumed or
    finished)."""
    if is_resumable(message):
        if message.reply_worker_id is None:
            return True  # released by a worker that shut down
        limit = resume_before(settings)
    else:
        limit = stale_before(settings)
    beat = message.heartbeat_at or message.created_at
    return beat is not None and beat < limit


@dataclass(frozen=True)
class ClaimedReply:
    """A background reply this worker took over, with what resuming it needs."""

    message: Message
    project_id: uuid.UUID | None
    conversation_id: str | None
    thread_mark: int
    user_message_id: uuid.UUID | None
    question: str
    instructions: str | None


@dataclass(kw_only=True, eq=False)
class Recovery:
    """Finishes replies whose worker is gone (or cannot be told)."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    publish: Publish
    endpoint: str
    is_running_here: Callable[[uuid.UUID], bool]
    worker_id: uuid.UUID
    # None when the provider cannot resume (Chat Completions): background replies left
    # by another configuration are then finished like any other.
    resume: Resume | None = None
    cancel_upstream: CancelUpstream | None = None

    async def finish_orphan(
        self, *, message_id: uuid.UUID, thread_id: uuid.UUID, status: MessageStatus | None
    ) -> None:
        """Finish an IN_PROGRESS reply no worker runs: CANCELLED (status None) or `status`.

        The final state is committed, then its final event published (once the session is
        closed: a failure after the commit's answer cannot make it published twice). This
        finish marks the row as its own (`reply_worker_id` = a new id of this call, and
        `content_sequence` = its final event's number) in the same transaction, so an attempt
        after a connection dropped during the commit tells its own end (committed, answer
        lost: its event is still due) from another finish's (whose publisher is the other)."""
        end = functools.partial(
            self._store_orphan_end,
            message_id=message_id,
            thread_id=thread_id,
            status=status or MessageStatus.CANCELLED,
            error=CANCELLED_ERROR if status is None else STALE_ERROR,
            finisher=uuid.uuid4(),
        )
        ended = await while_no_connection(end, what=f"orphaned reply {message_id}")
        if ended is None:
            return  # finished by someone else
        sequence, message = ended
        if is_resumable(message) and self.cancel_upstream is not None:
            # Still generating upstream (and costing) unless told to stop.
            assert message.openai_response_id is not None
            self.cancel_upstream(message.openai_response_id)
        await self.publish(thread_id, final_event(sequence, message))

    async def _store_orphan_end(
        self,
        *,
        message_id: uuid.UUID,
        thread_id: uuid.UUID,
        status: MessageStatus,
        error: str,
        finisher: uuid.UUID,
    ) -> tuple[int, Message] | None:
        """Commit an orphan's final state, its event number and its estimated usage in one
        transaction: (the final event's number, the message), or None when someone else
        finished it."""
        async with self.sessionmaker() as db:
            message = await _update_in_progress(
                db,
                message_id,
                status=status,
                error=error,
                completed_at=sa.func.now(),
                reply_worker_id=finisher,
            )
            if message is None:
                # Final already: by someone else, or by this very finish (an earlier attempt
                # whose commit the database made, whose answer the dropped connection lost).
                return await _ended_by(db, message_id, finisher)
            # The message row first, then the thread's (the order of a worker's own end).
            sequence, project_id, assistant_id = (
                await db.execute(
                    take_one_statement(thread_id).returning(
                        col(Thread.last_event_sequence),
                        col(Thread.project_id),
                        col(Thread.assistant_id),
                    )
                )
            ).one()
            await db.execute(
                sa.update(Message)
                .where(col(Message.id) == message_id)
                .values(content_sequence=sequence)
                .execution_options(synchronize_session=False)
            )
            if message.content:
                # The worker that streamed it is gone (or told to stop and finds the message
                # final): its text is counted here, estimated as the orchestrator does.
                prompt = await _prompt_of(db, message, assistant_id)
                db.add(
                    usage_row(
                        self.settings,
                        endpoint=self.endpoint,
                        user_id=message.user_id,
                        project_id=project_id,
                        thread_id=thread_id,
                        message_id=message.id,
                        model=message.model or "unknown",
                        input_tokens=estimate_tokens(prompt),
                        output_tokens=estimate_tokens(message.content),
                        latency_ms=None,
                        status=status.value.lower() + ESTIMATED_SUFFIX,
                    )
                )
            await db.commit()
        return sequence, message

    async def claim(self, message_id: uuid.UUID) -> ClaimedReply | None:
        """Take over a background reply nobody runs (released, or its heartbeat older than
        ATLAS_REPLY_RESUME_AFTER): one conditional UPDATE, so of several workers trying at
        once exactly one gets it. None when it is not (or no longer) to be taken."""
        beat = sa.func.coalesce(col(Message.heartbeat_at), col(Message.created_at))
        async with self.sessionmaker() as db:
            message = await _update_in_progress(
                db,
                message_id,
                col(Message.upstream_sequence).is_not(None),
                col(Message.event_sequence_base).is_not(None),
                col(Message.openai_response_id).is_not(None),
                sa.or_(
                    col(Message.reply_worker_id).is_(None),
                    beat < resume_before(self.settings),
                ),
                reply_worker_id=self.worker_id,
                heartbeat_at=sa.func.now(),
            )
            if message is None:
                return None
            thread = (
                await db.execute(
                    sa.select(
                        col(Thread.project_id),
                        col(Thread.openai_thread_id),
                        col(Thread.last_event_sequence),
                        col(Thread.assistant_id),
                    ).where(col(Thread.id) == message.thread_id)
                )
            ).one()
            question = await _question_of(db, message)
            instructions = (
                await db.scalar(
                    sa.select(col(Assistant.instructions)).where(
                        col(Assistant.id) == thread.assistant_id
                    )
                )
                if thread.assistant_id is not None
                else None
            )
            await db.commit()
        return ClaimedReply(
            message=message,
            project_id=thread.project_id,
            conversation_id=thread.openai_thread_id,
            thread_mark=thread.last_event_sequence,
            user_message_id=question[0] if question else None,
            question=question[1] if question else "",
            instructions=instructions,
        )

    async def recover(self, *, message_id: uuid.UUID, thread_id: uuid.UUID) -> None:
        """A reply found without a live worker: resumed when it can be, else INCOMPLETE."""
        if self.resume is not None and await self.resume(message_id):
            return
        await self.finish_orphan(
            message_id=message_id, thread_id=thread_id, status=MessageStatus.INCOMPLETE
        )

    async def sweep_stale_replies(self) -> int:
        """Resume the background replies nobody runs, mark INCOMPLETE the other replies whose
        worker stopped (no heartbeat for too long). Returns how many replies it handled."""
        beat = sa.func.coalesce(col(Message.heartbeat_at), col(Message.created_at))
        # Candidates only (live replies beat recently), without their text.
        limit = max(stale_before(self.settings), resume_before(self.settings))
        async with self.sessionmaker() as db:
            rows = (
                await db.execute(
                    sa.select(
                        col(Message.id), col(Message.thread_id), col(Message.created_at),
                        col(Message.heartbeat_at), col(Message.reply_worker_id),
                        col(Message.upstream_sequence), col(Message.event_sequence_base),
                        col(Message.openai_response_id),
                    ).where(
                        col(Message.status) == MessageStatus.IN_PROGRESS,
                        sa.or_(col(Message.reply_worker_id).is_(None), beat < limit),
                    )
                )
            ).all()  # fmt: skip
        # Detached, partial rows: enough for the rules below.
        running = [Message(**row._mapping) for row in rows]
        resumed = finished = 0
        for message in running:
            if self.is_running_here(message.id) or not is_stale(message, self.settings):
                continue
            if is_resumable(message) and self.resume is not None:
                if await self.resume(message.id):
                    resumed += 1
                continue
            if not is_resumable(message) or (
                (message.heartbeat_at or message.created_at) < stale_before(self.settings)
            ):
                await self.finish_orphan(
                    message_id=message.id,
                    thread_id=message.thread_id,
                    status=MessageStatus.INCOMPLETE,
                )
                finished += 1
        if resumed:
            logger.warning("resumed %d background replies whose worker stopped", resumed)
        if finished:
            logger.warning("marked %d stale replies INCOMPLETE", finished)
        return resumed + finished

    async def sweep_forever(self) -> None:
        settings = self.settings
        interval = max(
            0.25, min(settings.atlas_reply_stale_after, settings.atlas_reply_resume_after) / 2
        )
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_stale_replies()
            except Exception:
                logger.exception("stale reply sweep failed")


async def _ended_by(
    db: AsyncSession, message_id: uuid.UUID, finisher: uuid.UUID
) -> tuple[int, Message] | None:
    """(its final event's number, the message) when the final message was finished by
    `finisher`'s own earlier attempt; None when someone else finished it."""
    message = await db.get(Message, message_id)
    if (
        message is None
        or message.status is MessageStatus.IN_PROGRESS
        or message.reply_worker_id != finisher
        or message.content_sequence is None
    ):
        return None
    return message.content_sequence, message


async def _question_of(db: AsyncSession, reply: Message) -> tuple[uuid.UUID, str] | None:
    """The user message a reply answers: its parent in the message tree (a reply stored
    before the tree: the thread's last USER message before it)."""
    parent_id = await db.scalar(
        sa.select(col(Message.parent_id)).where(col(Message.id) == reply.id)
    )
    statement = sa.select(col(Message.id), col(Message.content)).where(
        col(Message.role) == MessageRole.USER
    )
    if parent_id is not None:
        statement = statement.where(col(Message.id) == parent_id)
    else:
        statement = statement.where(
            col(Message.thread_id) == reply.thread_id,
            col(Message.created_at) < reply.created_at,
        )
    row = (await db.execute(statement.order_by(col(Message.created_at).desc()).limit(1))).first()
    return (row[0], row[1]) if row is not None else None


async def _prompt_of(db: AsyncSession, reply: Message, assistant_id: uuid.UUID | None) -> str:
    """The assistant's instructions and the user message a reply answers (the thread's last
    USER message before it)."""
    question = await _question_of(db, reply)
    instructions = (
        await db.scalar(
            sa.select(col(Assistant.instructions)).where(col(Assistant.id) == assistant_id)
        )
        if assistant_id is not None
        else None
    )
    return (instructions or "") + (question[1] if question else "")
