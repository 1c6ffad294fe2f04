"""workspace features of issue 15 (parts 2, 3, 7): threads pinned and archived

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


def downgrade() -> None:
    op.drop_column("threads", "archived_at")
    op.drop_column("threads", "pinned")
