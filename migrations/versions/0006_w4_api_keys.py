"""personal API keys (issue 15 part 5): api_keys, and api_usage_logs.api_key_id attributing
AI calls to the key they were made with

Revision ID: 0006_w4
Revises: 0006_w2
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_w4"
down_revision: str | None = "0006_w2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.String(length=16)), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "scopes <@ ARRAY['READ', 'WRITE', 'USE_AI', 'ADMIN']::varchar[]",
            name=op.f("ck_api_keys_scopes_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_keys_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_index(
        "ix_api_keys_user_id_created_at", "api_keys", ["user_id", "created_at", "id"], unique=False
    )
    op.add_column("api_usage_logs", sa.Column("api_key_id", sa.Uuid(), nullable=True))
    op.create_index(
        op.f("ix_api_usage_logs_api_key_id"), "api_usage_logs", ["api_key_id"], unique=False
    )
    op.create_foreign_key(
        op.f("fk_api_usage_logs_api_key_id_api_keys"),
        "api_usage_logs",
        "api_keys",
        ["api_key_id"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("fk_api_usage_logs_api_key_id_api_keys"), "api_usage_logs", type_="foreignkey"
    )
    op.drop_index(op.f("ix_api_usage_logs_api_key_id"), table_name="api_usage_logs")
    op.drop_column("api_usage_logs", "api_key_id")
    op.drop_index("ix_api_keys_user_id_created_at", table_name="api_keys")
    op.drop_table("api_keys")
