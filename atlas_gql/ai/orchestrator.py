"""The reply orchestrator: runs a streamed model call in an app-owned task, numbers and
publishes its events (events.py, sequences.py), and leaves the assistant message in a final
state whatever happens. Replies whose worker is gone are recovery.py's.

While a reply runs, its worker touches the message's `heartbeat_at` every few seconds and
saves the partial text (a checkpoint) every couple of seconds; nothing is written per delta.
Every write is conditional on the message still being IN_PROGRESS *and run by this worker*
(`Message.reply_worker_id`): a worker that lost its reply to another one stops.

Background replies (the Responses adapter with ATLAS_OPENAI_BACKGROUND): the upstream
response runs on its own, so a reply outlives its stream and its worker.
- At `response.created` the reply's response id, the upstream `sequence_number` and the
  offset of its event numbers are checkpointed at once; every checkpoint afterwards saves the
  text together with the sequence number of the last event whose text it holds.
- Its deltas are numbered `event_sequence_base + upstream sequence_number`, so an event read
  twice has one number: after a resume, deltas published but not checkpointed are re-read
  (the stream starts after the checkpointed number) and re-published with the numbers they
  had; a subscriber that saw them drops them (`broker._deliver`), one that did not gets them.
  The text is therefore neither lost nor doubled, and numbers strictly increase.
- A stream cut, a timeout or a 5xx while reading is retried by reading the same response
  again from the last event handled (`Provider.resume_reply`), even after text was shown.
- Another worker (or this one, restarted) resumes a reply whose worker died (`recovery.py`);
  at a clean shutdown the worker releases its background replies for the next worker to
  resume at once, instead of ending them INCOMPLETE.
- A reply that ends here without the upstream having ended it (cancel, cut, timeout, ...)
  is cancelled upstream (`POST /v1/responses/{id}/cancel`), so it stops costing.

Size: over 400 lines on purpose: one reply's life (start, stream, checkpoint, resume, cancel,
finish) reads top to bottom here; what stands alone is in events.py, sequences.py,
recovery.py and atlas_gql/circuit.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql import metrics
from atlas_gql.ai import tree
from atlas_gql.ai.broker import Broker
from atlas_gql.ai.citations import stored_citations
from atlas_gql.ai.events import (
    ThreadEvent,
    ToolCallCompleted,
    ToolCallStarted,
    delta_event,
    final_event,
)
from atlas_gql.ai.models import AssistantTool, Message, MessageRole, MessageStatus, Thread
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
from atlas_gql.ai.recovery import (
    CANCELLED_ERROR,
    Recovery,
    backoff,
    usage_row,
    while_no_connection,
)
from atlas_gql.ai.sequences import SequenceBlock
from atlas_gql.ai.titles import TitleWriter
from atlas_gql.ai.tool_items import ToolCallItem
from atlas_gql.ai.watch import SubscriptionWatches
from atlas_gql.config import Settings
from atlas_gql.db.utils import is_connection_error
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.audit import ErrorLogPolicy, record_error, storable_text
from atlas_gql.logs.models import ApiUsageLog, ErrorSource
from atlas_gql.logs.usage import ESTIMATED_SUFFIX, estimate_tokens

logger = logging.getLogger(__name__)

# Partial text is saved at least this often (seconds), so a crash keeps most of it.
CHECKPOINT_INTERVAL = 2.0
HEARTBEAT_INTERVAL = 5.0
# Attempts of one upstream call (retried only before the first delta; backoff: recovery.py).
MAX_ATTEMPTS = 3
# How many earlier messages the chat adapter sends, and how many seed a new conversation.
HISTORY_LIMIT = 50

SHUTDOWN_ERROR = "The server stopped while the reply was running."
DB_UNAVAILABLE_ERROR = "The database was unavailable, so the reply could not be saved."


@dataclass
class ReplyJob:
    """Everything the background task needs, captured when sendMessage committed."""

    thread_id: uuid.UUID
    project_id: uuid.UUID | None
    user_id: uuid.UUID | None
    user_message_id: uuid.UUID
    assistant_message_id: uuid.UUID
    model: str
    instructions: str | None
    temperature: float | None
    content: str
    openai_file_ids: list[str]
    conversation_id: str | None
    sequences: SequenceBlock
    # The personal API key the exchange was sent with (its usage row names it); None for a
    # session, and for a reply resumed by another worker (not kept on the message).
    api_key_id: uuid.UUID | None = None
    # The assistant's built-in tools and the vector stores file search may read
    # (ai/knowledge.py `vector_store_ids_for`).
    tools: tuple[AssistantTool, ...] = ()
    vector_store_ids: list[str] = field(default_factory=list)
    # False for a reply on a branch the thread's OpenAI conversation does not hold: its
    # history (the path up to `history_leaf_id`, the question's parent) is sent as `input`.
    in_conversation: bool = True
    history_leaf_id: uuid.UUID | None = None


@dataclass
class ActiveReply:
    job: ReplyJob
    text: list[str] = field(default_factory=list)
    response_id: str | None = None
    # "user" (cancelMessage) | "shutdown" (ends INCOMPLETE) | "release" (shutdown of a
    # background reply: left for the next worker) | "superseded" (another worker has it).
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None
    stream_task: asyncio.Task[ReplyDone] | None = None
    # When a checkpoint last succeeded (the heartbeat skips only right after one), and when
    # one was last tried (a failed one waits an interval before the next try).
    last_checkpoint: float = field(default_factory=time.monotonic)
    last_checkpoint_try: float = 0.0
    # The periodic checkpoint running in the background (the delta loop does not wait for
    # it), and the lock that keeps checkpoints of the reply one at a time.
    checkpointing: asyncio.Task[None] | None = None
    checkpoint_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The MessageCreated events of the exchange, published by the task before any delta.
    created: list[ThreadEvent] = field(default_factory=list)
    publish_failed: bool = False
    # How many items of `text` were published (the rest is being published now), and the
    # number of the last event published (the reply's MessageCreated before any delta): what a
    # checkpoint stores as `content_sequence` with the published text.
    published: int = 0
    published_sequence: int | None = None
    # Background replies: the upstream sequence number of the last event whose text was
    # published (where a resumed stream starts), of the last one handled (appended to
    # `text`, to skip an event read twice), and the offset of the event numbers
    # (`sequence = base + upstream sequence number`).
    upstream_sequence: int | None = None
    handled_upstream: int | None = None
    sequence_base: int | None = None
    # Tool calls that ended while streaming, by call id: billed even when the reply does
    # not complete (the upstream reports its own count only with a final response).
    ended_calls: dict[str, AssistantTool] = field(default_factory=dict)

    @property
    def published_text(self) -> str:
        return "".join(self.text[: self.published])

    @property
    def resumable(self) -> bool:
        """A background reply whose upstream response can be read again from
        `upstream_sequence` on."""
        return (
            self.sequence_base is not None
            and self.upstream_sequence is not None
            and self.response_id is not None
        )


class ReplySuperseded(Exception):
    """Someone else finished the message (e.g. a cancel after this worker looked dead)."""


class AIRuntime:
    """The AI domain's long-lived parts (held by the app as `Services.ai`)."""

    # Seconds between heartbeats and between checkpoints of a running reply (tests shorten them).
    heartbeat_interval = HEARTBEAT_INTERVAL
    checkpoint_interval = CHECKPOINT_INTERVAL

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
        # This worker, as recorded on the replies it runs (Message.reply_worker_id).
        self.worker_id = uuid.uuid4()
        # A live reply beats several times within each liveness limit.
        self.heartbeat_interval = min(
            type(self).heartbeat_interval,
            settings.atlas_reply_resume_after / 3,
            settings.atlas_reply_stale_after / 3,
        )
        self.replies: dict[uuid.UUID, ActiveReply] = {}
        self.sweeper: asyncio.Task[None] | None = None
        # Open threadEvents subscriptions of this worker and their batched access re-checks.
        self.watches = SubscriptionWatches(
            sessionmaker=sessionmaker, interval=settings.atlas_subscription_recheck
        )
        self.recovery = Recovery(
            settings=settings,
            sessionmaker=sessionmaker,
            publish=self._publish,
            endpoint=provider.api,
            is_running_here=self.replies.__contains__,
            worker_id=self.worker_id,
            resume=self.resume_reply if provider.can_resume else None,
            cancel_upstream=self._cancel_upstream_later,
        )
        # Names untitled threads after their first reply (titles.py).
        self.titles = TitleWriter(
            settings=settings,
            sessionmaker=sessionmaker,
            provider=provider,
            publish=self._publish,
            spawn=spawn,
        )
        broker.set_control_handler(self._on_control)

    # -- starting and stopping replies -------------------------------------------------

    def start_reply(self, job: ReplyJob, *, created: list[ThreadEvent]) -> None:
        """Start the reply in the background; the task publishes the MessageCreated events
        first, then streams. Nothing here can fail after sendMessage committed: a broker
        that is down loses events (logged), never the reply."""
        reply = ActiveReply(job=job, created=created, published_sequence=job.sequences.next - 1)
        self.replies[job.assistant_message_id] = reply
        reply.task = self.spawn(self._run(reply), name=f"reply-{job.assistant_message_id}")

    async def _publish(self, thread_id: uuid.UUID, event: ThreadEvent) -> bool:
        """Publish an event; a broker failure (Redis down) is logged, not raised: the
        database keeps the truth, a client that missed events reloads `thread.messages`."""
        try:
            await self.broker.publish(thread_id, event)
        except Exception:
            logger.warning(
                "could not publish %s #%s of thread %s",
                event.type,
                event.sequence,
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
            except Exception as error:
                # The control channel is down: finish the message here; the worker running
                # it (if any) stops at its next heartbeat or checkpoint, finding it no longer
                # IN_PROGRESS (a background response is cancelled upstream at once).
                logger.warning("could not broadcast the cancel of %s: %r", message_id, error)
            else:
                for _ in range(20):
                    await asyncio.sleep(0.1)
                    if await self._status_of(message_id) is not MessageStatus.IN_PROGRESS:
                        return
        # Nobody runs it any more (or nobody can be told): finish it here.
        await self.recovery.finish_orphan(message_id=message_id, thread_id=thread_id, status=None)

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
            # Replies left by a worker that stopped: resumed (background) or INCOMPLETE.
            await self.recovery.sweep_stale_replies()
        except Exception:
            # The app must start (and say so on /readyz) even when the database is down;
            # the periodic sweep tries again.
            logger.exception("stale reply sweep at start failed")
        self.sweeper = asyncio.create_task(self.recovery.sweep_forever(), name="ai-stale-sweeper")
        self.watches.start()

    async def stop(self) -> None:
        await self.watches.stop()
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        replies = list(self.replies.values())
        for reply in replies:
            # A background reply goes on upstream: leave it to the next worker.
            reason = "release" if reply.resumable else "shutdown"
            await self._cancel_local(reply, reason=reason, wait=False)
        tasks = {reply.task for reply in replies if reply.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await self.broker.close()
        await self.provider.close()

    # -- resuming background replies (recovery.py finds them) ------------------------------

    async def resume_reply(self, message_id: uuid.UUID) -> bool:
        """Take over a background reply nobody runs and go on streaming it from its last
        checkpoint. False when another worker has it (or it is not resumable any more)."""
        if message_id in self.replies:
            return False
        claimed = await self.recovery.claim(message_id)
        if claimed is None:
            return False
        message = claimed.message
        assert message.event_sequence_base is not None
        assert message.upstream_sequence is not None
        base, upstream = message.event_sequence_base, message.upstream_sequence
        job = ReplyJob(
            thread_id=message.thread_id,
            project_id=claimed.project_id,
            user_id=message.user_id,
            user_message_id=claimed.user_message_id or message.id,
            assistant_message_id=message.id,
            model=message.model or self.settings.atlas_default_model,
            instructions=claimed.instructions,
            temperature=None,
            content=claimed.question,
            openai_file_ids=[],
            conversation_id=claimed.conversation_id,
            sequences=SequenceBlock.resume(
                last_published=base + upstream, thread_mark=claimed.thread_mark
            ),
        )
        text = [message.content] if message.content else []
        reply = ActiveReply(
            job=job,
            text=text,
            published=len(text),
            response_id=message.openai_response_id,
            upstream_sequence=upstream,
            handled_upstream=upstream,
            sequence_base=base,
            published_sequence=base + upstream,
        )
        self.replies[message.id] = reply
        reply.task = self.spawn(self._run(reply), name=f"reply-{message.id}")
        logger.warning(
            "resuming reply %s (response %s) after upstream event %d",
            message.id,
            message.openai_response_id,
            upstream,
        )
        return True

    async def recover_reply(self, *, message_id: uuid.UUID, thread_id: uuid.UUID) -> None:
        """An IN_PROGRESS reply found without a live worker (sendMessage saw it stale):
        resumed when it is a background reply, else finished INCOMPLETE."""
        await self.recovery.recover(message_id=message_id, thread_id=thread_id)

    def _cancel_upstream_later(self, response_id: str) -> None:
        """Stop a background response upstream, in the background (best effort)."""
        self.spawn(self._cancel_upstream(response_id), name=f"cancel-{response_id}")

    async def _cancel_upstream(self, response_id: str) -> None:
        try:
            await self.provider.cancel_response(response_id)
        except UpstreamFailure as failure:
            logger.warning("could not cancel upstream response %s: %s", response_id, failure.detail)

    # -- the reply task -----------------------------------------------------------------

    async def _run(self, reply: ActiveReply) -> None:
        job = reply.job
        started = time.monotonic()
        metrics.REPLIES_IN_FLIGHT.inc()
        try:
            for event in reply.created:
                await self._publish(job.thread_id, event)
        except asyncio.CancelledError:
            reply.cancel_reason = reply.cancel_reason or "shutdown"
        heartbeat = asyncio.create_task(self._heartbeat(reply))
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
            await self._settle_checkpoint(reply)
            if reply.stream_task.cancelled():
                if reply.cancel_reason == "superseded":
                    return
                if reply.cancel_reason == "release":
                    await self._release(reply)
                    return
            elif isinstance(error := reply.stream_task.exception(), UpstreamFailure):
                failure = error
            elif isinstance(error, ReplySuperseded):
                return
            elif error is not None:
                unexpected = error
            else:
                done = reply.stream_task.result()
            latency_ms = int((time.monotonic() - started) * 1000)
            if done is not None or failure is not None:
                metrics.observe_upstream(
                    api=self.provider.api,
                    duration=latency_ms / 1000,
                    failed=failure is not None,
                    http_status=failure.http_status if failure is not None else None,
                )
            await self._finish(
                reply, done=done, failure=failure, unexpected=unexpected, latency_ms=latency_ms
            )
        except Exception:
            logger.exception("reply %s could not be finished", job.assistant_message_id)
        finally:
            heartbeat.cancel()
            self.replies.pop(job.assistant_message_id, None)
            metrics.REPLIES_IN_FLIGHT.dec()

    def _owned(self, message_id: uuid.UUID) -> sa.ColumnElement[bool]:
        """The reply's row, as long as it is IN_PROGRESS and run by this worker. A new reply
        stored without a worker (by code that did not set `reply_worker_id`) is this
        worker's too, and becomes so at its first heartbeat or checkpoint; a *released*
        one (resumable) is not: it is claimed (recovery.py)."""
        worker = col(Message.reply_worker_id)
        return sa.and_(
            col(Message.id) == message_id,
            col(Message.status) == MessageStatus.IN_PROGRESS,
            sa.or_(
                worker == self.worker_id,
                sa.and_(worker.is_(None), col(Message.upstream_sequence).is_(None)),
            ),
        )

    async def _still_running_here(self, reply: ActiveReply) -> bool:
        async with self.sessionmaker() as db:
            owned = await db.scalar(
                sa.select(sa.literal(True)).where(self._owned(reply.job.assistant_message_id))
            )
        return bool(owned)

    async def _heartbeat(self, reply: ActiveReply) -> None:
        message_id = reply.job.assistant_message_id
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if time.monotonic() - reply.last_checkpoint < self.heartbeat_interval:
                continue  # a checkpoint beat for it (and would have found it superseded)
            try:
                async with self.sessionmaker() as db:
                    beat = await db.execute(
                        sa.update(Message)
                        .where(self._owned(message_id))
                        .values(heartbeat_at=sa.func.now(), reply_worker_id=self.worker_id)
                    )
                    await db.commit()
            except Exception:
                logger.warning("heartbeat of reply %s failed", message_id, exc_info=True)
                continue
            if beat.rowcount == 0:  # type: ignore[attr-defined]
                if reply.stream_task is not None and reply.stream_task.done():
                    return  # it is being finished here
                # Finished elsewhere (a cancel no worker could be told of) or taken over by
                # a worker that found this one silent: stop without touching it.
                logger.warning("reply %s is no longer this worker's; stopping", message_id)
                reply.cancel_reason = "superseded"
                if reply.stream_task is not None:
                    reply.stream_task.cancel()
                return

    async def _stream(self, reply: ActiveReply) -> ReplyDone:
        request = None if reply.resumable else await self._request(reply.job)
        attempt = 1
        while True:
            try:
                if reply.resumable:
                    assert reply.response_id is not None
                    assert reply.upstream_sequence is not None
                    stream = self.provider.resume_reply(
                        reply.response_id, after_sequence=reply.upstream_sequence
                    )
                else:
                    assert request is not None
                    stream = self.provider.stream_reply(request)
                async for batch in stream:
                    for item in batch:
                        if isinstance(item, ReplyDelta):
                            await self._emit_delta(reply, item)
                        elif isinstance(item, ToolCallItem):
                            await self._emit_tool_call(reply, item)
                        elif isinstance(item, ReplyStarted):
                            await self._started(reply, item)
                        elif isinstance(item, ReplyDone):
                            return item
                raise UpstreamFailure(
                    STREAM_ENDED_ERROR, detail="The provider ended the reply without finishing it."
                )
            except UpstreamFailure as failure:
                # A background reply is read again from the last event handled; any other
                # is retried only before its first delta (again, text would be doubled).
                if not failure.retryable or attempt >= MAX_ATTEMPTS:
                    raise
                if reply.text and not reply.resumable:
                    raise
                await asyncio.sleep(backoff(attempt))
                if not await self._still_running_here(reply):
                    # Cancelled or taken over meanwhile (which may be why the stream ended).
                    raise ReplySuperseded() from failure
                attempt += 1

    async def _request(self, job: ReplyJob) -> ReplyRequest:
        conversation_id = job.conversation_id
        history: list[HistoryItem] = []
        if not self.provider.uses_conversations or not job.in_conversation:
            history = await self._history(job)
        elif conversation_id is None:
            conversation_id = await self._retrying(lambda: self._open_conversation(job))
        return ReplyRequest(
            model=job.model,
            instructions=job.instructions,
            temperature=job.temperature,
            content=job.content,
            file_ids=job.openai_file_ids,
            conversation_id=conversation_id,
            history=history,
            tools=job.tools,
            vector_store_ids=job.vector_store_ids,
        )

    async def _started(self, reply: ActiveReply, started: ReplyStarted) -> None:
        """The upstream response exists. A background one is checkpointed at once (its id,
        where its events start, how they are numbered; in a task of its own), so it can be
        resumed from then on."""
        reply.response_id = started.response_id
        if (
            self.provider.background
            and started.background
            and started.response_id is not None
            and started.sequence_number is not None
            and reply.sequence_base is None
        ):
            # Numbers above those already published: `base + n` is the number of the event
            # `n`, and `base + started` was taken (by the exchange's MessageCreated).
            reply.sequence_base = reply.job.sequences.next - 1 - started.sequence_number
            reply.upstream_sequence = reply.handled_upstream = started.sequence_number
            # Saved in the background, so the first delta does not wait for the database: a
            # worker that dies before it is saved leaves a reply that cannot be resumed, as
            # one that dies before `response.created` does.
            self._checkpoint_soon(reply)

    async def _retrying(self, call: Callable[[], Coroutine[Any, Any, str]]) -> str:
        attempt = 1
        while True:
            try:
                return await call()
            except UpstreamFailure as failure:
                if not failure.retryable or attempt >= MAX_ATTEMPTS:
                    raise
                await asyncio.sleep(backoff(attempt))
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
                # Bookkeeping of the reply, not an edit of the thread: updatedAt stays.
                .values(openai_thread_id=conversation_id, updated_at=col(Thread.updated_at))
            )
            await db.commit()
        return conversation_id

    async def _history(self, job: ReplyJob) -> list[HistoryItem]:
        """The branch the reply answers, before its question (oldest first): the path from
        the root to the question's parent, its messages with text (the last HISTORY_LIMIT)."""
        if job.history_leaf_id is None:
            return []
        async with self.sessionmaker() as db:
            path = await tree.path_to(db, job.history_leaf_id, limit=HISTORY_LIMIT)
        return [
            HistoryItem(
                role="user" if m.role is MessageRole.USER else "assistant", content=m.content
            )
            for m in path
            if m.role in (MessageRole.USER, MessageRole.ASSISTANT) and m.content
        ]

    async def _number(
        self, reply: ActiveReply, upstream_number: int | None
    ) -> tuple[int, int | None] | None:
        """The thread event number of an upstream event (a delta, a tool call) and its
        upstream number as resumable (None); None when it was handled already."""
        job = reply.job
        sequences = job.sequences
        if reply.sequence_base is not None and upstream_number is None:
            # Events without numbers cannot be resumed exactly: this reply no longer is.
            logger.warning("reply %s: an event without a sequence number", job.assistant_message_id)
            reply.sequence_base = reply.upstream_sequence = reply.handled_upstream = None
        upstream = upstream_number if reply.sequence_base is not None else None
        if reply.sequence_base is not None and upstream is not None:
            handled = reply.handled_upstream
            if handled is not None and upstream <= handled:
                return None  # handled already (a provider that replays more than asked)
            sequence = sequences.take_at(reply.sequence_base + upstream)
            reply.handled_upstream = upstream
        else:
            sequence = sequences.take()
        if sequences.needs_extension:
            # The number must be reserved before anyone sees it.
            await self._checkpoint(reply)
        return sequence, upstream

    async def _emit_tool_call(self, reply: ActiveReply, call: ToolCallItem) -> None:
        """Publish a tool call's start or end, numbered as deltas are (so replay, resume
        and the drop of numbers already seen hold for it too)."""
        numbered = await self._number(reply, call.sequence_number)
        if numbered is None:
            return
        sequence, upstream = numbered
        job = reply.job
        common: dict[str, Any] = {
            "sequence": sequence,
            "thread_id": job.thread_id,
            "message_id": job.assistant_message_id,
            "call_id": call.call_id,
            "tool": call.tool,
            "query": call.query,
        }
        event: ThreadEvent
        if call.done:
            reply.ended_calls[call.call_id] = call.tool
            status = call.status.upper() if call.status in {"failed", "incomplete"} else "COMPLETED"
            event = ToolCallCompleted(**common, status=status, result_count=call.result_count)
        else:
            event = ToolCallStarted(**common)
        if reply.publish_failed:
            with contextlib.suppress(Exception):
                await self.broker.publish(job.thread_id, event)
        elif not await self._publish(job.thread_id, event):
            reply.publish_failed = True
        reply.published_sequence = sequence
        if upstream is not None:
            reply.upstream_sequence = upstream

    async def _emit_delta(self, reply: ActiveReply, delta: ReplyDelta) -> None:
        job = reply.job
        numbered = await self._number(reply, delta.sequence_number)
        if numbered is None:
            return
        sequence, upstream = numbered
        # What PostgreSQL cannot store (NUL, a lone surrogate) would make the reply's text
        # unsavable: replaced (U+FFFD) before it is streamed, so deltas join to what is stored.
        text = storable_text(delta.text)
        reply.text.append(text)
        event = delta_event(
            sequence, thread_id=job.thread_id, message_id=job.assistant_message_id, delta=text
        )
        if reply.publish_failed:
            # Logged once per reply; the text is saved anyway.
            with contextlib.suppress(Exception):
                await self.broker.publish(job.thread_id, event)
        elif not await self._publish(job.thread_id, event):
            reply.publish_failed = True
        else:
            metrics.DELTAS_PUBLISHED.inc()
        # Only published text is checkpointed: what a resumed stream re-reads (everything
        # after the checkpoint) is then at worst published twice, never not at all.
        reply.published = len(reply.text)
        reply.published_sequence = sequence
        if upstream is not None:
            reply.upstream_sequence = upstream
        last_try = max(reply.last_checkpoint, reply.last_checkpoint_try)
        if time.monotonic() - last_try >= self.checkpoint_interval:
            self._checkpoint_soon(reply)

    def _checkpoint_soon(self, reply: ActiveReply) -> None:
        """The periodic checkpoint, in a task of its own: the deltas go on while it waits for
        a connection and writes (one at a time per reply)."""
        if reply.checkpointing is not None and not reply.checkpointing.done():
            return
        reply.checkpointing = asyncio.create_task(self._periodic_checkpoint(reply))

    async def _periodic_checkpoint(self, reply: ActiveReply) -> None:
        try:
            await self._checkpoint(reply)
        except ReplySuperseded:
            # Finished elsewhere or taken over: stop without touching it (as the heartbeat).
            reply.cancel_reason = reply.cancel_reason or "superseded"
            if reply.stream_task is not None:
                reply.stream_task.cancel()
        except Exception:
            # The database is busy or down: the reply goes on; the next checkpoint (an
            # interval later) saves what this one would have; the heartbeat still runs (it
            # skips only after a checkpoint that succeeded), so no sweep takes the reply.
            reply.last_checkpoint_try = time.monotonic()
            logger.warning(
                "checkpoint of reply %s failed", reply.job.assistant_message_id, exc_info=True
            )

    async def _settle_checkpoint(self, reply: ActiveReply) -> None:
        """Wait for the periodic checkpoint in flight, if any (before the reply's end)."""
        if reply.checkpointing is not None:
            await asyncio.wait({reply.checkpointing})

    async def _checkpoint(self, reply: ActiveReply) -> None:
        """Save the text published so far (with, for a background reply, the upstream
        sequence number of its last event), touch the heartbeat, and make sure the sequence
        reservation covers what follows."""
        async with reply.checkpoint_lock:
            await self._write_checkpoint(reply)

    async def _write_checkpoint(self, reply: ActiveReply) -> None:
        job = reply.job
        sequences = job.sequences
        mark = sequences.extension() if sequences.needs_extension else None
        values: dict[str, Any] = {
            "content": reply.published_text,
            "openai_response_id": reply.response_id,
            "heartbeat_at": sa.func.now(),
            "reply_worker_id": self.worker_id,
            # With the text, in the same row write: a resumed stream starts right after it
            # (NULL for a reply that cannot be resumed).
            "upstream_sequence": reply.upstream_sequence,
            "event_sequence_base": reply.sequence_base,
            # Where the saved text ends in the thread's events (Thread.lastEventSequence).
            "content_sequence": reply.published_sequence,
        }
        async with self.sessionmaker() as db:
            updated = await db.execute(
                sa.update(Message).where(self._owned(job.assistant_message_id)).values(**values)
            )
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                raise ReplySuperseded()
            if mark is not None:
                await db.execute(sequences.extend_statement(job.thread_id, mark))
            await db.commit()
        if mark is not None:
            sequences.extended(mark)
        reply.last_checkpoint = time.monotonic()

    async def _release(self, reply: ActiveReply) -> None:
        """Shutdown of a background reply: save where it is and give it up (no worker), so
        the next worker to start (or to sweep) resumes it at once; no final event."""
        job = reply.job
        async with self.sessionmaker() as db:
            await db.execute(
                sa.update(Message)
                .where(self._owned(job.assistant_message_id))
                .values(
                    content=reply.published_text,
                    openai_response_id=reply.response_id,
                    upstream_sequence=reply.upstream_sequence,
                    event_sequence_base=reply.sequence_base,
                    content_sequence=reply.published_sequence,
                    reply_worker_id=None,
                    heartbeat_at=sa.func.now(),
                )
            )
            await db.commit()
        logger.warning("released reply %s for another worker to resume", job.assistant_message_id)

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
        elif unexpected is not None and is_connection_error(unexpected):
            # No connection within ATLAS_DB_POOL_TIMEOUT (or the database down) when the reply
            # had to write before going on.
            status, error = MessageStatus.FAILED, DB_UNAVAILABLE_ERROR
        elif unexpected is not None:
            status, error = MessageStatus.FAILED, "The reply failed because of a server error."
        elif reply.cancel_reason == "shutdown":
            status, error = MessageStatus.INCOMPLETE, SHUTDOWN_ERROR
        else:
            status, error = MessageStatus.CANCELLED, CANCELLED_ERROR
        input_tokens = done.input_tokens if done else (failure.input_tokens if failure else None)
        output_tokens = done.output_tokens if done else (failure.output_tokens if failure else None)
        # Tool calls are billed per call, whatever became of the reply.
        reported = done or failure
        seen = list(reply.ended_calls.values())
        file_searches = max(
            reported.file_search_calls if reported else 0, seen.count(AssistantTool.FILE_SEARCH)
        )
        web_searches = max(
            reported.web_search_calls if reported else 0, seen.count(AssistantTool.WEB_SEARCH)
        )
        sequence = job.sequences.take()
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
            "content_sequence": sequence,
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
                policy=ErrorLogPolicy.from_settings(self.settings),
            )
        store = functools.partial(
            self._store_outcome, reply, done=done, values=values, sequence=sequence,
            status=status, latency_ms=latency_ms, file_searches=file_searches,
            web_searches=web_searches,
        )  # fmt: skip
        stored = await while_no_connection(store, what=f"reply {job.assistant_message_id}")
        if stored is None:
            return  # finished by someone else already
        if status is MessageStatus.COMPLETED:
            # In a task of its own: the reply is over for everyone already.
            self.titles.after_reply(
                thread_id=job.thread_id, reply_id=job.assistant_message_id, user_id=job.user_id
            )
        upstream_ended = done is not None or (failure is not None and failure.upstream_ended)
        if reply.resumable and not upstream_ended:
            # Cancelled, cut, timed out, a bug of ours: it still generates upstream.
            assert reply.response_id is not None
            self._cancel_upstream_later(reply.response_id)

    async def _store_outcome(
        self,
        reply: ActiveReply,
        *,
        done: ReplyDone | None,
        values: dict[str, Any],
        sequence: int,
        status: MessageStatus,
        latency_ms: int,
        file_searches: int,
        web_searches: int,
    ) -> Message | None:
        """Commit the reply's final state, its sequence release and its usage row in one
        short transaction, and publish its final event. The message as stored, None when
        someone else finished it."""
        job = reply.job
        input_tokens, output_tokens = values["input_tokens"], values["output_tokens"]
        async with self.sessionmaker() as db:
            if done is not None:
                values["citations"] = await stored_citations(db, done.citations)
            message = (
                await db.execute(
                    sa.update(Message)
                    .where(self._owned(job.assistant_message_id))
                    .values(**values)
                    .returning(Message)
                )
            ).scalar_one_or_none()
            if message is None:
                # Finished by someone else, or by this very end: an earlier attempt whose
                # commit the database made but whose answer the dropped connection lost.
                # Then its final event is still due, once.
                message = await self._ended_by_lost_commit(db, reply, sequence)
                if message is not None:
                    await self._publish(job.thread_id, final_event(sequence, message))
                return message
            await db.execute(job.sequences.release_statement(job.thread_id, sequence))
            usage_status = status.value.lower()
            if input_tokens is None and output_tokens is None and values["content"]:
                # The provider reported no usage (cancelled, cut, failed mid-stream) but the
                # reply produced text: the budget and apiUsage count an estimate. The
                # message's own inputTokens/outputTokens stay null (the provider's figures).
                input_tokens = estimate_tokens((job.instructions or "") + job.content)
                output_tokens = estimate_tokens(values["content"])
                usage_status += ESTIMATED_SUFFIX
            usage: ApiUsageLog | None = None
            if (
                input_tokens is not None
                or output_tokens is not None
                or file_searches
                or web_searches
            ):
                usage = usage_row(
                    self.settings,
                    endpoint=self.provider.api,
                    user_id=job.user_id,
                    project_id=job.project_id,
                    thread_id=job.thread_id,
                    message_id=job.assistant_message_id,
                    model=job.model,
                    input_tokens=input_tokens or 0,
                    output_tokens=output_tokens or 0,
                    latency_ms=latency_ms,
                    status=usage_status,
                    api_key_id=job.api_key_id,
                    file_search_calls=file_searches,
                    web_search_calls=web_searches,
                )
                db.add(usage)
            await db.commit()
            # Published as soon as the commit returns (before the session closes).
            await self._publish(job.thread_id, final_event(sequence, message))
        if usage is not None:
            metrics.observe_usage(
                model=usage.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=float(usage.cost_usd),
            )
        return message

    async def _ended_by_lost_commit(
        self, db: AsyncSession, reply: ActiveReply, sequence: int
    ) -> Message | None:
        """The reply's row when this worker's own end stored it (final, still this worker's,
        numbered with this end's `sequence`: another worker's end or an orphan's takes other
        numbers); None when someone else finished it."""
        message = await db.get(Message, reply.job.assistant_message_id)
        if (
            message is None
            or message.status is MessageStatus.IN_PROGRESS
            or message.content_sequence != sequence
            or message.reply_worker_id not in (self.worker_id, None)
        ):
            return None
        return message

    # -- replies nobody runs any more (recovery.py) ---------------------------------------

    async def finish_orphan(
        self, *, message_id: uuid.UUID, thread_id: uuid.UUID, status: MessageStatus | None
    ) -> None:
        """Finish an IN_PROGRESS reply no worker runs: CANCELLED (status None) or `status`."""
        await self.recovery.finish_orphan(message_id=message_id, thread_id=thread_id, status=status)
