"""Per-request DataLoaders of the AI domain: one SQL statement per batch (two for pages)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import col
from strawberry.dataloader import DataLoader

from atlas_gql.ai.models import Assistant, AssociableType, File, FileAssociation, Message
from atlas_gql.graph.pagination import Ordering, Page, paginate_by_parent
from atlas_gql.graph.relay import PageRequest

if TYPE_CHECKING:
    from atlas_gql.graph.context import Context


# A thread's messages read oldest to newest.
MESSAGE_ORDERING = Ordering(sort=col(Message.created_at), id=col(Message.id))

MessagePageKey = tuple[uuid.UUID, PageRequest]
FileTarget = tuple[AssociableType, uuid.UUID]


def assistant_by_id(context: Context) -> DataLoader[uuid.UUID, Assistant | None]:
    """Assistants by id, without a visibility check (callers check)."""

    async def load(ids: Sequence[uuid.UUID]) -> list[Assistant | None]:
        rows = await context.db.execute(sa.select(Assistant).where(col(Assistant.id).in_(ids)))
        by_id = {assistant.id: assistant for assistant in rows.scalars()}
        return [by_id.get(assistant_id) for assistant_id in ids]

    return DataLoader(load_fn=load)


def messages_page(context: Context) -> DataLoader[MessagePageKey, Page[Message]]:
    """A page of each thread's messages (oldest first); one batch per page request."""

    async def load(keys: Sequence[MessagePageKey]) -> list[Page[Message]]:
        by_request: dict[PageRequest, list[uuid.UUID]] = defaultdict(list)
        for thread_id, request in keys:
            by_request[request].append(thread_id)
        pages: dict[MessagePageKey, Page[Message]] = {}
        for request, thread_ids in by_request.items():
            result = await paginate_by_parent(
                context.db,
                Message,
                parent_column=col(Message.thread_id),
                parent_ids=thread_ids,
                ordering=MESSAGE_ORDERING,
                request=request,
            )
            for thread_id, page in result.items():
                pages[(thread_id, request)] = page
        return [pages[key] for key in keys]

    return DataLoader(load_fn=load)


def files_by_target(context: Context) -> DataLoader[FileTarget, list[File]]:
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
        rows = await context.db.execute(
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
