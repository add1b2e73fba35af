"""flux_runs.not_before: when a run started with a countdown is due.

``recover`` re-dispatched a pending run once it looked stale, so a run scheduled an hour
ahead (``start(..., countdown=3600)``) started after two minutes. Nullable, no default: adding
it rewrites nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("flux_runs", sa.Column("not_before", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("flux_runs", "not_before")
