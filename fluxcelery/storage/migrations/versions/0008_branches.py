"""flux_steps.branch, item, parent, scope, flux_runs.claims: parallel branches and for_each.

A ``.parallel`` step's branch steps are rows of their own (``branch`` names the branch,
``parent`` the parallel step's row); a ``.for_each`` step's items are rows added at fan-out
(``item`` is the item's index). ``scope`` holds what a branch step or item keeps to itself
until the join: the keys it set in ``ctx.data`` and the item's value. Nullable, no default:
adding them rewrites nothing, and rows of older runs read as ordinary steps.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    # Starts of for_each items (PostgreSQL's item claim), counted apart from ``version``:
    # an item's outcome does not depend on a sibling's start, so it need not lose its
    # write to one (see storage/postgres.py, SAVE_SQL).
    op.add_column(
        "flux_runs", sa.Column("claims", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("flux_steps", sa.Column("branch", sa.String(200)))
    op.add_column("flux_steps", sa.Column("item", sa.Integer()))
    op.add_column("flux_steps", sa.Column("parent", sa.Integer()))
    op.add_column("flux_steps", sa.Column("scope", JsonType))


def downgrade() -> None:
    for column in ("scope", "parent", "item", "branch"):
        op.drop_column("flux_steps", column)
    op.drop_column("flux_runs", "claims")
