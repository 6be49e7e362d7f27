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
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from services._common.storage import open_sqlite

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
CREATE TABLE IF NOT EXISTS first_displays (
    day INTEGER PRIMARY KEY,
    n INTEGER NOT NULL
);
"""

# Expired tokens fail the freshness check before their claim is looked at, so their ids need
# not be kept: a claim is dropped two minutes after its token expired.
_KEEP_EXPIRED_MS = 120_000


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
                    (now_ms - _KEEP_EXPIRED_MS,),
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

    def close(self) -> None:
        self._conn.close()


def read_first_displays(conn: sqlite3.Connection) -> dict[int, int]:
    """Applicants per day, from a (read-only) connection to the shared file."""
    return {int(day): int(n) for day, n in conn.execute("SELECT day, n FROM first_displays")}
