"""Replies no worker runs any more: finishing them, and finding them.

Liveness: a running reply touches its message's `heartbeat_at` every few seconds (and at
each checkpoint). A reply IN_PROGRESS whose heartbeat is older than ATLAS_REPLY_STALE_AFTER
lost its worker, and is finished here: marked INCOMPLETE at start-up, by a periodic sweep,
and by a new sendMessage on its thread. A cancel that no worker answers finishes its reply
CANCELLED here too. Either way the text saved so far stays, is counted as estimated usage,
and a final event is published."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai.events import ThreadEvent, final_event
from atlas_gql.ai.models import Assistant, Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.pricing import cost_usd
from atlas_gql.ai.sequences import take_one_statement
from atlas_gql.config import Settings
from atlas_gql.logs.models import ApiUsageLog
from atlas_gql.logs.usage import ESTIMATED_SUFFIX, estimate_tokens

logger = logging.getLogger(__name__)

CANCELLED_ERROR = "The reply was stopped."
STALE_ERROR = "The reply stopped making progress (its server went away)."

Publish = Callable[[uuid.UUID, ThreadEvent], Awaitable[bool]]


def usage_row(
    settings: Settings, *, endpoint: str, user_id: uuid.UUID | None,
    project_id: uuid.UUID | None, thread_id: uuid.UUID, message_id: uuid.UUID, model: str,
    input_tokens: int, output_tokens: int, latency_ms: int | None, status: str,
) -> ApiUsageLog:  # fmt: skip
    """The ApiUsageLog row of one reply, priced."""
    return ApiUsageLog(
        user_id=user_id,
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
        ),
        status=status,
    )


def stale_before(settings: Settings) -> datetime:
    """Replies whose heartbeat is older than this lost their worker."""
    return datetime.now(UTC) - timedelta(seconds=settings.atlas_reply_stale_after)


def is_stale(message: Message, settings: Settings) -> bool:
    beat = message.heartbeat_at or message.created_at
    return beat is not None and beat < stale_before(settings)


class Recovery:
    """Finishes replies whose worker is gone (or cannot be told)."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        publish: Publish,
        endpoint: str,
        is_running_here: Callable[[uuid.UUID], bool],
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.publish = publish
        self.endpoint = endpoint
        self.is_running_here = is_running_here

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
                    take_one_statement(thread_id).returning(
                        col(Thread.last_event_sequence),
                        col(Thread.project_id),
                        col(Thread.assistant_id),
                    )
                )
            ).one()
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
                        status=final_status.value.lower() + ESTIMATED_SUFFIX,
                    )
                )
            await db.commit()
            await self.publish(thread_id, final_event(sequence, message))

    async def sweep_stale_replies(self) -> int:
        """Mark INCOMPLETE the replies whose worker stopped (no heartbeat for too long)."""
        beat = sa.func.coalesce(col(Message.heartbeat_at), col(Message.created_at))
        async with self.sessionmaker() as db:
            rows = (
                await db.execute(
                    sa.select(col(Message.id), col(Message.thread_id)).where(
                        col(Message.status) == MessageStatus.IN_PROGRESS,
                        beat < stale_before(self.settings),
                    )
                )
            ).all()
        count = 0
        for message_id, thread_id in rows:
            if self.is_running_here(message_id):
                continue
            await self.finish_orphan(
                message_id=message_id, thread_id=thread_id, status=MessageStatus.INCOMPLETE
            )
            count += 1
        if count:
            logger.warning("marked %d stale replies INCOMPLETE", count)
        return count

    async def sweep_forever(self) -> None:
        interval = max(1.0, self.settings.atlas_reply_stale_after / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_stale_replies()
            except Exception:
                logger.exception("stale reply sweep failed")


async def _prompt_of(db: AsyncSession, reply: Message, assistant_id: uuid.UUID | None) -> str:
    """The assistant's instructions and the user message a reply answers (the thread's last
    USER message before it)."""
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
