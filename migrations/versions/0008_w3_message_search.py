"""full-text search over messages: messages.search_vector, a generated tsvector (STORED; NULL
while a reply streams) with a GIN index (docs/search.md)

Revision ID: 0006_w3
Revises: 0007_tools
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_w3"
down_revision: str | None = "0007_tools"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As atlas_gql.ai.models.MESSAGE_SEARCH_VECTOR says it (a migration keeps its own copy: the
# model may change later, this step may not).
SEARCH_VECTOR = (
    "CASE WHEN status = 'IN_PROGRESS' THEN NULL "
    "ELSE to_tsvector('english'::regconfig, left(content, 100000)) END"
)


def upgrade() -> None:
    # Adding a STORED generated column rewrites the table once, computing every row's vector.
    op.add_column(
        "messages",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(SEARCH_VECTOR, persisted=True),
            nullable=True,
        ),
    )
    op.create_index(
        op.f("ix_messages_search_vector"),
        "messages",
        ["search_vector"],
        unique=False,
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_search_vector"), table_name="messages", postgresql_using="gin")
    op.drop_column("messages", "search_vector")
