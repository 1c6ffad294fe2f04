"""The reply orchestrator: runs a streamed model call in an app-owned task, numbers and
publishes its events, and leaves the assistant message in a final state whatever happens.

Event sequences: `Thread.last_event_sequence` is the high-water mark of numbers handed out
for the thread. `sendMessage` (holding the thread row lock) takes two numbers for its two
MessageCreated events and *reserves* a block above them for the reply; the reply task numbers
its deltas inside the block and reserves the next block in the database before it runs out.
At the end it gives back what it did not use. So every number ever published is at or below
the stored mark (a crash or a second worker can never hand out a number twice), one reply at
a time per thread means one publisher at a time, and numbers strictly increase (after a
crash they may skip a few, never go back).

Liveness: a running reply touches its thread's `updated_at` every few seconds. A reply
IN_PROGRESS whose thread has not been touched for ATLAS_REPLY_STALE_AFTER seconds is dead
(its worker stopped) and is marked INCOMPLETE: at start-up, by a periodic sweep, and by a
new sendMessage on that thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.broker import Broker, Event
from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.pricing import cost_usd
from atlas_gql.ai.provider import (
    STREAM_ENDED_ERROR,
    HistoryItem,
    Provider,
    ReplyDelta,
    ReplyDone,
    ReplyRequest,
    ReplyStarted,
    UpstreamFailure,
)
from atlas_gql.config import Settings
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.audit import record_error
from atlas_gql.logs.models import ApiUsageLog, ErrorSource
from atlas_gql.logs.usage import ESTIMATED_SUFFIX, estimate_tokens

logger = logging.getLogger(__name__)

# Sequence numbers reserved at a time for a reply's deltas.
SEQUENCE_BLOCK = 64
# Partial text is saved at least this often (seconds), so a crash keeps most of it.
CHECKPOINT_INTERVAL = 2.0
HEARTBEAT_INTERVAL = 5.0
# Attempts of one upstream call (retried only before the first delta), and the backoff base.
MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.25
# How many earlier messages the chat adapter sends, and how many seed a new conversation.
HISTORY_LIMIT = 50

CANCELLED_ERROR = "The reply was stopped."
SHUTDOWN_ERROR = "The server stopped while the reply was running."
STALE_ERROR = "The reply stopped making progress (its server went away)."


def message_event_payload(message: Message) -> dict[str, Any]:
    """A message as carried inside an event (enough to render it without the database)."""
    return {
        "id": str(message.id),
        "thread_id": str(message.thread_id),
        "user_id": str(message.user_id) if message.user_id else None,
        "role": message.role.value,
        "content": message.content,
        "status": message.status.value,
        "openai_message_id": message.openai_message_id,
        "openai_response_id": message.openai_response_id,
        "model": message.model,
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "error": message.error,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "completed_at": message.completed_at.isoformat() if message.completed_at else None,
    }


def message_from_payload(payload: dict[str, Any]) -> Message:
    return Message(
        id=uuid.UUID(payload["id"]),
        thread_id=uuid.UUID(payload["thread_id"]),
        user_id=uuid.UUID(payload["user_id"]) if payload.get("user_id") else None,
        role=MessageRole(payload["role"]),
        content=payload["content"],
        status=MessageStatus(payload["status"]),
        openai_message_id=payload.get("openai_message_id"),
        openai_response_id=payload.get("openai_response_id"),
        model=payload.get("model"),
        input_tokens=payload.get("input_tokens"),
        output_tokens=payload.get("output_tokens"),
        error=payload.get("error"),
        created_at=datetime.fromisoformat(payload["created_at"]),
        completed_at=(
            datetime.fromisoformat(payload["completed_at"]) if payload.get("completed_at") else None
        ),
    )


def created_event(sequence: int, message: Message) -> Event:
    return {
        "type": "MessageCreated",
        "sequence": sequence,
        "threadId": str(message.thread_id),
        "messageId": str(message.id),
        "message": message_event_payload(message),
    }


def final_event(sequence: int, message: Message) -> Event:
    completed = message.status is MessageStatus.COMPLETED
    return {
        "type": "MessageCompleted" if completed else "MessageFailed",
        "sequence": sequence,
        "threadId": str(message.thread_id),
        "messageId": str(message.id),
        "message": message_event_payload(message),
        "error": None if completed else (message.error or "The reply did not complete."),
    }


@dataclass
class ReplyJob:
    """Everything the background task needs, captured when sendMessage committed."""

    thread_id: uuid.UUID
    project_id: uuid.UUID | None
    user_id: uuid.UUID
    user_message_id: uuid.UUID
    assistant_message_id: uuid.UUID
    model: str
    instructions: str | None
    temperature: float | None
    content: str
    openai_file_ids: list[str]
    conversation_id: str | None
    next_sequence: int
    reserved_until: int


@dataclass
class ActiveReply:
    job: ReplyJob
    text: list[str] = field(default_factory=list)
    response_id: str | None = None
    cancel_reason: str | None = None  # "user" | "shutdown"
    task: asyncio.Task[None] | None = None
    stream_task: asyncio.Task[ReplyDone] | None = None
    last_checkpoint: float = field(default_factory=time.monotonic)
    checkpointed_chars: int = 0
    # The MessageCreated events of the exchange, published by the task before any delta.
    created: list[Event] = field(default_factory=list)
    publish_failed: bool = False


class ReplySuperseded(Exception):
    """Someone else finished the message (e.g. a cancel after this worker looked dead)."""


class AIRuntime:
    """The AI domain's long-lived parts (held by the app as `Services.ai`)."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        broker: Broker,
        provider: Provider,
        spawn: Callable[..., asyncio.Task[Any]],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.broker = broker
        self.provider = provider
        self.spawn = spawn
        self.replies: dict[uuid.UUID, ActiveReply] = {}
        self.sweeper: asyncio.Task[None] | None = None
        broker.set_control_handler(self._on_control)

    # -- starting and stopping replies -------------------------------------------------

    def start_reply(self, job: ReplyJob, *, created: list[Event]) -> None:
        """Start the reply in the background; the task publishes the MessageCreated events
        first, then streams. Nothing here can fail after sendMessage committed: a broker
        that is down loses events (logged), never the reply."""
        reply = ActiveReply(job=job, created=created)
        self.replies[job.assistant_message_id] = reply
        reply.task = self.spawn(self._run(reply), name=f"reply-{job.assistant_message_id}")

    async def _publish(self, thread_id: uuid.UUID, event: Event) -> bool:
        """Publish an event; a broker failure (Redis down) is logged, not raised: the
        database keeps the truth, a client that missed events reloads `thread.messages`."""
        try:
            await self.broker.publish(thread_id, event)
        except Exception:
            logger.warning(
                "could not publish %s #%s of thread %s",
                event.get("type"),
                event.get("sequence"),
                thread_id,
                exc_info=True,
            )
            return False
        return True

    async def cancel_reply(self, *, message_id: uuid.UUID, thread_id: uuid.UUID) -> None:
        """Stop a running reply (CANCELLED, partial text kept), wherever it runs."""
        reply = self.replies.get(message_id)
        if reply is not None:
            await self._cancel_local(reply, reason="user")
            return
        if self.broker.distributed:
            try:
                await self.broker.publish_control(
                    {"action": "cancel", "messageId": str(message_id)}
                )
            except Exception:
                # The control channel is down: finish the message here; the worker running
                # it (if any) stops at its next checkpoint, finding it no longer IN_PROGRESS.
                logger.warning("could not broadcast the cancel of %s", message_id, exc_info=True)
            else:
                for _ in range(20):
                    await asyncio.sleep(0.1)
                    if await self._status_of(message_id) is not MessageStatus.IN_PROGRESS:
                        return
        # Nobody runs it any more (or nobody can be told): finish it here.
        await self.finish_orphan(message_id=message_id, thread_id=thread_id, status=None)

    async def _cancel_local(self, reply: ActiveReply, *, reason: str, wait: bool = True) -> None:
        reply.cancel_reason = reply.cancel_reason or reason
        if reply.stream_task is not None:
            reply.stream_task.cancel()
        if wait and reply.task is not None:
            await asyncio.wait({reply.task}, timeout=5)

    async def _on_control(self, message: dict[str, Any]) -> None:
        if message.get("action") == "cancel":
            reply = self.replies.get(uuid.UUID(str(message.get("messageId"))))
            if reply is not None:
                await self._cancel_local(reply, reason="user", wait=False)

    async def _status_of(self, message_id: uuid.UUID) -> MessageStatus | None:
        async with self.sessionmaker() as db:
            status = await db.scalar(
                sa.select(col(Message.status)).where(col(Message.id) == message_id)
            )
        return MessageStatus(status) if status is not None else None

    async def start(self) -> None:
        await self.broker.start()
        try:
            await self.sweep_stale_replies()
        except Exception:
            # The app must start (and say so on /readyz) even when the database is down;
            # the periodic sweep tries again.
            logger.exception("stale reply sweep at start failed")
        interval = max(1.0, self.settings.atlas_reply_stale_after / 2)
        self.sweeper = asyncio.create_task(self._sweep_forever(interval), name="ai-stale-sweeper")

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        replies = list(self.replies.values())
        for reply in replies:
            await self._cancel_local(reply, reason="shutdown", wait=False)
        tasks = {reply.task for reply in replies if reply.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await self.broker.close()
        await self.provider.close()

    # -- the reply task -----------------------------------------------------------------

    async def _run(self, reply: ActiveReply) -> None:
        job = reply.job
        started = time.monotonic()
        try:
            for event in reply.created:
                await self._publish(job.thread_id, event)
        except asyncio.CancelledError:
            reply.cancel_reason = reply.cancel_reason or "shutdown"
        heartbeat = asyncio.create_task(self._heartbeat(job.thread_id))
        reply.stream_task = asyncio.create_task(self._stream(reply))
        if reply.cancel_reason is not None:
            reply.stream_task.cancel()
        done: ReplyDone | None = None
        failure: UpstreamFailure | None = None
        unexpected: BaseException | None = None
        try:
            try:
                await asyncio.wait({reply.stream_task})
            except asyncio.CancelledError:
                # The app is stopping (drain): stop the stream, still finish the message.
                reply.cancel_reason = reply.cancel_reason or "shutdown"
                reply.stream_task.cancel()
                await asyncio.wait({reply.stream_task})
            if reply.stream_task.cancelled():
                pass
            elif isinstance(error := reply.stream_task.exception(), UpstreamFailure):
                failure = error
            elif isinstance(error, ReplySuperseded):
                return
            elif error is not None:
                unexpected = error
            else:
                done = reply.stream_task.result()
            latency_ms = int((time.monotonic() - started) * 1000)
            await self._finish(
                reply, done=done, failure=failure, unexpected=unexpected, latency_ms=latency_ms
            )
        except Exception:
            logger.exception("reply %s could not be finished", job.assistant_message_id)
        finally:
            heartbeat.cancel()
            self.replies.pop(job.assistant_message_id, None)

    async def _heartbeat(self, thread_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                async with self.sessionmaker() as db:
                    await db.execute(
                        sa.update(Thread)
                        .where(col(Thread.id) == thread_id)
                        .values(updated_at=sa.func.now())
                    )
                    await db.commit()
            except Exception:
                logger.warning("heartbeat of thread %s failed", thread_id, exc_info=True)

    async def _stream(self, reply: ActiveReply) -> ReplyDone:
        job = reply.job
        conversation_id = job.conversation_id
        history: list[HistoryItem] = []
        if not self.provider.uses_conversations:
            history = await self._history(job)
        elif conversation_id is None:
            conversation_id = await self._retrying(lambda: self._open_conversation(job))
        request = ReplyRequest(
            model=job.model,
            instructions=job.instructions,
            temperature=job.temperature,
            content=job.content,
            file_ids=job.openai_file_ids,
            conversation_id=conversation_id,
            history=history,
        )
        attempt = 1
        while True:
            try:
                async for item in self.provider.stream_reply(request):
                    if isinstance(item, ReplyStarted):
                        reply.response_id = item.response_id
                    elif isinstance(item, ReplyDelta):
                        await self._emit_delta(reply, item.text)
                    elif isinstance(item, ReplyDone):
                        return item
                raise UpstreamFailure(
                    STREAM_ENDED_ERROR, detail="The provider ended the reply without finishing it."
                )
            except UpstreamFailure as failure:
                # Retrying after a delta was shown would duplicate text: only before.
                if not failure.retryable or reply.text or attempt >= MAX_ATTEMPTS:
                    raise
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    async def _retrying(self, call: Callable[[], Coroutine[Any, Any, str]]) -> str:
        attempt = 1
        while True:
            try:
                return await call()
            except UpstreamFailure as failure:
                if not failure.retryable or attempt >= MAX_ATTEMPTS:
                    raise
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    async def _open_conversation(self, job: ReplyJob) -> str:
        """Create the thread's OpenAI conversation on its first reply, seeded with the
        thread's earlier messages (a thread created before, or imported)."""
        history = await self._history(job)
        conversation_id = await self.provider.create_conversation(history=history[-20:])
        async with self.sessionmaker() as db:
            await db.execute(
                sa.update(Thread)
                .where(col(Thread.id) == job.thread_id, col(Thread.openai_thread_id).is_(None))
                .values(openai_thread_id=conversation_id)
            )
            await db.commit()
        return conversation_id

    async def _history(self, job: ReplyJob) -> list[HistoryItem]:
        """The thread's earlier messages with text (oldest first), before this exchange."""
        async with self.sessionmaker() as db:
            rows = (
                await db.execute(
                    sa.select(Message)
                    .where(
                        col(Message.thread_id) == job.thread_id,
                        col(Message.id).not_in([job.user_message_id, job.assistant_message_id]),
                        col(Message.role).in_([MessageRole.USER, MessageRole.ASSISTANT]),
                        col(Message.content) != "",
                    )
                    .order_by(col(Message.created_at).desc(), col(Message.id).desc())
                    .limit(HISTORY_LIMIT)
                )
            ).scalars()
            messages = list(rows)
        messages.reverse()
        return [
            HistoryItem(
                role="user" if m.role is MessageRole.USER else "assistant", content=m.content
            )
            for m in messages
        ]

    async def _emit_delta(self, reply: ActiveReply, text: str) -> None:
        job = reply.job
        sequence = job.next_sequence
        job.next_sequence += 1
        reply.text.append(text)
        due = time.monotonic() - reply.last_checkpoint >= CHECKPOINT_INTERVAL
        if sequence >= job.reserved_until or due:
            await self._checkpoint(reply, reserve_from=sequence)
        event = {
            "type": "MessageDelta",
            "sequence": sequence,
            "threadId": str(job.thread_id),
            "messageId": str(job.assistant_message_id),
            "delta": text,
        }
        if reply.publish_failed:
            # Logged once per reply; the text is saved anyway.
            with contextlib.suppress(Exception):
                await self.broker.publish(job.thread_id, event)
        elif not await self._publish(job.thread_id, event):
            reply.publish_failed = True

    async def _checkpoint(self, reply: ActiveReply, *, reserve_from: int) -> None:
        """Save the partial text and make sure the sequence reservation covers what follows."""
        job = reply.job
        reserve = max(job.reserved_until, reserve_from + SEQUENCE_BLOCK)
        async with self.sessionmaker() as db:
            updated = await db.execute(
                sa.update(Message)
                .where(
                    col(Message.id) == job.assistant_message_id,
                    col(Message.status) == MessageStatus.IN_PROGRESS,
                )
                .values(content="".join(reply.text), openai_response_id=reply.response_id)
            )
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                raise ReplySuperseded()
            await db.execute(
                sa.update(Thread)
                .where(col(Thread.id) == job.thread_id)
                .values(
                    last_event_sequence=sa.func.greatest(col(Thread.last_event_sequence), reserve),
                    updated_at=sa.func.now(),
                )
            )
            await db.commit()
        job.reserved_until = reserve
        reply.last_checkpoint = time.monotonic()

    async def _finish(
        self,
        reply: ActiveReply,
        *,
        done: ReplyDone | None,
        failure: UpstreamFailure | None,
        unexpected: BaseException | None,
        latency_ms: int,
    ) -> None:
        """Store the outcome, log usage and errors, and publish the final event.

        Order: the ErrorLog row is written first, then the message's final state is
        committed, then the final event is published at once. Until that commit the thread
        has a reply IN_PROGRESS (sendMessage answers CONFLICT), so no later exchange can
        publish its numbers before this final event (a subscriber would drop it as out of
        order)."""
        job = reply.job
        if done is not None:
            status, error = MessageStatus.COMPLETED, None
        elif failure is not None:
            status, error = failure.status, failure.message
        elif unexpected is not None:
            status, error = MessageStatus.FAILED, "The reply failed because of a server error."
        elif reply.cancel_reason == "shutdown":
            status, error = MessageStatus.INCOMPLETE, SHUTDOWN_ERROR
        else:
            status, error = MessageStatus.CANCELLED, CANCELLED_ERROR
        input_tokens = done.input_tokens if done else (failure.input_tokens if failure else None)
        output_tokens = done.output_tokens if done else (failure.output_tokens if failure else None)
        sequence = job.next_sequence
        values: dict[str, Any] = {
            "status": status,
            "content": "".join(reply.text),
            "error": error,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "openai_response_id": (done.response_id if done else None) or reply.response_id,
            "openai_message_id": done.output_message_id if done else None,
            "model": job.model,
            "completed_at": sa.func.now(),
        }
        if failure is not None or unexpected is not None:
            await record_error(
                sessionmaker=self.sessionmaker,
                request_id=uuid.uuid4().hex,
                source=ErrorSource.UPSTREAM if failure is not None else ErrorSource.BACKGROUND,
                error=unexpected,
                error_type="UpstreamFailure" if failure is not None else None,
                # The upstream's own words (scrubbed) stay here; users read `error`.
                message=(failure.detail or failure.message) if failure is not None else error,
                path=f"reply/{encode_global_id('Message', job.assistant_message_id)}",
                user_id=job.user_id,
                upstream_status=failure.http_status if failure else None,
                upstream_request_id=failure.request_id if failure else None,
                details={
                    "threadId": str(job.thread_id),
                    "messageId": str(job.assistant_message_id),
                    "model": job.model,
                    "status": status.value,
                    "userMessage": error,
                    "partialChars": len(values["content"]),
                },
            )
        async with self.sessionmaker() as db:
            message = (
                await db.execute(
                    sa.update(Message)
                    .where(
                        col(Message.id) == job.assistant_message_id,
                        col(Message.status) == MessageStatus.IN_PROGRESS,
                    )
                    .values(**values)
                    .returning(Message)
                )
            ).scalar_one_or_none()
            if message is None:
                return  # finished by someone else already
            await db.execute(
                sa.update(Thread)
                .where(col(Thread.id) == job.thread_id)
                .values(last_event_sequence=_release_reservation(job.reserved_until, sequence))
            )
            usage_status = status.value.lower()
            if input_tokens is None and output_tokens is None and values["content"]:
                # The provider reported no usage (cancelled, cut, failed mid-stream) but the
                # reply produced text: the budget and apiUsage count an estimate. The
                # message's own inputTokens/outputTokens stay null (the provider's figures).
                input_tokens = estimate_tokens((job.instructions or "") + job.content)
                output_tokens = estimate_tokens(values["content"])
                usage_status += ESTIMATED_SUFFIX
            if input_tokens is not None or output_tokens is not None:
                db.add(
                    self._usage_row(
                        user_id=job.user_id,
                        project_id=job.project_id,
                        thread_id=job.thread_id,
                        message_id=job.assistant_message_id,
                        model=job.model,
                        input_tokens=input_tokens or 0,
                        output_tokens=output_tokens or 0,
                        latency_ms=latency_ms,
                        status=usage_status,
                    )
                )
            await db.commit()
            # Published as soon as the commit returns (before the session closes).
            await self._publish(job.thread_id, final_event(sequence, message))

    def _usage_row(
        self, *, user_id: uuid.UUID | None, project_id: uuid.UUID | None,
        thread_id: uuid.UUID, message_id: uuid.UUID, model: str, input_tokens: int,
        output_tokens: int, latency_ms: int | None, status: str,
    ) -> ApiUsageLog:  # fmt: skip
        return ApiUsageLog(
            user_id=user_id,
            project_id=project_id,
            thread_id=thread_id,
            message_id=message_id,
            endpoint=self.provider.api,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cost_usd=cost_usd(
                self.settings, model=model, input_tokens=input_tokens, output_tokens=output_tokens
            ),
            status=status,
        )

    # -- replies nobody runs any more ---------------------------------------------------

    async def finish_orphan(
        self, *, message_id: uuid.UUID, thread_id: uuid.UUID, status: MessageStatus | None
    ) -> None:
        """Finish an IN_PROGRESS reply no worker runs: CANCELLED (status None) or `status`."""
        final_status = status or MessageStatus.CANCELLED
        error = CANCELLED_ERROR if status is None else STALE_ERROR
        async with self.sessionmaker() as db:
            message = (
                await db.execute(
                    sa.update(Message)
                    .where(
                        col(Message.id) == message_id,
                        col(Message.status) == MessageStatus.IN_PROGRESS,
                    )
                    .values(status=final_status, error=error, completed_at=sa.func.now())
                    .returning(Message)
                )
            ).scalar_one_or_none()
            if message is None:
                return
            sequence, project_id, assistant_id = (
                await db.execute(
                    sa.update(Thread)
                    .where(col(Thread.id) == thread_id)
                    .values(last_event_sequence=col(Thread.last_event_sequence) + 1)
                    .returning(
                        col(Thread.last_event_sequence),
                        col(Thread.project_id),
                        col(Thread.assistant_id),
                    )
                )
            ).one()
            if message.content:
                # The worker that streamed it is gone (or told to stop and finds the message
                # final): its text is counted here, estimated like _finish does.
                prompt = await self._prompt_of(db, message, assistant_id)
                db.add(
                    self._usage_row(
                        user_id=message.user_id,
                        project_id=project_id,
                        thread_id=thread_id,
                        message_id=message.id,
                        model=message.model or "unknown",
                        input_tokens=estimate_tokens(prompt),
                        output_tokens=estimate_tokens(message.content),
                        latency_ms=None,
                        status=final_status.value.lower() + ESTIMATED_SUFFIX,
                    )
                )
            await db.commit()
            await self._publish(thread_id, final_event(sequence, message))

    @staticmethod
    async def _prompt_of(db: AsyncSession, reply: Message, assistant_id: uuid.UUID | None) -> str:
        """The assistant's instructions and the user message a reply answers (the thread's
        last USER message before it)."""
        question = await db.scalar(
            sa.select(col(Message.content))
            .where(
                col(Message.thread_id) == reply.thread_id,
                col(Message.role) == MessageRole.USER,
                col(Message.created_at) < reply.created_at,
            )
            .order_by(col(Message.created_at).desc())
            .limit(1)
        )
        instructions = (
            await db.scalar(
                sa.select(col(Assistant.instructions)).where(col(Assistant.id) == assistant_id)
            )
            if assistant_id is not None
            else None
        )
        return (instructions or "") + (question or "")

    async def sweep_stale_replies(self) -> int:
        """Mark INCOMPLETE the replies whose worker stopped (no heartbeat for too long)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.atlas_reply_stale_after)
        async with self.sessionmaker() as db:
            rows = (
                await db.execute(
                    sa.select(col(Message.id), col(Message.thread_id))
                    .join(Thread, col(Thread.id) == col(Message.thread_id))
                    .where(
                        col(Message.status) == MessageStatus.IN_PROGRESS,
                        col(Thread.updated_at) < cutoff,
                    )
                )
            ).all()
        count = 0
        for message_id, thread_id in rows:
            if message_id in self.replies:
                continue
            await self.finish_orphan(
                message_id=message_id, thread_id=thread_id, status=MessageStatus.INCOMPLETE
            )
            count += 1
        if count:
            logger.warning("marked %d stale replies INCOMPLETE", count)
        return count

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_stale_replies()
            except Exception:
                logger.exception("stale reply sweep failed")


def _release_reservation(reserved_until: int, final_sequence: int) -> Any:
    """The thread's mark after a reply: exactly its last number when nobody reserved past
    this reply's block, else unchanged (never lower than a number handed out)."""
    current = col(Thread.last_event_sequence)
    return sa.case(
        (current == reserved_until, final_sequence),
        else_=sa.func.greatest(current, final_sequence),
    )


def _backoff(attempt: int) -> float:
    return float(BACKOFF_BASE * 2 ** (attempt - 1) * (1 + random.random()))  # noqa: S311
