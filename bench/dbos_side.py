"""The DBOS side of bench/embedded.py: the same 4-step no-op workflow, written with DBOS
Transact (``pip install -e ".[bench]"``): a ``@DBOS.workflow()`` calling four
``@DBOS.step()`` functions, run in-process with its state in PostgreSQL.

DBOS keeps its state in a system database of its own; the bench creates one for the run
(``flux_bench_dbos_<tag>`` on the same server as fluxcelery's PostgreSQL side) and drops it
at the end. DBOS checkpoints the workflow's start and end and every step's outcome, each
committed with PostgreSQL's default ``synchronous_commit``, as fluxcelery commits each state
change. Its logs are kept at WARNING, and ``DBOS.destroy`` stops its background threads.

Importing this module needs ``dbos``; bench/embedded.py skips the side when it is missing.
"""

from __future__ import annotations

import uuid
from types import TracebackType

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig


@DBOS.step()
def step_a() -> None:
    return None


@DBOS.step()
def step_b() -> None:
    return None


@DBOS.step()
def step_c() -> None:
    return None


@DBOS.step()
def step_d() -> None:
    return None


@DBOS.workflow()
def bench_workflow() -> None:
    step_a()
    step_b()
    step_c()
    step_d()


STEPS = 4


class DbosSide:
    """DBOS launched on a bench-only system database, for the length of a ``with`` block.

    ``pg_url``: a SQLAlchemy URL of the PostgreSQL server (any database on it); the system
    database is created next to it and dropped on exit, with any connection left to it."""

    def __init__(self, pg_url: str) -> None:
        self.database = f"flux_bench_dbos_{uuid.uuid4().hex[:8]}"
        url = sa.engine.make_url(pg_url)
        self._admin_url = url.set(database="postgres")
        self.system_url = url.set(drivername="postgresql", database=self.database)

    def __enter__(self) -> DbosSide:
        self._admin(f'CREATE DATABASE "{self.database}"')
        try:
            config: DBOSConfig = {
                "name": "flux-bench",
                "system_database_url": self.system_url.render_as_string(hide_password=False),
                "log_level": "WARNING",
            }
            DBOS(config=config)
            DBOS.launch()
        except BaseException:
            self._close()
            raise
        return self

    def run(self) -> None:
        """One workflow run, to its end (called in this thread, as ``engine.execute``)."""
        bench_workflow()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        try:
            DBOS.destroy()  # stops and joins its background threads, closes its pool
        finally:
            self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        engine = sa.create_engine(self._admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(statement))
        finally:
            engine.dispose()
