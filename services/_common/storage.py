"""Embedded storage: SQLite in WAL mode, and a small repository base the services build on.

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

BUSY_TIMEOUT_MS = 5000


def open_sqlite(path: Path | str) -> sqlite3.Connection:
    """Open (creating the directory) a SQLite database tuned for a durable service.

    The connection is in autocommit mode (`isolation_level=None`): transactions are explicit
    (`BEGIN IMMEDIATE`, see `SqliteRepository.transaction`) so a writer takes the write lock up
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


class SqliteRepository:
    """Base for a service's repository: one connection, one lock, numbered schema migrations.

    Subclasses set `MIGRATIONS`: a sequence of SQL scripts; script i brings the schema from
    version i to i + 1 (`PRAGMA user_version`). Never edit a released script, append one.
    """

    MIGRATIONS: Sequence[str] = ()

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn = open_sqlite(self.path)
        # One connection shared by the server's worker threads: the lock keeps a transaction's
        # statements together. SQLite serialises writers anyway, so little is lost.
        self._lock = threading.RLock()
        self._migrate()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

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
        """A write transaction: committed (durably) on normal exit, rolled back on an error."""
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
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


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
