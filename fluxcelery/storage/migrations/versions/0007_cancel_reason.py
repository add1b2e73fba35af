"""flux_runs.cancel_reason: why a run was cancelled.

Set by ``engine.cancel``. A cancel that compensates passes through ``rolling_back``; the
rollback ends ``cancelled`` (not ``rolled_back``) when the run carries a reason, and a step
attempt that was still running when the cancel was recorded has its outcome recorded. Nullable,
no default: adding it rewrites nothing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("flux_runs", sa.Column("cancel_reason", sa.Text()))


def downgrade() -> None:
    op.drop_column("flux_runs", "cancel_reason")
