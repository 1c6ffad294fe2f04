"""spend bounded per person: users.approved_at (registration approval), the user's own
monthly token budget and message rate; token buckets of the request rate limits

Revision ID: 0005_abuse_user_limits
Revises: 0004_events_message_authors
Create Date: 2026-12-16 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_abuse_user_limits"
down_revision: str | None = "0004_events_message_authors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("monthly_token_budget", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("messages_per_minute", sa.Integer(), nullable=True))
    # Every account that exists was admitted under the old rules: approved when created.
    op.execute("UPDATE users SET approved_at = created_at")
    op.create_check_constraint(
        op.f("ck_users_monthly_token_budget_not_negative"), "users", "monthly_token_budget >= 0"
    )
    op.create_check_constraint(
        op.f("ck_users_messages_per_minute_positive"), "users", "messages_per_minute >= 1"
    )
    op.create_table(
        "rate_limit_buckets",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_buckets")
    op.drop_constraint(op.f("ck_users_messages_per_minute_positive"), "users", type_="check")
    op.drop_constraint(op.f("ck_users_monthly_token_budget_not_negative"), "users", type_="check")
    op.drop_column("users", "messages_per_minute")
    op.drop_column("users", "monthly_token_budget")
    op.drop_column("users", "approved_at")
