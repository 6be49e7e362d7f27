"""What the worker processes of one display service share (HEALTHCODE_DISPLAY_PROCESSES > 1).

Each worker keeps its own display log (`display.<i>.db`: durable and ordered per process, group
commit, no lock shared with the other workers on the hot path). Two facts are not per process:

- **A token is accepted once.** A code shown through worker A may be scanned at worker B and
  replayed at worker C, so the token id is claimed in one table every worker writes:
  `scanned_tokens` in `<data_dir>/display/shared.db` (SQLite, WAL, synchronous=FULL). Why a
  shared SQLite table and not routing the claim by token id to the worker that owns it: routing
  needs a call between workers (a second hop, and a worker that is down or restarting blocks
  every scan of its share of the tokens), while a claim is one tiny `INSERT OR IGNORE` that
  SQLite's write lock serialises across processes on one machine, and the file survives a
  worker's restart. Only scans write it (one transaction per group-commit batch), never shows.
  Past one machine the same table lives in PostgreSQL (DESIGN.md, Scale-out).
- **An applicant is counted once.** A person's first display is a first display of the
  service, not of a worker: `holders` and `first_displays` (per day) are kept here too. A worker
  consults this file only for a person its own log has not seen yet, so a Show of a known
  holder writes nothing shared.

The claim commits before the scan's row is in the worker's log (two files cannot share one
transaction). If the log's commit then fails the claim is released again (best effort); if the
process dies in between, the token stays claimed without a logged scan and the holder shows a
fresh code: a token is never accepted twice, which is the property that matters.

Retention (services/display/store.py): worker 0 also purges this file, in chunks: claims of
expired tokens, and holders with no display inside the retention window in any worker's log
(`purge_holders`); the per-day `first_displays` counts stay. A person shown at another worker
while their row is being dropped may, rarely, be counted as an applicant once more.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from services._common.storage import BUSY_TIMEOUT_MS, open_sqlite

SHARED_FILE = "shared.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scanned_tokens (
    token_id BLOB PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holders (
    person_key BLOB PRIMARY KEY,
    first_day INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holders_first_day ON holders (first_day);
CREATE TABLE IF NOT EXISTS first_displays (
    day INTEGER PRIMARY KEY,
    n INTEGER NOT NULL
);
"""

# Expired tokens fail the freshness check before their claim is looked at, so their ids need
# not be kept: a claim is dropped two minutes after its token expired.
KEEP_EXPIRED_MS = 120_000


def create_ledger(path: Path) -> None:
    """Create the shared file and its tables (the parent does it before starting workers, so
    that workers starting together do not race to set WAL mode and the schema)."""
    conn = open_sqlite(path)
    try:
        conn.executescript(_SCHEMA)
    finally:
        conn.close()


class SharedLedger:
    """One worker's connection to the shared file; used by its display log's writer thread
    only (and `first_displays` by its counters reader, on a connection of its own)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_sqlite(path)
        # Deleted rows are overwritten, not left in free pages (retention).
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.executescript(_SCHEMA)

    def settle(
        self,
        claims: Sequence[tuple[bytes, int]],
        new_holders: Sequence[tuple[bytes, int]],
        now_ms: int,
        prune: bool = False,
    ) -> tuple[list[bool], list[bool]]:
        """Claim token ids (token id, expires at ms) and record people first seen by this
        worker (person key, day), in one transaction. Returns, in order, whether each claim is
        this caller's (False: the token was scanned before, here or at another worker) and
        whether each person is the service's new holder (counted as an applicant)."""
        conn = self._conn
        claimed: list[bool] = []
        first: list[bool] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for token_id, expires_at_ms in claims:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO scanned_tokens (token_id, expires_at_ms) VALUES (?, ?)",
                    (token_id, expires_at_ms),
                )
                claimed.append(cur.rowcount == 1)
            for person_key, day in new_holders:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO holders (person_key, first_day) VALUES (?, ?)",
                    (person_key, day),
                )
                first.append(cur.rowcount == 1)
                if cur.rowcount == 1:
                    conn.execute(
                        "INSERT INTO first_displays (day, n) VALUES (?, 1) "
                        "ON CONFLICT (day) DO UPDATE SET n = n + 1",
                        (day,),
                    )
            if prune:
                conn.execute(
                    "DELETE FROM scanned_tokens WHERE expires_at_ms < ?",
                    (now_ms - KEEP_EXPIRED_MS,),
                )
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        return claimed, first

    def release(self, token_ids: Sequence[bytes]) -> None:
        """Give claims back (the scans they were for were not logged): best effort."""
        if not token_ids:
            return
        try:
            self._conn.executemany(
                "DELETE FROM scanned_tokens WHERE token_id = ?", [(t,) for t in token_ids]
            )
        except sqlite3.Error:
            pass

    def purge_claims(self, before_ms: int, chunk: int) -> tuple[int, bool]:
        """Drop up to `chunk` claims of tokens that expired before `before_ms`: (how many,
        whether that was the last of them)."""
        return purge_claims(self._conn, before_ms, chunk)

    def purge_holders(
        self, cutoff_day: int, cutoff_ms: int, logs: Sequence[sqlite3.Connection], chunk: int
    ) -> tuple[int, int, bool]:
        """One chunk of the holders' purge, against every worker's log (`purge_holders`)."""
        return purge_holders(self._conn, cutoff_day, cutoff_ms, logs, chunk)

    def truncate_wal(self) -> None:
        truncate_wal(self._conn)

    def close(self) -> None:
        self._conn.close()


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on an error (an autocommit connection)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    conn.execute("COMMIT")


def purge_claims(conn: sqlite3.Connection, before_ms: int, chunk: int) -> tuple[int, bool]:
    """Drop up to `chunk` claims (`scanned_tokens`, in a display log or the shared file) of
    tokens that expired before `before_ms`, in one transaction: (how many, whether done)."""
    with write_transaction(conn):
        n = conn.execute(
            "DELETE FROM scanned_tokens WHERE token_id IN (SELECT token_id FROM scanned_tokens "
            "WHERE expires_at_ms < ? LIMIT ?)",
            (before_ms, chunk),
        ).rowcount
    return n, n < chunk


def purge_holders(
    conn: sqlite3.Connection,
    cutoff_day: int,
    cutoff_ms: int,
    logs: Sequence[sqlite3.Connection],
    chunk: int,
) -> tuple[int, int, bool]:
    """One chunk of the retention purge of a `holders` table (a display log's or this file's).

    A holder whose day is before `cutoff_day` is dropped unless one of `logs` (display logs)
    has an event naming them at or after `cutoff_ms`; then the row's day moves to the day of
    their last such event, so it says no more than the window holds, and the row is looked at
    again only once that day leaves the window. Keeping those rows keeps a regular holder from
    being counted as a new applicant every month. The per-day counts (`first_displays`) are
    aggregates and stay. Returns (dropped, kept, whether that was the last chunk).
    """
    keys = [
        bytes(row[0])
        for row in conn.execute(
            "SELECT person_key FROM holders WHERE first_day < ? LIMIT ?", (cutoff_day, chunk)
        )
    ]
    drop: list[tuple[bytes, int]] = []
    keep: list[tuple[int, bytes, int]] = []
    # Looked up before the write lock is taken: another worker's claims do not wait for it.
    for key in keys:
        last: int | None = None
        for events in logs:
            row = events.execute(
                "SELECT day FROM display_events WHERE person_key = ? AND at_ms >= ? "
                "ORDER BY at_ms DESC LIMIT 1",
                (key, cutoff_ms),
            ).fetchone()
            if row is not None and (last is None or int(row[0]) > last):
                last = int(row[0])
        if last is None:
            drop.append((key, cutoff_day))
        else:
            keep.append((max(last, cutoff_day), key, cutoff_day))
    if keys:
        with write_transaction(conn):
            conn.executemany("DELETE FROM holders WHERE person_key = ? AND first_day < ?", drop)
            conn.executemany(
                "UPDATE holders SET first_day = ? WHERE person_key = ? AND first_day < ?", keep
            )
    return len(drop), len(keep), len(keys) < chunk


def truncate_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint and empty the WAL after a purge (purged rows' old pages live on in it),
    waiting at most a moment for readers: best effort, done again after the next purge."""
    try:
        conn.execute("PRAGMA busy_timeout=100")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error:
        pass
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def read_first_displays(conn: sqlite3.Connection) -> dict[int, int]:
    """Applicants per day, from a (read-only) connection to the shared file."""
    return {int(day): int(n) for day, n in conn.execute("SELECT day, n FROM first_displays")}
