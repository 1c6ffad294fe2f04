"""background replies: the worker running a reply, the upstream sequence number checkpointed
with its text, the offset of its event numbers; an index of running replies

Revision ID: 0003_resumable_replies
Revises: 0002_message_heartbeat
Create Date: 2026-12-09 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_resumable_replies"
down_revision: str | None = "0002_message_heartbeat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("reply_worker_id", sa.Uuid(), nullable=True))
    op.add_column("messages", sa.Column("upstream_sequence", sa.Integer(), nullable=True))
    op.add_column("messages", sa.Column("event_sequence_base", sa.Integer(), nullable=True))
    op.create_index(
        "ix_messages_in_progress_heartbeat_at",
        "messages",
        ["heartbeat_at"],
        postgresql_where=sa.text("status = 'IN_PROGRESS'"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_in_progress_heartbeat_at", table_name="messages")
    op.drop_column("messages", "event_sequence_base")
    op.drop_column("messages", "upstream_sequence")
    op.drop_column("messages", "reply_worker_id")
