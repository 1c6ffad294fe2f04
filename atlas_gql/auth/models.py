"""Users, their sessions and refresh tokens, roles and permissions."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

from atlas_gql.db.base import (
    Created,
    Timestamped,
    created_at,
    enum_column,
    foreign_key,
    optional_timestamp,
)


class RoleName(enum.StrEnum):
    ADMIN = "ADMIN"
    USER = "USER"
    PROJECT_MANAGER = "PROJECT_MANAGER"


class PermissionName(enum.StrEnum):
    CREATE_PROJECT = "CREATE_PROJECT"
    MANAGE_USERS = "MANAGE_USERS"
    USE_AI = "USE_AI"


class ApiKeyScope(enum.StrEnum):
    """What a personal API key may do, on top of what its user may do (docs/api-keys.md)."""

    READ = "READ"
    WRITE = "WRITE"
    USE_AI = "USE_AI"
    ADMIN = "ADMIN"


class User(Timestamped, table=True):
    __tablename__ = "users"
    __table_args__ = (
        # Case-insensitive uniqueness: Foo@x.io and foo@x.io are one account.
        sa.Index("uq_users_email_lower", sa.text("lower(email)"), unique=True),
        sa.CheckConstraint("monthly_token_budget >= 0", name="monthly_token_budget_not_negative"),
        sa.CheckConstraint("messages_per_minute >= 1", name="messages_per_minute_positive"),
    )

    email: str = Field(max_length=320)
    password_hash: str = Field(max_length=100)
    name: str | None = Field(default=None, max_length=200)
    is_active: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    last_login_at: datetime | None = optional_timestamp()
    # When an administrator approved the account (or it was created approved); NULL while a
    # registration awaits approval (ATLAS_REGISTRATION=approval): it holds no role until then.
    approved_at: datetime | None = optional_timestamp()
    # The user's own limits, set by an administrator; NULL: the setting's default
    # (ATLAS_USER_MONTHLY_TOKENS, ATLAS_USER_MESSAGES_PER_MINUTE).
    monthly_token_budget: int | None = Field(default=None, sa_type=sa.BigInteger)
    messages_per_minute: int | None = None


class RateLimitBucket(SQLModel, table=True):
    """A token bucket (auth/buckets.py): `tokens` left at `updated_at`, refilled with time. A
    bucket whose row is missing is full."""

    __tablename__ = "rate_limit_buckets"

    key: str = Field(primary_key=True, max_length=200)
    tokens: float = Field(sa_type=sa.Double)
    updated_at: datetime = created_at()


class Session(Created, table=True):
    """A signed-in device. Access tokens carry its id (`sid`); revoking it ends them at once."""

    __tablename__ = "sessions"

    user_id: uuid.UUID = foreign_key("users.id")
    # SHA-256 of the session's secret; never stored in clear.
    token_hash: str = Field(max_length=64, unique=True)
    user_agent: str | None = Field(default=None, max_length=500)
    ip_address: str | None = Field(default=None, max_length=64)
    last_used_at: datetime | None = optional_timestamp()
    expires_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    revoked_at: datetime | None = optional_timestamp()
    revoked_reason: str | None = Field(default=None, max_length=64)


class RefreshToken(Created, table=True):
    """One link of a session's rotation chain: single-use, stored as a SHA-256 hash."""

    __tablename__ = "refresh_tokens"

    session_id: uuid.UUID = foreign_key("sessions.id")
    user_id: uuid.UUID = foreign_key("users.id")
    token_hash: str = Field(max_length=64, unique=True)
    expires_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    used_at: datetime | None = optional_timestamp()
    revoked_at: datetime | None = optional_timestamp()


class Role(Created, table=True):
    __tablename__ = "roles"

    name: RoleName = enum_column(RoleName, "role_name", unique=True)
    description: str | None = Field(default=None, max_length=500)


class Permission(Created, table=True):
    __tablename__ = "permissions"

    name: PermissionName = enum_column(PermissionName, "permission_name", unique=True)
    description: str | None = Field(default=None, max_length=500)


class UserRole(Created, table=True):
    __tablename__ = "user_roles"
    __table_args__ = (sa.UniqueConstraint("user_id", "role_id"),)

    # Indexed by the unique (user_id, role_id) it leads.
    user_id: uuid.UUID = foreign_key("users.id", index=False)
    role_id: uuid.UUID = foreign_key("roles.id")


class RolePermission(Created, table=True):
    __tablename__ = "role_permissions"
    __table_args__ = (sa.UniqueConstraint("role_id", "permission_id"),)

    role_id: uuid.UUID = foreign_key("roles.id", index=False)
    permission_id: uuid.UUID = foreign_key("permissions.id")


class ApiKey(Created, table=True):
    """A personal API key (`atlas_sk_...`): acts as its user, narrowed by its scopes, until
    revoked or expired. Only the SHA-256 of the secret is stored; `prefix` is what lists show."""

    __tablename__ = "api_keys"
    __table_args__ = (
        sa.CheckConstraint(
            "scopes <@ ARRAY['READ', 'WRITE', 'USE_AI', 'ADMIN']::varchar[]",
            name="scopes_known",
        ),
        # The owner's keys, newest first (`apiKeys`).
        sa.Index("ix_api_keys_user_id_created_at", "user_id", "created_at", "id"),
    )

    # Indexed by (user_id, created_at, id).
    user_id: uuid.UUID = foreign_key("users.id", index=False)
    name: str = Field(max_length=100)
    # The first characters of the secret (`atlas_sk_` and 8 more): shown, never enough to use.
    prefix: str = Field(max_length=32)
    # SHA-256 hex of the whole secret; the lookup key of every request.
    secret_hash: str = Field(max_length=64, unique=True)
    scopes: list[str] = Field(sa_type=postgresql.ARRAY(sa.String(16)))
    expires_at: datetime | None = optional_timestamp()
    # Updated at most once a minute (ATLAS_API_KEY_LAST_USED_INTERVAL), not on every request.
    last_used_at: datetime | None = optional_timestamp()
    revoked_at: datetime | None = optional_timestamp()
