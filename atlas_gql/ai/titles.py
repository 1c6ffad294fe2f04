"""Thread titles: a short, cheap model call (ATLAS_TITLE_MODEL) names a thread after its first
exchange.

- Automatic: when a reply completes and it is the first completed reply of a thread that has
  no title, `TitleWriter.after_reply` starts the call in an app-owned task: the reply and its
  MessageCompleted event never wait for it. A title set by someone in the meantime is kept.
- On demand: `generate_thread_title` (the `generateThreadTitle` mutation) names the thread
  again, for whoever may rename it.

Either way the call is counted: an ApiUsageLog row with purpose TITLE (so in the project's
and the user's monthly budgets, which are checked before the call), and the new title goes to
`threadEvents` subscribers as a ThreadUpdated event. A failed call leaves the title as it was
and writes an ErrorLog row (the on-demand call answers UPSTREAM_ERROR too).

No connection is held during the upstream call: reading the exchange, checking the budgets
and storing the title are short transactions of their own."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from atlas_gql.ai import tree
from atlas_gql.ai.events import ThreadEvent, ThreadPayload, ThreadUpdated
from atlas_gql.ai.models import Message, MessageRole, MessageStatus, Thread
from atlas_gql.ai.provider import (
    Provider,
    TextRequest,
    UpstreamFailure,
    record_upstream_failure,
)
from atlas_gql.ai.recovery import usage_row
from atlas_gql.ai.sequences import take_one_statement
from atlas_gql.ai.threads import managed_thread, running_reply
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.models import PermissionName, User
from atlas_gql.config import TEXT_LIMITS, Settings
from atlas_gql.errors import Conflict, NotFound, QuotaExceeded, UpstreamError
from atlas_gql.ids import encode_global_id
from atlas_gql.logs.audit import ErrorLogPolicy
from atlas_gql.logs.models import UsagePurpose
from atlas_gql.logs.usage import (
    effective_user_budget,
    ensure_within_budget,
    ensure_within_user_budget,
)

logger = logging.getLogger(__name__)

TITLE_INSTRUCTIONS = (
    "You name conversations. Answer with a short title for the conversation below: at most "
    "six words, in the language of the conversation, without quotes or a final period."
)
# Characters of the question and of the reply the model reads (the start says what it is
# about; the rest would only cost tokens).
EXCERPT_CHARS = 1000
# Enough for six words in most languages (the Responses API takes 16 at the least).
MAX_OUTPUT_TOKENS = 32
# Stripped from both ends of the model's answer: quotes (typographic ones too) and markdown.
QUOTES_AND_MARKUP = "\"'`*#\u201c\u201d\u2018\u2019\u00ab\u00bb"
EMPTY_TITLE_ERROR = "The AI provider answered no title."
NOTHING_TO_NAME = "The branch shown has no completed reply to name the thread after yet."

Publish = Callable[[uuid.UUID, ThreadEvent], Awaitable[bool]]
Spawn = Callable[..., Any]


@dataclass(frozen=True)
class Exchange:
    """What a title is drawn from: the thread's first completed reply and its question."""

    thread_id: uuid.UUID
    project_id: uuid.UUID | None
    reply_id: uuid.UUID
    question: str
    answer: str

    def prompt(self) -> str:
        return f"User: {self.question[:EXCERPT_CHARS]}\n\nAssistant: {self.answer[:EXCERPT_CHARS]}"


def clean_title(text: str) -> str | None:
    """The model's answer as a title: its first non-blank line, without surrounding quotes,
    markup or a final period, spaces collapsed, at most TEXT_LIMITS.thread_title characters; None if
    empty."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    title = " ".join(line.replace("\x00", "").split())
    title = title.strip().strip(QUOTES_AND_MARKUP).strip()
    title = title.removeprefix("Title:").strip().rstrip(".").strip()
    return title[: TEXT_LIMITS.thread_title] or None


@dataclass(kw_only=True, eq=False)
class TitleWriter:
    """Names threads (held by the AI runtime as `AIRuntime.titles`)."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    provider: Provider
    publish: Publish
    spawn: Spawn
    # Threads being named by this worker (one call at a time per thread).
    running: set[uuid.UUID] = field(default_factory=set, init=False)

    # -- automatic ------------------------------------------------------------------------

    def after_reply(
        self, *, thread_id: uuid.UUID, reply_id: uuid.UUID, user_id: uuid.UUID | None
    ) -> None:
        """A reply completed: name its thread in the background when it has no title and
        this is its first completed reply (ATLAS_AUTO_TITLES)."""
        if not self.settings.atlas_auto_titles or thread_id in self.running:
            return
        work: Coroutine[Any, Any, None] = self._automatic(thread_id, reply_id, user_id)
        self.spawn(work, name=f"title-{thread_id}")

    async def _automatic(
        self, thread_id: uuid.UUID, reply_id: uuid.UUID, user_id: uuid.UUID | None
    ) -> None:
        if thread_id in self.running:
            return
        self.running.add(thread_id)
        try:
            exchange = await self.exchange(thread_id, first_of=reply_id)
            if exchange is None:
                return
            try:
                await self.check_budgets(exchange.project_id, user_id)
            except QuotaExceeded as refusal:
                logger.info("thread %s stays untitled: %s", thread_id, refusal.message)
                return
            await self.generate(exchange, user_id=user_id, automatic=True)
        except UpstreamError:
            return  # logged as an ErrorLog row; the thread stays untitled
        except Exception:
            logger.exception("naming thread %s failed", thread_id)
        finally:
            self.running.discard(thread_id)

    # -- the steps ------------------------------------------------------------------------

    async def exchange(
        self, thread_id: uuid.UUID, *, first_of: uuid.UUID | None = None
    ) -> Exchange | None:
        """The exchange a title is drawn from: the first completed reply of the branch shown
        (root to `Thread.activeLeaf`) and the question above it. With `first_of` (automatic
        naming): that reply, and None unless the thread is untitled and it is the thread's
        only completed reply. Without: CONFLICT when the branch shown has no completed reply."""
        async with self.sessionmaker() as db:
            thread = await db.get(Thread, thread_id)
            if thread is None or (first_of is not None and thread.title is not None):
                return None
            completed_replies = sa.select(Message).where(
                col(Message.thread_id) == thread_id,
                col(Message.role) == MessageRole.ASSISTANT,
                col(Message.status) == MessageStatus.COMPLETED,
            )
            if first_of is not None:
                replies = (await db.execute(completed_replies.limit(2))).scalars().all()
                if [reply.id for reply in replies] != [first_of]:
                    return None
                reply = replies[0]
            else:
                # What the thread shows, not an older branch switched away from.
                found = (
                    await db.execute(
                        completed_replies.where(
                            tree.on_path_to(thread.active_leaf_id)(tree.messages)
                        )
                        .order_by(col(Message.created_at), col(Message.id))
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if found is None:
                    raise Conflict(NOTHING_TO_NAME)
                reply = found
            # The question it answers: the nearest user message above it on its path.
            question = await db.scalar(
                sa.select(col(Message.content))
                .where(
                    tree.on_path_to(reply.id)(tree.messages),
                    col(Message.role) == MessageRole.USER,
                )
                .order_by(col(Message.created_at).desc(), col(Message.id).desc())
                .limit(1)
            )
        return Exchange(
            thread_id=thread_id,
            project_id=thread.project_id,
            reply_id=reply.id,
            question=question or "",
            answer=reply.content,
        )

    async def check_budgets(self, project_id: uuid.UUID | None, user_id: uuid.UUID | None) -> None:
        """QUOTA_EXCEEDED when the project's or the user's monthly tokens are used up (the
        checks of sendMessage, without its replies in flight: a title is a few dozen tokens)."""
        async with self.sessionmaker() as db:
            await ensure_within_budget(db=db, project_id=project_id)
            user = await db.get(User, user_id) if user_id is not None else None
            if user is not None:
                await ensure_within_user_budget(
                    db=db,
                    user_id=user.id,
                    budget=effective_user_budget(
                        user.monthly_token_budget, self.settings.atlas_user_monthly_tokens
                    ),
                )
            await db.commit()  # gives back the budgets' advisory locks

    async def generate(
        self,
        exchange: Exchange,
        *,
        user_id: uuid.UUID | None,
        automatic: bool,
        actor: Actor | None = None,
    ) -> Thread | None:
        """Call the title model, store the title and its usage row, publish ThreadUpdated.
        None when the thread is gone. UPSTREAM_ERROR (with an ErrorLog row) when the call
        fails or answers nothing."""
        model = self.settings.atlas_title_model
        started = time.monotonic()
        try:
            completion = await self.provider.complete_text(
                TextRequest(
                    model=model,
                    instructions=TITLE_INSTRUCTIONS,
                    content=exchange.prompt(),
                    max_output_tokens=MAX_OUTPUT_TOKENS,
                )
            )
            title = clean_title(completion.text)
            if title is None:
                raise UpstreamFailure(
                    EMPTY_TITLE_ERROR,
                    detail="the title model answered no text",
                    input_tokens=completion.input_tokens,
                    output_tokens=completion.output_tokens,
                )
        except UpstreamFailure as failure:
            await self._failed(exchange, failure, user_id=user_id, latency=started)
            raise UpstreamError(failure.message) from None
        async with self.sessionmaker() as db:
            thread = (
                await db.execute(
                    sa.select(Thread).where(col(Thread.id) == exchange.thread_id).with_for_update()
                )
            ).scalar_one_or_none()
            if thread is None:
                return None
            # Someone named the thread while the model was thinking: their title stays.
            renamed = not (automatic and thread.title is not None)
            if renamed:
                thread.title = title
            db.add(self._usage(exchange, user_id, completion.input_tokens,
                               completion.output_tokens, started, "completed"))  # fmt: skip
            if actor is not None:
                actor.record(
                    db, "thread.title", thread, project_id=thread.project_id,
                    details={"model": model},
                )  # fmt: skip
            await db.flush()
            sequence = None
            # An event number above a running reply's block would make subscribers drop that
            # reply's next events (numbers only go up): then the title is read with the
            # thread, not announced (docs/titles.md).
            if renamed and await running_reply(db, thread.id) is None:
                sequence = await db.scalar(
                    take_one_statement(thread.id).returning(col(Thread.last_event_sequence))
                )
            await db.refresh(thread)
            payload = ThreadPayload.of(thread)
            await db.commit()
        if sequence is not None:
            await self.publish(
                thread.id,
                ThreadUpdated(
                    sequence=sequence,
                    thread_id=thread.id,
                    message_id=exchange.reply_id,
                    thread=payload,
                ),
            )
        return thread

    def _usage(
        self,
        exchange: Exchange,
        user_id: uuid.UUID | None,
        input_tokens: int,
        output_tokens: int,
        started: float,
        status: str,
    ) -> Any:
        return usage_row(
            self.settings,
            endpoint=self.provider.api,
            user_id=user_id,
            project_id=exchange.project_id,
            thread_id=exchange.thread_id,
            message_id=exchange.reply_id,
            model=self.settings.atlas_title_model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=int((time.monotonic() - started) * 1000),
            status=status,
            purpose=UsagePurpose.TITLE,
        )

    async def _failed(
        self,
        exchange: Exchange,
        failure: UpstreamFailure,
        *,
        user_id: uuid.UUID | None,
        latency: float,
    ) -> None:
        """The ErrorLog row of a failed title call, and its usage row when tokens were spent."""
        await record_upstream_failure(
            failure,
            sessionmaker=self.sessionmaker,
            request_id=uuid.uuid4().hex,
            path=f"title/{encode_global_id('Thread', exchange.thread_id)}",
            user_id=user_id,
            details={
                "threadId": str(exchange.thread_id),
                "messageId": str(exchange.reply_id),
                "model": self.settings.atlas_title_model,
                "purpose": UsagePurpose.TITLE.value,
                "userMessage": failure.message,
            },
            policy=ErrorLogPolicy.from_settings(self.settings),
        )
        if failure.input_tokens or failure.output_tokens:
            async with self.sessionmaker() as db:
                db.add(self._usage(exchange, user_id, failure.input_tokens or 0,
                                   failure.output_tokens or 0, latency, "failed"))  # fmt: skip
                await db.commit()


async def generate_thread_title(
    *, titles: TitleWriter, actor: Actor, thread_id: uuid.UUID
) -> Thread:
    """Name the thread again from its first exchange (USE_AI, and the right to rename it:
    its creator while MEMBER+, a project MANAGER+, ADMIN). CONFLICT without a completed reply
    or while it is being named; QUOTA_EXCEEDED past a budget; UPSTREAM_ERROR when the call
    fails (the title stays as it was)."""
    actor.require(PermissionName.USE_AI)
    viewer = actor.viewer_required
    async with titles.sessionmaker() as db:
        await managed_thread(db, viewer, thread_id, action="rename")
    if thread_id in titles.running:
        raise Conflict("This thread is being named already; try again in a moment.")
    titles.running.add(thread_id)
    try:
        exchange = await titles.exchange(thread_id)
        if exchange is None:
            raise NotFound("Thread not found.")  # deleted a moment ago
        await titles.check_budgets(exchange.project_id, viewer.user_id)
        thread = await titles.generate(
            exchange, user_id=viewer.user_id, automatic=False, actor=actor
        )
    finally:
        titles.running.discard(thread_id)
    if thread is None:
        raise NotFound("Thread not found.")
    return thread
