"""flux_steps.progress: the running attempt's last ``ctx.progress`` report.

A JSON object ``{"done", "total", "message", "at"}`` shown by ``runs``, ``show``, the Flower
tab and the viewer while the step runs. Nullable, no default: adding it rewrites nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("flux_steps", sa.Column("progress", json_type))


def downgrade() -> None:
    op.drop_column("flux_steps", "progress")
