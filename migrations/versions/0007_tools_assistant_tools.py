"""assistant tools (issue 16): vector stores of assistants and threads, files' indexing
state, messages' citations, tool calls on usage rows

Revision ID: 0007_tools
Revises: 0006_w4
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_tools"
down_revision: str | None = "0006_w4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("assistants", sa.Column("vector_store_id", sa.String(length=100), nullable=True))
    op.add_column("threads", sa.Column("vector_store_id", sa.String(length=100), nullable=True))
    op.add_column(
        "messages",
        sa.Column("citations", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "files",
        sa.Column(
            "index_status",
            sa.Enum(
                "IN_PROGRESS",
                "COMPLETED",
                "FAILED",
                name="file_index_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
    )
    op.add_column("files", sa.Column("index_error", sa.Text(), nullable=True))
    for column in ("file_search_calls", "web_search_calls"):
        op.add_column(
            "api_usage_logs",
            sa.Column(column, sa.Integer(), server_default="0", nullable=False),
        )
    op.add_column(
        "api_usage_logs",
        sa.Column(
            "tool_cost_usd", sa.Numeric(precision=14, scale=6), server_default="0", nullable=False
        ),
    )

    # Storage rows of vector stores (ai/storage.py) have a purpose of their own.
    op.drop_constraint(op.f("ck_api_usage_logs_usage_purpose"), "api_usage_logs", type_="check")
    op.create_check_constraint(
        op.f("ck_api_usage_logs_usage_purpose"),
        "api_usage_logs",
        "purpose IN ('REPLY', 'TITLE', 'STORAGE')",
    )


def downgrade() -> None:
    op.execute("DELETE FROM api_usage_logs WHERE purpose = 'STORAGE'")
    op.drop_constraint(op.f("ck_api_usage_logs_usage_purpose"), "api_usage_logs", type_="check")
    op.create_check_constraint(
        op.f("ck_api_usage_logs_usage_purpose"), "api_usage_logs", "purpose IN ('REPLY', 'TITLE')"
    )
    op.drop_column("api_usage_logs", "tool_cost_usd")
    op.drop_column("api_usage_logs", "web_search_calls")
    op.drop_column("api_usage_logs", "file_search_calls")
    op.drop_column("files", "index_error")
    op.drop_column("files", "index_status")
    op.drop_column("messages", "citations")
    op.drop_column("threads", "vector_store_id")
    op.drop_column("assistants", "vector_store_id")
