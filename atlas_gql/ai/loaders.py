"""Per-request DataLoaders of the AI domain: one SQL statement per batch (two for pages).
The AI domain owns threads, so a project's page of threads is loaded here too."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.ai import feedback, rules, tree
from atlas_gql.ai.models import (
    Assistant,
    AssociableType,
    File,
    FileAssociation,
    Message,
    Thread,
)
from atlas_gql.ai.threads import THREAD_ORDERING, last_event_sequences
from atlas_gql.auth.rules import viewer_literals
from atlas_gql.auth.viewer import Viewer
from atlas_gql.db.loaders import (
    ReadSessionSource,
    lists_by_key,
    pages_by_parent,
    rows_by_id,
    viewer_keyed,
)
from atlas_gql.db.pagination import Ordering
from atlas_gql.db.session import ReadSession
from atlas_gql.db.tables import table_of

# A thread's messages read oldest to newest (a project's threads: as `threads` lists them).
MESSAGE_ORDERING = Ordering(sort=col(Message.created_at), id=col(Message.id))

FileTarget = tuple[AssociableType, uuid.UUID]

# Assistants by id, without a visibility check (callers check).
assistant_by_id = rows_by_id(Assistant)
# Messages by id, without a visibility check (a rating's reply, read by who may read it).
message_by_id = rows_by_id(Message)


def _on_active_paths(thread_ids: Sequence[uuid.UUID]) -> list[Any]:
    """The messages on the active paths of these threads (paths of different threads are
    disjoint): one recursive CTE for the batch."""
    leaves = sa.select(col(Thread.active_leaf_id)).where(col(Thread.id).in_(list(thread_ids)))
    return [col(Message.id).in_(tree.path_ids(lambda leaf: leaf.c.id.in_(leaves)))]


# A page of each thread's active path: root to active leaf, oldest first (docs/branches.md).
messages_page = pages_by_parent(
    Message,
    parent_column=col(Message.thread_id),
    ordering=MESSAGE_ORDERING,
    where=_on_active_paths,
)
# Each message's siblings (itself included), oldest first.
siblings_by_message = lists_by_key(tree.siblings_of)
# Messages by id (a message's parent, a thread's active leaf: same thread, so visible).
message_by_id = rows_by_id(Message)
# A page of each project's threads (newest first), for Project.threads.
threads_page = pages_by_parent(
    Thread, parent_column=col(Thread.project_id), ordering=THREAD_ORDERING
)


def last_event_sequence_by_thread(db: ReadSessionSource) -> DataLoader[uuid.UUID, int]:
    """Each thread's event cursor (`threads.last_event_sequence_of`); 0 for a missing id."""

    async def load(thread_ids: Sequence[uuid.UUID]) -> list[int]:
        cursors = await last_event_sequences(db(), thread_ids)
        return [cursors.get(thread_id, 0) for thread_id in thread_ids]

    return DataLoader(load_fn=load)


async def _instructions_visible(
    db: ReadSession, viewer: Viewer, assistant_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, bool]:
    table = rules.assistants
    rows = await db.execute(
        sa.select(table.c.id).where(
            table.c.id.in_(list(assistant_ids)),
            rules.assistant_instructions_visible(viewer_literals(viewer), table),
        )
    )
    return dict.fromkeys(rows.scalars(), True)


# Whether the viewer reads each assistant's instructions (`rules.assistant_instructions_
# visible`, the rule the compiled read path applies in its statement).
instructions_visible_by_assistant = viewer_keyed(_instructions_visible, default=False)


def files_by_target(db: ReadSessionSource) -> DataLoader[FileTarget, list[File]]:
    """The files attached to assistants, threads or messages, in attachment order."""

    async def load(targets: Sequence[FileTarget]) -> list[list[File]]:
        conditions = [
            sa.and_(
                col(FileAssociation.associable_type) == kind,
                col(FileAssociation.associable_id).in_(
                    [target_id for target_kind, target_id in targets if target_kind is kind]
                ),
            )
            for kind in {kind for kind, _ in targets}
        ]
        rows = await db().execute(
            sa.select(
                col(FileAssociation.associable_type), col(FileAssociation.associable_id), File
            )
            .join(File, col(File.id) == col(FileAssociation.file_id))
            .where(sa.or_(*conditions))
            .order_by(col(FileAssociation.created_at), col(FileAssociation.id))
        )
        grouped: dict[FileTarget, list[File]] = defaultdict(list)
        for kind, target_id, file in rows.all():
            grouped[(AssociableType(kind), target_id)].append(file)
        return [grouped[target] for target in targets]

    return DataLoader(load_fn=load)


# The viewer's rating of each message (None: not rated, or anonymous).
viewer_rating_by_message = viewer_keyed(feedback.viewer_ratings, default=None)


def rating_counts_by_message(db: ReadSessionSource) -> DataLoader[uuid.UUID, tuple[int, int]]:
    """(up, down) ratings of each message; (0, 0) when it has none."""

    async def load(message_ids: Sequence[uuid.UUID]) -> list[tuple[int, int]]:
        counts = await feedback.rating_counts(db(), message_ids)
        return [counts.get(message_id, (0, 0)) for message_id in message_ids]

    return DataLoader(load_fn=load)


async def _visible_files(
    db: ReadSession, viewer: Viewer, file_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, File]:
    rows = await db.execute(
        sa.select(File).where(
            col(File.id).in_(list(file_ids)),
            rules.file_visible(viewer_literals(viewer), table_of(File)),
        )
    )
    return {file.id: file for file in rows.scalars()}


# Files by id that the viewer may see (`rules.file_visible`); None otherwise (a cited file
# since detached from what the viewer sees, or deleted).
visible_file_by_id = viewer_keyed(_visible_files, default=None)
