"""flux_runs.start_meta: the workflow:start event's meta, stored when a run is created.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, so it is instant on a large table.
    op.add_column("flux_runs", sa.Column("start_meta", JsonType))


def downgrade() -> None:
    op.drop_column("flux_runs", "start_meta")
