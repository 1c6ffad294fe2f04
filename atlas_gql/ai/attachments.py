"""File attachments outlive nothing: FileAssociation is polymorphic (no foreign key to its
target), so whoever deletes an assistant, a thread, a message or a project deletes their
attachments with `delete_attachments`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from atlas_gql.ai.models import AssociableType, FileAssociation


def attached_to(kind: AssociableType, ids: Sequence[uuid.UUID] | sa.Select[Any]) -> Any:
    """The attachments to `kind` objects of `ids` (a list or a subquery), as a SQL condition."""
    return sa.and_(
        col(FileAssociation.associable_type) == kind,
        col(FileAssociation.associable_id).in_(ids),
    )


async def delete_attachments(db: AsyncSession, *conditions: Any) -> None:
    """Delete the attachments matching any of `conditions` (see `attached_to`)."""
    await db.execute(sa.delete(FileAssociation).where(sa.or_(*conditions)))
