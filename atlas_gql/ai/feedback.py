"""Feedback on replies: a thumbs up or down (with an optional comment) per user and reply, and
the list administrators and project managers read to see which assistants or models
disappoint.

Rating: anyone who sees the thread (a project VIEWER too) rates its ASSISTANT messages once
they ended; rating again replaces the viewer's rating, a null rating clears it. Reading the
list: ADMIN reads everything; a project OWNER or MANAGER reads the ratings of replies in their
projects (scoped in SQL: `rules.feedback_visible`); anyone else is FORBIDDEN. Ratings of
personal threads are ADMIN's only."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from pydantic import field_validator
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai import rules
from atlas_gql.ai.messages import get_message
from atlas_gql.ai.models import Message, MessageRating, MessageRole, MessageStatus, Rating, Thread
from atlas_gql.auth.actor import Actor
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.config import TEXT_LIMITS
from atlas_gql.db.inputs import Command, check_length
from atlas_gql.db.pagination import Ordering, Page, PageRequest, paginate
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of
from atlas_gql.errors import BadInput, Conflict, NotFound
from atlas_gql.logs.service import TimeWindow, equal_where_given, require_log_reader

FEEDBACK_ORDERING = Ordering(
    sort=col(MessageRating.created_at), id=col(MessageRating.id), descending=True
)


class RatingSet(Command):
    """rateMessage: `rating` None clears the viewer's rating (and its comment)."""

    message_id: uuid.UUID
    rating: Rating | None
    comment: str | None = None

    @field_validator("comment")
    @classmethod
    def _comment(cls, comment: str | None) -> str | None:
        if comment is None or not comment.strip():
            return None
        check_length(comment, field="comment", limit=TEXT_LIMITS.rating_comment)
        return comment.strip()


@dataclass(frozen=True)
class FeedbackFilter:
    project_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    model: str | None = None
    rating: Rating | None = None
    window: TimeWindow = field(default_factory=TimeWindow)

    def __post_init__(self) -> None:
        check_length(self.model, field="filter.model", limit=TEXT_LIMITS.filter_value)


async def rate_message(*, db: AsyncSession, actor: Actor, data: RatingSet) -> Message:
    """Set (or clear, with rating None) the viewer's rating of a reply they can see. NOT_FOUND
    for a message they cannot see; BAD_USER_INPUT for a message that is not a reply;
    CONFLICT while the reply runs."""
    viewer = actor.viewer_required
    message = await get_message(db=db, viewer=viewer, message_id=data.message_id)
    if message.role is not MessageRole.ASSISTANT:
        raise BadInput("Only replies (ASSISTANT messages) can be rated.", field="messageId")
    if message.status is MessageStatus.IN_PROGRESS:
        raise Conflict("This reply is still in progress; rate it once it has ended.")
    thread = await db.get(Thread, message.thread_id)
    project_id = thread.project_id if thread is not None else None
    ratings = table_of(MessageRating)
    mine = sa.and_(ratings.c.message_id == message.id, ratings.c.user_id == viewer.user_id)
    if data.rating is None:
        await db.execute(sa.delete(ratings).where(mine))
        actor.record(db, "message.unrate", message, project_id=project_id)
    else:
        values = {"rating": data.rating.value, "comment": data.comment}
        await db.execute(
            insert(ratings)
            .values(message_id=message.id, user_id=viewer.user_id, **values)
            .on_conflict_do_update(
                index_elements=[ratings.c.message_id, ratings.c.user_id],
                set_={**values, "updated_at": sa.func.now()},
            )
        )
        actor.record(
            db, "message.rate", message, project_id=project_id,
            details={"rating": data.rating.value, "comment": data.comment is not None},
        )  # fmt: skip
    await db.flush()
    return message


async def viewer_ratings(
    db: ReadSession, viewer: Viewer, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Rating]:
    """The viewer's rating of each message that has one, in one statement."""
    rows = await db.execute(
        sa.select(col(MessageRating.message_id), col(MessageRating.rating)).where(
            col(MessageRating.message_id).in_(list(message_ids)),
            col(MessageRating.user_id) == viewer.user_id,
        )
    )
    return {message_id: Rating(rating) for message_id, rating in rows.all()}


async def rating_counts(
    db: ReadSession, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, int]]:
    """(up, down) counts of each message that has ratings, in one GROUP BY statement."""
    rating = col(MessageRating.rating)
    rows = await db.execute(
        sa.select(
            col(MessageRating.message_id),
            sa.func.count().filter(rating == Rating.UP),
            sa.func.count().filter(rating == Rating.DOWN),
        )
        .where(col(MessageRating.message_id).in_(list(message_ids)))
        .group_by(col(MessageRating.message_id))
    )
    return {message_id: (int(up), int(down)) for message_id, up, down in rows.all()}


def _visible(viewer: Viewer) -> Any:
    """The ratings the viewer may read, as a SQL condition over `message_ratings`."""
    ratings = table_of(MessageRating)
    message, thread = rules.messages.alias(), rules.threads.alias()
    return sa.exists(
        sa.select(sa.literal(1))
        .select_from(message.join(thread, thread.c.id == message.c.thread_id))
        .where(
            message.c.id == ratings.c.message_id,
            rules.feedback_visible(viewer_literals(viewer), thread),
        )
    )


async def list_feedback(
    *, db: ReadSession, actor: Actor, filter: FeedbackFilter, request: PageRequest
) -> Page[MessageRating]:
    """Ratings newest first, scoped in SQL to what the viewer may read (see the module's
    docstring); NOT_FOUND / FORBIDDEN for `projectId` of a project they do not manage."""
    viewer = actor.viewer_required
    await require_log_reader(db, viewer, filter.project_id, what="feedback")
    statement = (
        sa.select(MessageRating)
        .join(Message, col(Message.id) == col(MessageRating.message_id))
        .join(Thread, col(Thread.id) == col(Message.thread_id))
        .where(_visible(viewer))
    )
    statement = statement.where(
        *equal_where_given(
            (col(Thread.project_id), filter.project_id),
            (col(Message.assistant_id), filter.assistant_id),
            (col(Message.model), filter.model),
            (col(MessageRating.rating), filter.rating),
        ),
        *filter.window.conditions(col(MessageRating.created_at)),
    )
    return await paginate(db, statement, ordering=FEEDBACK_ORDERING, request=request)


async def get_feedback(*, db: ReadSession, viewer: Viewer, feedback_id: uuid.UUID) -> MessageRating:
    """One rating the viewer may read in `feedback`; NOT_FOUND otherwise."""
    row = (
        await db.execute(
            sa.select(MessageRating).where(col(MessageRating.id) == feedback_id, _visible(viewer))
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("Feedback not found.")
    return row
