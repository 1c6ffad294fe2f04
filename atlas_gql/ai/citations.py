"""A reply's citations as stored with the message (`messages.citations`, JSON): the output
text's annotations, a cited file named by its ATLAS id when ATLAS knows the upload.

One stored object per citation: `kind` (FILE | URL), `fileId` (ATLAS file uuid, or null),
`openaiFileId`, `url`, `title`, `quote`, `startIndex`, `endIndex`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from atlas_gql.ai.models import File
from atlas_gql.ai.tool_items import UpstreamCitation
from atlas_gql.db.session import ReadSession
from atlas_gql.logs.audit import storable_text


async def stored_citations(
    db: ReadSession, citations: list[UpstreamCitation]
) -> list[dict[str, Any]] | None:
    """The JSON to store (None when there are none), cited files resolved in one statement."""
    if not citations:
        return None
    openai_ids = {c.openai_file_id for c in citations if c.openai_file_id}
    files: dict[str, str] = {}
    if openai_ids:
        rows = await db.execute(
            sa.select(col(File.openai_file_id), col(File.id)).where(
                col(File.openai_file_id).in_(openai_ids)
            )
        )
        files = {str(openai_id): str(file_id) for openai_id, file_id in rows.all()}
    return [
        {
            "kind": citation.kind,
            "fileId": files.get(citation.openai_file_id) if citation.openai_file_id else None,
            "openaiFileId": _storable(citation.openai_file_id),
            "url": _storable(citation.url),
            "title": _storable(citation.title),
            "quote": _storable(citation.quote),
            "startIndex": citation.start_index,
            "endIndex": citation.end_index,
        }
        for citation in citations
    ]


def _storable(text: str | None) -> str | None:
    """Upstream text as JSONB takes it: NUL and lone surrogates (a file's passage may hold
    them) replaced by U+FFFD, or the reply's completion would be refused."""
    return storable_text(text) if isinstance(text, str) else None
