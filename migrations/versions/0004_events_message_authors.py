"""message authors and the event cursor of a running reply: `messages.assistant_id` (the
assistant that wrote a reply, backfilled from its thread) and `messages.content_sequence`
(the number of the last event whose text a running reply's `content` holds)

Revision ID: 0004_events_message_authors
Revises: 0003_resumable_replies
Create Date: 2026-12-14 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_events_message_authors"
down_revision: str | None = "0003_resumable_replies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("assistant_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_messages_assistant_id_assistants"),
        "messages",
        "assistants",
        ["assistant_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(op.f("ix_messages_assistant_id"), "messages", ["assistant_id"])
    op.add_column("messages", sa.Column("content_sequence", sa.Integer(), nullable=True))
    # Replies written before: by their thread's assistant (a thread never changes assistant;
    # a deleted one left NULL on the thread, and so here).
    op.execute(
        "UPDATE messages AS m SET assistant_id = t.assistant_id FROM threads AS t "
        "WHERE t.id = m.thread_id AND m.role = 'ASSISTANT' AND t.assistant_id IS NOT NULL"
    )
    # Running background replies know where their checkpointed text ends; others (a
    # foreground reply running during the upgrade) fall back to the thread's mark.
    op.execute(
        "UPDATE messages SET content_sequence = event_sequence_base + upstream_sequence "
        "WHERE status = 'IN_PROGRESS' AND event_sequence_base IS NOT NULL "
        "AND upstream_sequence IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("messages", "content_sequence")
    op.drop_index(op.f("ix_messages_assistant_id"), table_name="messages")
    op.drop_constraint(op.f("fk_messages_assistant_id_assistants"), "messages", type_="foreignkey")
    op.drop_column("messages", "assistant_id")
