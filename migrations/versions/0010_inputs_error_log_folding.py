"""logs cannot be flooded: error_logs rows fold repeats of one fingerprint per time window
(fingerprint, window_start, count, last_seen_at; unique (window_start, fingerprint))

Revision ID: 0006_inputs
Revises: 0006_w1
Create Date: 2026-12-20 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_inputs"
down_revision: str | None = "0006_w1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("error_logs", sa.Column("fingerprint", sa.String(length=64), nullable=True))
    op.add_column(
        "error_logs", sa.Column("window_start", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "error_logs", sa.Column("count", sa.Integer(), server_default="1", nullable=False)
    )
    op.add_column(
        "error_logs", sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True)
    )
    # Rows written before folding stay one occurrence each: a fingerprint of their own.
    op.execute(
        "UPDATE error_logs SET fingerprint = md5(id::text), window_start = created_at, "
        "last_seen_at = created_at"
    )
    op.alter_column("error_logs", "fingerprint", nullable=False)
    op.alter_column("error_logs", "window_start", nullable=False)
    op.alter_column("error_logs", "last_seen_at", nullable=False)
    op.create_unique_constraint(
        op.f("uq_error_logs_window_start_fingerprint"),
        "error_logs",
        ["window_start", "fingerprint"],
    )
    op.create_check_constraint(op.f("ck_error_logs_count_positive"), "error_logs", "count >= 1")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_error_logs_count_positive"), "error_logs", type_="check")
    op.drop_constraint(op.f("uq_error_logs_window_start_fingerprint"), "error_logs", type_="unique")
    op.drop_column("error_logs", "last_seen_at")
    op.drop_column("error_logs", "count")
    op.drop_column("error_logs", "window_start")
    op.drop_column("error_logs", "fingerprint")
