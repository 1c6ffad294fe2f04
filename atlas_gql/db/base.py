"""One MetaData with a naming convention, and the column helpers every table shares."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata = SQLModel.metadata


def uuid_pk() -> Any:
    """A UUID primary key, generated in Python (and by the database for raw inserts)."""
    return Field(
        default_factory=uuid.uuid4,
        primary_key=True,
        sa_column_kwargs={"server_default": sa.text("gen_random_uuid()")},
    )


def created_at() -> Any:
    """`timestamptz NOT NULL DEFAULT now()`."""
    return Field(
        default=None,
        sa_type=sa.DateTime(timezone=True),
        sa_column_kwargs={"server_default": sa.func.now(), "nullable": False},
    )


def updated_at() -> Any:
    """Like `created_at`, and bumped by SQLAlchemy on every UPDATE through the ORM."""
    return Field(
        default=None,
        sa_type=sa.DateTime(timezone=True),
        sa_column_kwargs={
            "server_default": sa.func.now(),
            "onupdate": sa.func.now(),
            "nullable": False,
        },
    )


def optional_timestamp(*, index: bool = False) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=True, index=index)


def foreign_key(
    target: str, *, nullable: bool = False, ondelete: str = "CASCADE", index: bool = True
) -> Any:
    """A UUID foreign key with its own index (every foreign key is indexed)."""
    return Field(
        default=None if nullable else ...,
        nullable=nullable,
        sa_type=sa.Uuid,  # type: ignore[call-overload]
        foreign_key=target,
        ondelete=ondelete,
        index=index,
    )


def enum_column(enum_type: type[enum.Enum], name: str, **kwargs: Any) -> Any:
    """An enum stored as text with a CHECK constraint (no PostgreSQL enum types to migrate)."""
    return Field(
        sa_type=sa.Enum(
            enum_type,
            name=name,
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda members: [member.value for member in members],
            validate_strings=True,
        ),
        **kwargs,
    )


def jsonb_column(*, nullable: bool = True, **kwargs: Any) -> Any:
    from sqlalchemy.dialects.postgresql import JSONB

    return Field(default=None, sa_type=JSONB, nullable=nullable, **kwargs)


class Created(SQLModel):
    """A row with a UUID id and the time it was created (set by the database): the columns
    nearly every table starts with."""

    id: uuid.UUID = uuid_pk()
    created_at: datetime = created_at()


class Timestamped(Created):
    """A `Created` row that also records when it last changed (`updated_at`)."""

    updated_at: datetime = updated_at()


class Named(Timestamped):
    """A `Timestamped` row its users name and may describe (assistants, projects): a name of
    up to 200 characters and an optional free-text description."""

    name: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_type=sa.Text)
