"""Storage: SQLite in WAL mode (embedded, the default) or PostgreSQL (services/_common/pg.py),
and the repository base the services build on (docs/storage.md).

Why `synchronous=FULL`: every service acknowledges a change only once it is durable (a feed
batch, a declaration, a display record). In WAL mode `NORMAL` survives an application crash but
may lose the last commits on a power cut or OS crash, which would break that promise; `FULL`
fsyncs the WAL at each commit. The cost is one fsync per transaction, which batching (one
transaction per feed batch, group commit for displays) keeps small.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from services._common.places import PgPlace

if TYPE_CHECKING:
    from services._common.pg import PgDatabase

BUSY_TIMEOUT_MS = 5000

# Where a repository keeps its tables: a SQLite file, or a PostgreSQL schema.
Place = Path | str | PgPlace


def open_sqlite(path: Path | str) -> sqlite3.Connection:
    """Open (creating the directory) a SQLite database tuned for a durable service.

    The connection is in autocommit mode (`isolation_level=None`): transactions are explicit
    (`BEGIN IMMEDIATE`, see `Repository.transaction`) so a writer takes the write lock up
    front instead of failing half-way on an upgrade. It may be used from several threads; the
    repository serialises access with a lock.
    """
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(p), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Repository:
    """Base for a service's repository: transactions, and numbered schema migrations, on
    SQLite (a file) or PostgreSQL (a schema), chosen by the place it is given.

    Subclasses set `MIGRATIONS`: SQLite scripts; script i brings the schema from version i to
    i + 1 (`PRAGMA user_version`). A repository that runs on PostgreSQL also sets
    `PG_MIGRATIONS`, the same versions in PostgreSQL's DDL (kept per backend; the versions
    match one for one). Never edit a released script, append one. The statements the
    repository runs are shared: on PostgreSQL its connection has the sqlite3 surface.
    """

    MIGRATIONS: Sequence[str] = ()
    PG_MIGRATIONS: Sequence[str] | None = None

    def __init__(self, place: Place) -> None:
        self.place = place
        self._pg: PgDatabase | None = None
        # One SQLite connection shared by the server's worker threads: the lock keeps a
        # transaction's statements together. SQLite serialises writers anyway, so little is
        # lost. On PostgreSQL each transaction has a pooled connection of its own.
        self._lock = threading.RLock()
        if isinstance(place, PgPlace):
            if self.PG_MIGRATIONS is None:
                raise RuntimeError(
                    f"{type(self).__name__} has no PostgreSQL schema yet: "
                    "set HEALTHCODE_STORAGE=sqlite for this service"
                )
            if len(self.PG_MIGRATIONS) != len(self.MIGRATIONS):
                raise RuntimeError(f"{type(self).__name__}: the two backends' versions differ")
            from services._common.pg import PgDatabase  # the driver, only when used

            self.path = Path(place.schema)
            self._pg = PgDatabase(place)
            self._pg.migrate(self.PG_MIGRATIONS, type(self).__name__)
            return
        self.path = Path(place)
        self._conn = open_sqlite(self.path)
        self._migrate()

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql": for the few statements the two spell differently."""
        return "sqlite" if self._pg is None else "postgresql"

    @property
    def schema_version(self) -> int:
        if self._pg is not None:
            return self._pg.schema_version()
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def healthy(self) -> bool:
        """Whether the storage answers now (always, for a file)."""
        return self._pg is None or self._pg.healthy()

    def _migrate(self) -> None:
        with self.transaction() as conn:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(self.MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: schema version {current} is newer than this code "
                    f"({len(self.MIGRATIONS)}); refusing to run an older service on it"
                )
            for version in range(current, len(self.MIGRATIONS)):
                for statement in _statements(self.MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed (durably) on normal exit, rolled back on an error.
        No other write transaction of this repository runs meanwhile, on either backend."""
        if self._pg is not None:
            with self._pg.transaction() as pg:
                yield pg.as_sqlite()
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Consistent reads (a deferred transaction, so several queries see one state)."""
        if self._pg is not None:
            with self._pg.reading() as pg:
                yield pg.as_sqlite()
            return
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            return
        with self._lock:
            self._conn.close()


# The name the repositories were written against, from when SQLite was the only backend.
SqliteRepository = Repository


def _statements(script: str) -> list[str]:
    # executescript would commit our transaction; split on complete statements instead.
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
