"""SQLite: flux_runs.input and flux_steps.output become TEXT columns.

A column declared ``JSON`` has NUMERIC affinity in SQLite, which converts JSON text that looks
like a number: a step output of ``2**70`` came back as ``1.1805916207174113e+21`` and ``1.0``
as ``1``. Only these two columns can hold a bare number (input and outputs are any JSON
value; data and metas are always objects). PostgreSQL (jsonb) is unaffected.

Each column is rebuilt in place (add, copy, drop, rename; SQLite 3.35+), not by recreating
the table: dropping ``flux_runs`` with foreign keys on would cascade to ``flux_steps``. Numbers
stored before are copied exactly; the digits an earlier write already lost cannot be
recovered.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import logging
import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("fluxcelery.storage")

#: Per column: add a TEXT twin, copy (text and integers exactly), find the REALs (SQLite's
#: own text for one keeps 15 digits: Python spells them), drop the old column, rename the twin.
RUNS_INPUT = (
    "ALTER TABLE flux_runs ADD COLUMN input__text TEXT",
    "UPDATE flux_runs SET input__text = input",
    "SELECT rowid, input FROM flux_runs WHERE typeof(input) = 'real'",
    "UPDATE flux_runs SET input__text = :v WHERE rowid = :r",
    "ALTER TABLE flux_runs DROP COLUMN input",
    "ALTER TABLE flux_runs RENAME COLUMN input__text TO input",
)
STEPS_OUTPUT = (
    "ALTER TABLE flux_steps ADD COLUMN output__text TEXT",
    "UPDATE flux_steps SET output__text = output",
    "SELECT rowid, output FROM flux_steps WHERE typeof(output) = 'real'",
    "UPDATE flux_steps SET output__text = :v WHERE rowid = :r",
    "ALTER TABLE flux_steps DROP COLUMN output",
    "ALTER TABLE flux_steps RENAME COLUMN output__text TO output",
)
#: ALTER TABLE ... DROP COLUMN arrived in SQLite 3.35 (2021).
MIN_SQLITE = (3, 35, 0)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        log.warning(
            "fluxcelery: SQLite %s cannot change a column's type in place (3.35+ can); "
            "flux_runs.input and flux_steps.output stay NUMERIC, so a top-level number "
            "beyond 64 bits is stored as a float",
            sqlite3.sqlite_version,
        )
        return
    for statements in (RUNS_INPUT, STEPS_OUTPUT):
        _as_text(*statements)


def _as_text(add: str, copy: str, reals: str, fix_real: str, drop: str, rename: str) -> None:
    conn = op.get_bind()
    op.execute(add)
    op.execute(copy)
    for rowid, value in conn.execute(sa.text(reals)).all():
        conn.execute(sa.text(fix_real), {"v": repr(value), "r": rowid})
    op.execute(drop)
    op.execute(rename)


def downgrade() -> None:
    # Back to JSON would only bring the conversion back; TEXT holds the same values.
    return None
