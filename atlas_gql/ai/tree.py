"""The message tree as SQL (docs/branches.md): the path from a leaf up to its root, a
message's siblings, the newest leaf under a message. One definition for the services, the
loaders and the compiled read path (`Thread.messages` is the active path on both).

A child is always stored after its parent, so a path read by (created_at, id) is in tree
order, and keyset pages over it work as over any list."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from atlas_gql.ai.models import Message
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of

messages = table_of(Message)

# How deep a path may be walked: a guard against a cycle in bad data, far above any thread.
MAX_DEPTH = 100_000


def path_ids(start: Callable[[sa.FromClause], Any]) -> sa.Select[Any]:
    """The ids of the messages on the paths from the messages where `start(row)` holds up to
    their roots (those messages included), as a recursive CTE nested in the statement, so
    `start` may refer to an outer row (the compiled path's thread): `id IN path_ids(...)`."""
    first = messages.alias("path_leaf")
    path = (
        sa.select(first.c.id, first.c.parent_id, sa.literal(1).label("depth"))
        .where(start(first))
        .correlate_except(first)
        .cte("message_path", recursive=True, nesting=True)
    )
    step = messages.alias("path_step")
    path = path.union_all(
        sa.select(step.c.id, step.c.parent_id, (path.c.depth + 1).label("depth")).where(
            step.c.id == path.c.parent_id, path.c.depth < MAX_DEPTH
        )
    )
    return sa.select(path.c.id)


def on_path_to(leaf_id: Any) -> Callable[[sa.FromClause], Any]:
    """A condition on `messages` rows: on the path from the root to `leaf_id` (a column or a
    value; NULL selects nothing)."""
    return lambda message: message.c.id.in_(path_ids(lambda leaf: leaf.c.id == leaf_id))


async def path_to(db: ReadSession, leaf_id: uuid.UUID, *, limit: int) -> list[Message]:
    """The last `limit` messages of the path from the root to `leaf_id`, oldest first."""
    rows = await db.execute(
        sa.select(Message)
        .where(on_path_to(leaf_id)(messages))
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(limit)
    )
    found = list(rows.scalars())
    found.reverse()
    return found


def is_sibling(message: sa.FromClause, other: sa.FromClause) -> Any:
    """`other` has the same parent as `message` in the same thread (`message` itself
    included; the roots of a thread are siblings)."""
    return sa.and_(
        other.c.thread_id == message.c.thread_id,
        sa.or_(
            other.c.parent_id == message.c.parent_id,
            sa.and_(other.c.parent_id.is_(None), message.c.parent_id.is_(None)),
        ),
    )


def siblings_of(message_ids: Sequence[uuid.UUID]) -> sa.Select[Any]:
    """(message id, sibling) rows: each message's siblings (`is_sibling`), oldest first."""
    asked = messages.alias("asked")
    return (
        sa.select(asked.c.id, Message)
        .join(asked, is_sibling(asked, messages))
        .where(asked.c.id.in_(list(message_ids)))
        .order_by(messages.c.created_at, messages.c.id)
    )


async def newest_leaf_under(db: ReadSession, message_id: uuid.UUID) -> uuid.UUID:
    """The newest leaf among `message_id` and its descendants (itself when it has none)."""
    below = (
        sa.select(messages.c.id, messages.c.created_at)
        .where(messages.c.id == message_id)
        .cte("subtree", recursive=True)
    )
    child = messages.alias("subtree_child")
    below = below.union_all(
        sa.select(child.c.id, child.c.created_at).where(child.c.parent_id == below.c.id)
    )
    has_child = sa.exists().where(messages.c.parent_id == below.c.id)
    leaf = await db.scalar(
        sa.select(below.c.id)
        .where(~has_child)
        .order_by(below.c.created_at.desc(), below.c.id.desc())
        .limit(1)
    )
    return leaf if leaf is not None else message_id
