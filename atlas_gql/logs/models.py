"""Activity, API usage and error logs. Rows outlive the users and projects they mention."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field

from atlas_gql.db.base import Created, enum_column, foreign_key, jsonb_column


class ErrorSource(enum.StrEnum):
    GRAPHQL = "GRAPHQL"
    UPSTREAM = "UPSTREAM"
    DATABASE = "DATABASE"
    BACKGROUND = "BACKGROUND"


class UsagePurpose(enum.StrEnum):
    """What a model call was for: a reply, or a thread's title; STORAGE rows are the daily
    vector-store storage of file search (ai/storage.py), not model calls."""

    REPLY = "REPLY"
    TITLE = "TITLE"
    STORAGE = "STORAGE"


class ActivityLog(Created, table=True):
    __tablename__ = "activity_logs"
    __table_args__ = (sa.Index("ix_activity_logs_created_at_id", "created_at", "id"),)

    user_id: uuid.UUID | None = foreign_key("users.id", nullable=True, ondelete="SET NULL")
    project_id: uuid.UUID | None = foreign_key("projects.id", nullable=True, ondelete="SET NULL")
    action: str = Field(max_length=64, index=True)
    entity_type: str | None = Field(default=None, max_length=64)
    entity_id: str | None = Field(default=None, max_length=64)
    ip_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=500)
    details: Any = jsonb_column()


class ApiUsageLog(Created, table=True):
    __tablename__ = "api_usage_logs"
    __table_args__ = (sa.Index("ix_api_usage_logs_created_at_id", "created_at", "id"),)

    user_id: uuid.UUID | None = foreign_key("users.id", nullable=True, ondelete="SET NULL")
    project_id: uuid.UUID | None = foreign_key("projects.id", nullable=True, ondelete="SET NULL")
    thread_id: uuid.UUID | None = foreign_key("threads.id", nullable=True, ondelete="SET NULL")
    message_id: uuid.UUID | None = foreign_key("messages.id", nullable=True, ondelete="SET NULL")
    # The personal API key the call was made with; null for a signed-in session.
    api_key_id: uuid.UUID | None = foreign_key("api_keys.id", nullable=True, ondelete="SET NULL")
    provider: str = Field(default="openai", max_length=32)
    endpoint: str = Field(default="responses", max_length=64)
    model: str = Field(max_length=100)
    input_tokens: int = Field(default=0)
    output_tokens: int = Field(default=0)
    latency_ms: int | None = None
    cost_usd: Decimal = Field(
        default=Decimal(0),
        sa_type=sa.Numeric(14, 6),
        sa_column_kwargs={"server_default": "0"},
    )
    status: str = Field(default="completed", max_length=32)
    purpose: UsagePurpose = enum_column(
        UsagePurpose,
        "usage_purpose",
        default=UsagePurpose.REPLY,
        sa_column_kwargs={"server_default": UsagePurpose.REPLY.value},
    )
    # Built-in tool calls of the reply (issue 16), priced per call; `tool_cost_usd` is their
    # part of `cost_usd` (which is tokens plus tools).
    file_search_calls: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    web_search_calls: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    tool_cost_usd: Decimal = Field(
        default=Decimal(0),
        sa_type=sa.Numeric(14, 6),
        sa_column_kwargs={"server_default": "0"},
    )


class ErrorLog(Created, table=True):
    """One kind of error (its fingerprint) in one time window: the first occurrence's details,
    how many there were (`count`) and the last one's time (logs/audit.py `record_error`)."""

    __tablename__ = "error_logs"
    __table_args__ = (
        sa.Index("ix_error_logs_created_at_id", "created_at", "id"),
        # The upsert's key; window_start first, so a window's rows are found by it too.
        sa.UniqueConstraint("window_start", "fingerprint"),
        sa.CheckConstraint("count >= 1", name="count_positive"),
    )

    # The `extensions.requestId` a client saw; the key an administrator searches by.
    request_id: str = Field(max_length=64, index=True)
    source: ErrorSource = enum_column(ErrorSource, "error_source")
    error_type: str = Field(max_length=200)
    message: str = Field(sa_type=sa.Text)
    stack: str | None = Field(default=None, sa_type=sa.Text)
    operation_name: str | None = Field(default=None, max_length=200)
    path: str | None = Field(default=None, max_length=500)
    user_id: uuid.UUID | None = foreign_key("users.id", nullable=True, ondelete="SET NULL")
    upstream_status: int | None = None
    upstream_request_id: str | None = Field(default=None, max_length=200)
    details: Any = jsonb_column()
    # sha256 of (source, code, path, exception type) or of an overflow bucket; see audit.py.
    fingerprint: str = Field(max_length=64)
    window_start: datetime = Field(sa_type=sa.DateTime(timezone=True))
    count: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    last_seen_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
