"""Assistants, threads (OpenAI conversations), messages, files and their associations."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlmodel import Field

from atlas_gql.db.base import (
    Created,
    Named,
    Timestamped,
    enum_column,
    foreign_key,
    jsonb_column,
    optional_timestamp,
)
from atlas_gql.db.tables import table_of


class MessageRole(enum.StrEnum):
    USER = "USER"
    ASSISTANT = "ASSISTANT"
    SYSTEM = "SYSTEM"


class MessageStatus(enum.StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    INCOMPLETE = "INCOMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Rating(enum.StrEnum):
    UP = "UP"
    DOWN = "DOWN"


class AssistantTool(enum.StrEnum):
    """A built-in tool of the Responses API an assistant may use (stored in `tools`)."""

    FILE_SEARCH = "FILE_SEARCH"
    WEB_SEARCH = "WEB_SEARCH"


class FileIndexStatus(enum.StrEnum):
    """Where a file is in its indexing for file search (OpenAI vector stores)."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class AssociableType(enum.StrEnum):
    ASSISTANT = "ASSISTANT"
    THREAD = "THREAD"
    MESSAGE = "MESSAGE"


class Assistant(Named, table=True):
    __tablename__ = "assistants"

    model: str = Field(max_length=100)
    instructions: str | None = Field(default=None, sa_type=sa.Text)
    temperature: float | None = Field(default=None)
    # The enabled tools: a JSON list of AssistantTool names (NULL: none).
    tools: Any = jsonb_column()
    # The OpenAI vector store (`vs_...`) holding the assistant's files for file search;
    # created with the first attached file, deleted with the assistant (ai/knowledge.py).
    vector_store_id: str | None = Field(default=None, max_length=100)
    # Optional: an assistant may belong to a project, or be personal to its creator.
    project_id: uuid.UUID | None = foreign_key("projects.id", nullable=True)
    created_by_id: uuid.UUID = foreign_key("users.id", ondelete="RESTRICT")


class Thread(Timestamped, table=True):
    __tablename__ = "threads"

    title: str | None = Field(default=None, max_length=300)
    project_id: uuid.UUID | None = foreign_key("projects.id", nullable=True)
    assistant_id: uuid.UUID | None = foreign_key(
        "assistants.id", nullable=True, ondelete="SET NULL"
    )
    created_by_id: uuid.UUID = foreign_key("users.id", ondelete="RESTRICT")
    # The OpenAI conversation (`conv_...`) this thread maps to.
    openai_thread_id: str | None = Field(default=None, max_length=100, unique=True)
    # Last sequence number handed to a threadEvents event; events are numbered per thread.
    last_event_sequence: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Pinned threads are listed with `threads(filter: {pinned: true})`; archived ones (a time,
    # NULL when not archived) are hidden from `threads` by default and refuse new messages.
    pinned: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    archived_at: datetime | None = optional_timestamp()
    # The OpenAI vector store of the thread's own files (ai/knowledge.py); NULL until a file
    # is attached to the thread.
    vector_store_id: str | None = Field(default=None, max_length=100)
    # The message tree (docs/branches.md): the leaf of the branch being shown (`messages` is
    # the path from the root to it; NULL while the thread has no message), and the message
    # the OpenAI conversation's items end with (a reply whose user message follows it uses the
    # conversation; any other reply sends its branch as `input`). No foreign keys: threads and
    # messages would reference each other, and a message is deleted only with its thread.
    active_leaf_id: uuid.UUID | None = Field(default=None)
    conversation_leaf_id: uuid.UUID | None = Field(default=None)


class Message(Created, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        sa.Index("ix_messages_thread_id_created_at", "thread_id", "created_at", "id"),
        # A message's children (its replies, or the alternatives after it), oldest first.
        sa.Index("ix_messages_parent_id_created_at", "parent_id", "created_at", "id"),
        # The recovery sweep looks for running replies only (a few rows, however many
        # messages there are).
        sa.Index(
            "ix_messages_in_progress_heartbeat_at",
            "heartbeat_at",
            postgresql_where=sa.text("status = 'IN_PROGRESS'"),
        ),
    )

    # Indexed by (thread_id, created_at, id), which also serves the thread's message list.
    thread_id: uuid.UUID = foreign_key("threads.id", index=False)
    # The message this one follows (NULL for a root): a thread is a tree whose siblings are
    # alternatives (a regenerated reply, an edited question). A child is always created after
    # its parent, so a path read by (created_at, id) is in tree order. Indexed by
    # (parent_id, created_at, id).
    parent_id: uuid.UUID | None = foreign_key("messages.id", nullable=True, index=False)
    # A USER message: its author. An ASSISTANT message: who asked for the reply (its sender,
    # who may cancel it); the reply's author is `assistant_id`.
    user_id: uuid.UUID | None = foreign_key("users.id", nullable=True, ondelete="SET NULL")
    # An ASSISTANT message: the assistant that wrote it (NULL once that assistant is deleted).
    assistant_id: uuid.UUID | None = foreign_key(
        "assistants.id", nullable=True, ondelete="SET NULL"
    )
    role: MessageRole = enum_column(MessageRole, "message_role")
    content: str = Field(default="", sa_type=sa.Text)
    status: MessageStatus = enum_column(MessageStatus, "message_status")
    openai_message_id: str | None = Field(default=None, max_length=100, unique=True)
    openai_response_id: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=100)
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    completed_at: datetime | None = optional_timestamp()
    # A running reply's liveness: its worker touches it every few seconds (see recovery.py).
    heartbeat_at: datetime | None = optional_timestamp()
    # The worker running the reply (`AIRuntime.worker_id`); every write of the reply's worker
    # is conditional on it, so a worker that lost the reply to another one stops. NULL: a
    # background reply released by a worker that shut down, to be resumed at once.
    reply_worker_id: uuid.UUID | None = Field(default=None)
    # Background replies only (resumable): the upstream `sequence_number` of the last event
    # whose text is in `content` (saved with it, atomically: a resumed stream starts after
    # it), and the offset of the reply's event numbers (a delta's `sequence` is
    # `event_sequence_base + its upstream sequence_number`, so a delta re-read after a resume
    # gets the number it had, and subscribers drop it as already seen).
    upstream_sequence: int | None = Field(default=None)
    event_sequence_base: int | None = Field(default=None)
    # A running reply: the number of the last thread event whose effect `content` holds (its
    # MessageCreated, then the last delta of each checkpoint), written with the text in one
    # row write. `Thread.lastEventSequence` reads it, so `messages` plus
    # `threadEvents(afterSequence: lastEventSequence)` is the whole text, once.
    content_sequence: int | None = Field(default=None)
    # A reply's citations (the output text's annotations), a JSON list of `ai.citations`
    # objects, stored with its final state; NULL: none.
    citations: Any = jsonb_column()


class MessageRating(Timestamped, table=True):
    """A user's rating of a reply (thumbs up or down, with an optional comment): one per user
    and message, changed in place (`updated_at`), deleted when cleared."""

    __tablename__ = "message_ratings"
    __table_args__ = (
        sa.UniqueConstraint("message_id", "user_id"),
        # `feedback` lists newest first.
        sa.Index("ix_message_ratings_created_at_id", "created_at", "id"),
    )

    # Indexed by the unique (message_id, user_id), which also serves the per-message counts.
    message_id: uuid.UUID = foreign_key("messages.id", index=False)
    user_id: uuid.UUID = foreign_key("users.id")
    rating: Rating = enum_column(Rating, "rating")
    comment: str | None = Field(default=None, sa_type=sa.Text)


# Full-text search over messages (docs/search.md): the text search configuration, and how much
# of a message is indexed (a tsvector holds at most 1 MB; the first 100,000 characters stay far
# below it whatever the text, so no reply can fail its write on the index).
SEARCH_CONFIG = "english"
SEARCH_INDEXED_CHARS = 100_000


def search_document(content: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """The part of a message's text that is indexed (and that snippets are cut from)."""
    return sa.func.left(content, SEARCH_INDEXED_CHARS)


# `messages.search_vector`: generated by PostgreSQL (STORED) from `content`, NULL while a reply
# streams (its text changes at every checkpoint: no index churn, and a partial reply is not a
# search hit until it ends), with a GIN index. The table declares it (Alembic's autogenerate
# agrees with the migration; the search's SQL names it) but the `Message` entity does not map
# it: no message read carries a tsvector, no write sends one.
MESSAGE_SEARCH_VECTOR = sa.Column(
    "search_vector",
    TSVECTOR,
    sa.Computed(
        f"CASE WHEN status = 'IN_PROGRESS' THEN NULL "
        f"ELSE to_tsvector('{SEARCH_CONFIG}'::regconfig, left(content, {SEARCH_INDEXED_CHARS})) "
        f"END",
        persisted=True,
    ),
    nullable=True,
)
table_of(Message).append_column(MESSAGE_SEARCH_VECTOR)
sa.Index("ix_messages_search_vector", MESSAGE_SEARCH_VECTOR, postgresql_using="gin")


class File(Created, table=True):
    __tablename__ = "files"

    filename: str = Field(max_length=255)
    bytes: int
    mime_type: str | None = Field(default=None, max_length=255)
    purpose: str = Field(default="user_data", max_length=32)
    openai_file_id: str | None = Field(default=None, max_length=100, unique=True)
    uploaded_by_id: uuid.UUID = foreign_key("users.id", ondelete="RESTRICT")
    # Indexing for file search (a vector store of an assistant or thread it is attached to):
    # NULL when never indexed; the latest outcome otherwise (ai/knowledge.py).
    index_status: FileIndexStatus | None = enum_column(
        FileIndexStatus, "file_index_status", default=None, nullable=True
    )
    index_error: str | None = Field(default=None, sa_type=sa.Text)


class FileAssociation(Created, table=True):
    """Attaches a File to an Assistant, a Thread or a Message (a polymorphic link)."""

    __tablename__ = "file_associations"
    __table_args__ = (
        sa.UniqueConstraint("file_id", "associable_type", "associable_id"),
        sa.Index("ix_file_associations_associable", "associable_type", "associable_id"),
    )

    file_id: uuid.UUID = foreign_key("files.id", index=False)
    associable_type: AssociableType = enum_column(AssociableType, "associable_type")
    associable_id: uuid.UUID
