"""Alembic migrations, run programmatically (``fluxcelery db upgrade`` and on first use)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

    from .sql import SqlStorage

VERSION_TABLE = "flux_alembic_version"
_LOCK = threading.Lock()
_ADVISORY_KEY = 0x666C7578  # "flux"


def _config(storage: SqlStorage) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.set_main_option("version_table", VERSION_TABLE)
    return cfg


def head_revision(storage: SqlStorage) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(storage)).get_current_head()


def current_revision(storage: SqlStorage) -> str | None:
    with storage.engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(storage: SqlStorage, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; returns (before, after). Safe to call concurrently."""
    from alembic import command

    head = head_revision(storage)
    before = current_revision(storage)
    if before == head and revision == "head":
        return before, before
    cfg = _config(storage)
    with _LOCK, storage.engine.connect() as conn:
        # Several processes starting at once: one migrates, the others wait for it and then
        # find the schema at head.
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
        elif conn.dialect.name == "sqlite":
            # The sqlite3 module runs DDL outside any transaction (it begins one only before
            # INSERT/UPDATE/DELETE): a migration was not atomic, and two processes both ran
            # it. One explicit transaction that takes the write lock first fixes both.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    return before, current_revision(storage)
