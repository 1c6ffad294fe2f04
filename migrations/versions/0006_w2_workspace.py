"""workspace features of issue 15 (parts 2, 3, 7): threads pinned and archived, ratings of
replies (message_ratings), what each model call was for (api_usage_logs.purpose: REPLY or
TITLE)

Revision ID: 0006_w2
Revises: 0005_abuse_user_limits
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_w2"
down_revision: str | None = "0005_abuse_user_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "threads",
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("threads", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "api_usage_logs",
        sa.Column("purpose", sa.String(length=32), server_default="REPLY", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_api_usage_logs_usage_purpose"),
        "api_usage_logs",
        "purpose IN ('REPLY', 'TITLE')",
    )
    op.create_table(
        "message_ratings",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "rating",
            sa.Enum("UP", "DOWN", name="rating", native_enum=False, create_constraint=True,
                    length=32),
            nullable=False,
        ),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"],
            name=op.f("fk_message_ratings_message_id_messages"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"],
            name=op.f("fk_message_ratings_user_id_users"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_ratings")),
        sa.UniqueConstraint(
            "message_id", "user_id", name=op.f("uq_message_ratings_message_id_user_id")
        ),
    )  # fmt: skip
    op.create_index(
        "ix_message_ratings_created_at_id", "message_ratings", ["created_at", "id"], unique=False
    )
    op.create_index(
        op.f("ix_message_ratings_user_id"), "message_ratings", ["user_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("message_ratings")
    op.drop_column("api_usage_logs", "purpose")
    op.drop_column("threads", "archived_at")
    op.drop_column("threads", "pinned")
