"""message tree: messages.parent_id, threads.active_leaf_id and threads.conversation_leaf_id;
existing (linear) threads become chains

Revision ID: 0006_w1
Revises: 0006_w3
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_w1"
down_revision: str | None = "0006_w3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_messages_parent_id_messages"),
        "messages",
        "messages",
        ["parent_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "ix_messages_parent_id_created_at",
        "messages",
        ["parent_id", "created_at", "id"],
        unique=False,
    )
    op.add_column("threads", sa.Column("active_leaf_id", sa.Uuid(), nullable=True))
    op.add_column("threads", sa.Column("conversation_leaf_id", sa.Uuid(), nullable=True))
    # Existing threads are linear: each message follows the one stored before it.
    op.execute(
        """
        UPDATE messages AS m SET parent_id = chain.previous_id
        FROM (
            SELECT id, lag(id) OVER (PARTITION BY thread_id ORDER BY created_at, id)
                AS previous_id
            FROM messages
        ) AS chain
        WHERE chain.id = m.id AND chain.previous_id IS NOT NULL
        """
    )
    # The branch shown is the whole chain; a thread with an OpenAI conversation has all of
    # it there, so its next reply goes on in the conversation.
    op.execute(
        """
        UPDATE threads AS t
        SET active_leaf_id = last.id,
            conversation_leaf_id = CASE WHEN t.openai_thread_id IS NOT NULL THEN last.id END
        FROM (
            SELECT DISTINCT ON (thread_id) thread_id, id
            FROM messages
            ORDER BY thread_id, created_at DESC, id DESC
        ) AS last
        WHERE last.thread_id = t.id
        """
    )


def downgrade() -> None:
    op.drop_column("threads", "conversation_leaf_id")
    op.drop_column("threads", "active_leaf_id")
    op.drop_index("ix_messages_parent_id_created_at", table_name="messages")
    op.drop_constraint(op.f("fk_messages_parent_id_messages"), "messages", type_="foreignkey")
    op.drop_column("messages", "parent_id")
