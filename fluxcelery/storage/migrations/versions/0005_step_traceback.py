"""flux_steps.traceback: the failing attempt's traceback, secrets masked.

Shown by ``fluxcelery show``, the Flower tab and the viewer beside the step's error, and the
same text a Celery task of the step ends with in FAILURE. Nullable, no default: adding it
rewrites nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("flux_steps", sa.Column("traceback", sa.Text()))


def downgrade() -> None:
    op.drop_column("flux_steps", "traceback")
