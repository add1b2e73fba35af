"""Initial schema: flux_runs, flux_steps, flux_traces.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "flux_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("workflow_version", sa.String(64)),
        sa.Column("definition_hash", sa.String(64)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", JsonType),
        sa.Column("data", JsonType),
        sa.Column("current_step", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("executor", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("finished_at", TZ),
    )
    op.create_index("ix_flux_runs_workflow_created", "flux_runs", ["workflow", "created_at"])
    op.create_index("ix_flux_runs_status_updated", "flux_runs", ["status", "updated_at"])
    op.create_index("ix_flux_runs_created", "flux_runs", ["created_at"])
    op.create_table(
        "flux_steps",
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("flux_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("compensation_attempts", sa.Integer, nullable=False),
        sa.Column("output", JsonType),
        sa.Column("error", sa.Text),
        sa.Column("waiting_for", sa.String(200)),
        sa.Column("task_id", sa.String(64)),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("duration_ms", sa.Integer),
        sa.Column("wait_deadline", TZ),
    )
    op.create_index("ix_flux_steps_wait_deadline", "flux_steps", ["wait_deadline"])
    op.create_table(
        "flux_traces",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("ts", TZ, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("status", sa.String(24)),
        sa.Column("step", sa.String(200)),
        sa.Column("step_index", sa.Integer),
        sa.Column("kind", sa.String(10)),
        sa.Column("attempt", sa.Integer),
        sa.Column("max_attempts", sa.Integer),
        sa.Column("duration_ms", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("task_id", sa.String(64)),
        sa.Column("worker", sa.String(200)),
        sa.Column("meta", JsonType),
    )
    op.create_index("ix_flux_traces_run", "flux_traces", ["run_id", "seq"])
    op.create_index("ix_flux_traces_workflow_type", "flux_traces", ["workflow", "type"])
    op.create_index("ix_flux_traces_status", "flux_traces", ["status"])


def downgrade() -> None:
    op.drop_table("flux_traces")
    op.drop_table("flux_steps")
    op.drop_table("flux_runs")
