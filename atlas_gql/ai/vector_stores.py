"""OpenAI vector stores, the knowledge behind the file search tool: one store per assistant
and per thread with files (ai/knowledge.py keeps them in step with the attachments).

Calls go through the SDK (`client.vector_stores`, `client.vector_stores.files`) and fail as
every upstream call does, with an `UpstreamFailure` (readable message, scrubbed detail)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import openai
from openai import AsyncOpenAI

from atlas_gql.ai.provider import Provider, UpstreamFailure, sdk_failures

# What users read when the provider could not index a file (its own words go to the ErrorLog).
INDEX_FAILED_ERROR = "The AI provider could not index the file for file search."


@dataclass(frozen=True)
class IndexState:
    """A file's state in a store: `in_progress`, `completed`, `failed` or `cancelled`, and
    the provider's account of a failure (for the ErrorLog)."""

    status: str
    error: str | None = None


class VectorStores:
    """The vector store calls ATLAS makes."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    @classmethod
    def of(cls, provider: Provider) -> VectorStores | None:
        """The provider's vector stores; None for an adapter without built-in tools."""
        return cls(provider.client) if provider.supports_tools else None

    async def create(self, *, name: str, owner: str) -> str:
        """A new empty store; its id (`vs_...`)."""
        with sdk_failures():
            store = await self.client.vector_stores.create(name=name, metadata={"atlas": owner})
        return store.id

    async def add_file(self, store_id: str, file_id: str) -> IndexState:
        """Add an uploaded file to a store (indexing starts upstream)."""
        with sdk_failures():
            added = await self.client.vector_stores.files.create(
                vector_store_id=store_id, file_id=file_id
            )
        return IndexState(added.status, added.last_error.message if added.last_error else None)

    async def file_state(self, store_id: str, file_id: str) -> IndexState:
        with sdk_failures():
            state = await self.client.vector_stores.files.retrieve(
                file_id, vector_store_id=store_id
            )
        return IndexState(state.status, state.last_error.message if state.last_error else None)

    async def remove_file(self, store_id: str, file_id: str) -> None:
        """Take a file out of a store (the uploaded file stays); one already gone is fine."""
        with sdk_failures(), contextlib.suppress(openai.NotFoundError):
            await self.client.vector_stores.files.delete(file_id, vector_store_id=store_id)

    async def usage_bytes(self, store_id: str) -> int:
        """The bytes a store holds (what the provider bills per GB-day)."""
        with sdk_failures():
            store = await self.client.vector_stores.retrieve(store_id)
        return store.usage_bytes

    async def delete(self, store_id: str) -> None:
        """Delete a store (its files stay uploaded); one already gone is fine."""
        with sdk_failures(), contextlib.suppress(openai.NotFoundError):
            await self.client.vector_stores.delete(store_id)


__all__ = ["INDEX_FAILED_ERROR", "IndexState", "UpstreamFailure", "VectorStores"]
