"""PostgreSQL storage: where a service's tables live, a pool, and a connection with the sqlite3
surface the repositories are written against (docs/storage.md).

The repositories keep one set of SQL for both backends. This module bridges what differs at
run time, so the service code does not fork:

- placeholders: `?` becomes `%s` (a literal `%` is escaped);
- `INSERT OR IGNORE INTO` becomes `INSERT INTO ... ON CONFLICT DO NOTHING`;
- `cursor.lastrowid` is `lastval()` (the identity column the insert just used);
- rows read both by name and by index, as `sqlite3.Row` does (`Row`);
- a constraint violation raises `sqlite3.IntegrityError`, so the repositories' existing
  `except sqlite3.IntegrityError` holds on both backends (the psycopg error is its cause);
- losing the server (a broken connection, no connection within the pool's timeout) raises
  `StorageUnavailable`, which the servicers answer as UNAVAILABLE.

What cannot be bridged (DDL, `INSERT OR REPLACE`, triggers, PRAGMAs) is a dialect-specific piece
in the repository that needs it, never a second copy of the repository.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Self, cast

import psycopg
import psycopg_pool
from psycopg import sql as pgsql

from services._common.errors import Unavailable
from services._common.places import PgPlace

log = logging.getLogger(__name__)

# How long a call waits for a connection before it is answered UNAVAILABLE.
CONNECT_TIMEOUT_S = 5.0
# The key every service's schema creation and migration takes first: two processes of one
# service (display workers) starting together must not both create the schema.
_MIGRATION_LOCK = 0x6863_0001


class StorageUnavailable(Unavailable):
    """The database server cannot be reached: nothing of this call was stored."""

    reason = "STORAGE_UNAVAILABLE"


def unavailable(exc: BaseException) -> StorageUnavailable:
    if isinstance(exc, psycopg_pool.PoolTimeout):
        # Down, or every connection busy for that long: the caller can do the same either way.
        cause = f"no connection within {CONNECT_TIMEOUT_S:g} s"
    else:
        cause = _first_line(exc)
    return StorageUnavailable(
        "the database is unreachable, so nothing was stored; retry in a few seconds "
        f"(the service reconnects by itself when it is back): {cause}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# -- rows ------------------------------------------------------------------------------------


class Row(tuple[Any, ...]):
    """A row read by index, by column name (`row["day"]`), or unpacked, like `sqlite3.Row`."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Self:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description] if cursor.description else []
    index = {name: i for i, name in enumerate(names)}

    def make(values: Sequence[Any]) -> Row:
        return Row(values, index)

    return make


# -- SQL -------------------------------------------------------------------------------------

_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)


@lru_cache(maxsize=1024)
def translate(statement: str) -> str:
    """SQLite's spelling of a statement the two dialects share, in PostgreSQL's."""
    text = statement.replace("%", "%%").replace("?", "%s")
    if text.strip().upper() == "BEGIN IMMEDIATE":
        # SQLite's "take the write lock now"; the writer's advisory lock does that here.
        return "BEGIN"
    if _OR_IGNORE.match(text):
        text = _OR_IGNORE.sub("INSERT INTO", text, count=1).rstrip().rstrip(";")
        text += " ON CONFLICT DO NOTHING"
    return text


class Cursor:
    """The sqlite3 cursor surface over a psycopg cursor."""

    def __init__(self, conn: PgConnection, cursor: psycopg.Cursor[Any], statement: str) -> None:
        self._conn = conn
        self._cursor = cursor
        self._insert = statement.lstrip()[:6].upper() == "INSERT"

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        if not self._insert:
            return None
        return int(self._conn.raw.execute("SELECT lastval()").fetchone()[0])  # type: ignore[index]

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class StandaloneCursor:
    """`conn.cursor()`: statements run one after another on one cursor object."""

    row_factory: Any = None  # rows are tuples already (`Row`); set freely, as on sqlite3

    def __init__(self, conn: PgConnection) -> None:
        self._conn = conn
        self._last: Cursor | None = None

    def execute(self, statement: str, params: Sequence[Any] = ()) -> StandaloneCursor:
        self._last = self._conn.execute(statement, params)
        return self

    def fetchone(self) -> Any:
        return self._last.fetchone() if self._last is not None else None

    def fetchall(self) -> list[Any]:
        return self._last.fetchall() if self._last is not None else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class PgConnection:
    """One pooled connection inside a transaction, spoken to as a `sqlite3.Connection`."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        # A statement broke a constraint. PostgreSQL has then aborted the whole transaction, so
        # it is rolled back at its end even when the repository caught the error; the
        # repositories write nothing after such an error, so SQLite commits nothing more.
        self.failed = False
        self._staged = 0  # temporary tables made for upserts (each dropped at commit)

    def execute(self, statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        with _translated_errors(self):
            cur = self.raw.cursor()
            cur.execute(translate(statement), params or None)
        return Cursor(self, cur, statement)

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        with _translated_errors(self):
            cur = self.raw.cursor()
            cur.executemany(translate(statement), list(rows))
        return Cursor(self, cur, statement)

    def as_sqlite(self) -> sqlite3.Connection:
        """This connection, typed as what the repositories are written against."""
        return cast(sqlite3.Connection, self)

    def cursor(self) -> StandaloneCursor:
        return StandaloneCursor(self)

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """COPY rows in (bulk feeds, the display log): one stream instead of a statement each."""
        query = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
            pgsql.Identifier(table), pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
        )
        with _translated_errors(self), self.raw.cursor().copy(query) as copy:
            for row in rows:
                copy.write_row(row)

    def upsert_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], key: Sequence[str]
    ) -> None:
        """COPY into a temporary table (no index, no WAL), then one INSERT ... SELECT ... ON
        CONFLICT into `table`. No two rows may share a key: one statement cannot update a row
        twice (`upsert_rows` of this module keeps the last)."""
        self._staged += 1
        staging = f"bulk_{table}_{self._staged}"
        listed = pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
        updates = pgsql.SQL(", ").join(
            pgsql.SQL("{0} = excluded.{0}").format(pgsql.Identifier(c))
            for c in columns
            if c not in key
        )
        with _translated_errors(self):
            self.raw.execute(
                pgsql.SQL(
                    "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
                ).format(pgsql.Identifier(staging), listed, pgsql.Identifier(table))
            )
        self.copy_rows(staging, columns, rows)
        with _translated_errors(self):
            self.raw.execute(
                pgsql.SQL(
                    "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO UPDATE SET {}"
                ).format(
                    pgsql.Identifier(table),
                    listed,
                    listed,
                    pgsql.Identifier(staging),
                    pgsql.SQL(", ").join(map(pgsql.Identifier, key)),
                    updates,
                )
            )


@contextmanager
def _translated_errors(conn: PgConnection) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.IntegrityError as exc:
        conn.failed = True
        raise sqlite3.IntegrityError(str(exc)) from exc
    except psycopg.OperationalError as exc:
        if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
            raise
        raise unavailable(exc) from exc


def as_sqlite(conn: PgConnection) -> sqlite3.Connection:
    """The repositories are typed against `sqlite3.Connection`; this is the same surface."""
    return cast(sqlite3.Connection, conn)


def pg_connection(conn: sqlite3.Connection) -> PgConnection | None:
    """The PostgreSQL connection behind `conn`, or None on SQLite (for a dialect piece)."""
    return conn if isinstance(conn, PgConnection) else None  # type: ignore[unreachable]


# -- look-ups by many keys (an import's chunk: which of its keys are stored) -----------------

# SQLite binds at most 32,766 variables a statement; 500 keeps each IN list small.
SQLITE_KEYS_PER_LOOKUP = 500
PG_KEYS_PER_LOOKUP = 50_000


def select_by_keys(
    conn: sqlite3.Connection, select: str, column: str, keys: Iterable[bytes], then: str = ""
) -> Iterator[tuple[Any, ...]]:
    """The rows of `select` (a "SELECT ... FROM table" of ours, never a caller's text) whose
    `column` is one of `keys`, as tuples; `then` follows the WHERE (a GROUP BY).

    On PostgreSQL keys of one length go as one bytea, cut into keys by the server, and the index
    is probed with the array that makes (`= ANY(ARRAY(SELECT substring(...)))`). Passing them
    as an array parameter instead cost psycopg 6-10 µs a key to write out (300-460 ms for an
    import chunk's 50,000 people), the blob under 0.3 µs; an IN list of placeholders cost
    more still, as psycopg re-parses a statement of over 50 parameters each time. On SQLite an
    IN list."""
    wanted = list(keys)
    pg = pg_connection(conn)
    if pg is not None:
        width = len(wanted[0]) if wanted else 0
        if width and all(len(k) == width for k in wanted):
            statement = (
                f"{select} WHERE {column} = ANY(ARRAY(SELECT substring(?::bytea FROM i FOR "
                f"{width}) FROM generate_series(1, ?, {width}) AS i)) {then}"
            )
            for i in range(0, len(wanted), PG_KEYS_PER_LOOKUP):
                blob = b"".join(wanted[i : i + PG_KEYS_PER_LOOKUP])
                yield from pg.execute(statement, [blob, len(blob)]).fetchall()
            return
        statement = f"{select} WHERE {column} = ANY(?) {then}"
        for i in range(0, len(wanted), PG_KEYS_PER_LOOKUP):
            yield from pg.execute(statement, [wanted[i : i + PG_KEYS_PER_LOOKUP]]).fetchall()
        return
    cursor = conn.cursor()
    cursor.row_factory = None  # tuples, not sqlite3.Row: cheaper for bulk reads
    for i in range(0, len(wanted), SQLITE_KEYS_PER_LOOKUP):
        part = wanted[i : i + SQLITE_KEYS_PER_LOOKUP]
        marks = ",".join("?" * len(part))
        yield from cursor.execute(f"{select} WHERE {column} IN ({marks}) {then}", part)


# -- bulk writes (an import's chunk: tens of thousands of rows a table) ----------------------
# On PostgreSQL a row of executemany is a statement (parsed parameters, a round of the
# pipeline, a plan run); COPY streams the rows and the server inserts them in one go: the
# import's persons, phones and cards cost a fraction of the CPU on both sides. On SQLite a
# prepared statement run per row is already the fast way.


def insert_rows(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert rows known to be new (a unique key that exists fails the transaction)."""
    if not rows:
        return
    pg = pg_connection(conn)
    if pg is not None:
        pg.copy_rows(table, columns, rows)
        return
    marks = ", ".join("?" * len(columns))
    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def upsert_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str],
) -> None:
    """Insert rows, or update every other column of the row with the same `key` (the first
    columns). Rows are applied in order: of two with one key, the last wins, as two
    statements would leave it."""
    if not rows:
        return
    width = len(key)
    assert tuple(columns[:width]) == tuple(key), "the key comes first"
    others = [c for c in columns if c not in key]
    pg = pg_connection(conn)
    if pg is None:
        marks = ", ".join("?" * len(columns))
        updates = ", ".join(f"{c} = excluded.{c}" for c in others)
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
            rows,
        )
        return
    pg.upsert_rows(table, columns, list({tuple(r[:width]): r for r in rows}.values()), key)


# -- the database ----------------------------------------------------------------------------


def lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for a name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


class PgDatabase:
    """A pool of connections to one service's schema, writers serialised as SQLite's are.

    Write transactions take a transaction-scoped advisory lock (one per schema and `writer`)
    first: the repositories read then write inside a transaction and rely on no other writer
    coming between, as SQLite's one writer guarantees. A lock held for the transaction (and
    released at its end, even if the client dies) keeps that exact guarantee at the cost of
    concurrency between writers of one service, which SQLite never had either; SERIALIZABLE with
    retries would let writers overlap but every read-then-write would need a retry loop.
    Reads take no lock: a REPEATABLE READ transaction sees one state, as SQLite's does.
    """

    def __init__(self, place: PgPlace, *, max_size: int = 16, name: str = "") -> None:
        self.place = place
        self._write_lock = lock_key(f"{place.schema}:writer")
        schema = place.schema

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(schema)))

        self.pool = psycopg_pool.ConnectionPool(
            place.dsn,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": _row_factory, "connect_timeout": 5},
            configure=configure,
            # A connection is checked before it is handed out, so after the server restarts
            # the first call gets a fresh connection instead of a dead one.
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=CONNECT_TIMEOUT_S,
            # No reconnection in the background with a backoff that grows while the server is
            # away: each call that needs a connection tries to connect itself, so the first
            # call after the server returns succeeds.
            reconnect_timeout=0,
            name=name or f"healthcode-{schema}",
            open=False,
        )
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except psycopg_pool.PoolTimeout as exc:
            self.pool.close()
            raise unavailable(exc) from exc
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        with self._connection() as raw, raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            raw.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    pgsql.Identifier(self.place.schema)
                )
            )

    @contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection(timeout=timeout) as raw:
                yield raw
        except (psycopg_pool.PoolTimeout, psycopg.OperationalError) as exc:
            raise unavailable(exc) from exc

    @contextmanager
    def transaction(self, *, lock: int | None = None) -> Iterator[PgConnection]:
        """A write transaction holding the writer lock (`lock`: another key, or 0 for none)."""
        key = self._write_lock if lock is None else lock
        with self._connection() as raw:
            try:
                with raw.transaction():
                    if key:
                        raw.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                    conn = PgConnection(raw)
                    yield conn
                    if conn.failed:
                        raise psycopg.Rollback()
            except psycopg.OperationalError as exc:
                raise unavailable(exc) from exc

    @contextmanager
    def reading(self, *, timeout: float | None = None) -> Iterator[PgConnection]:
        """A consistent read-only snapshot (`timeout`: to wait for a connection, else the
        pool's)."""
        with self._connection(timeout) as raw:
            try:
                raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    yield PgConnection(raw)
                finally:
                    raw.execute("COMMIT")
            except psycopg.OperationalError as exc:
                raise unavailable(exc) from exc

    def migrate(self, migrations: Sequence[str], what: str) -> None:
        """Bring the schema to `len(migrations)`: script i takes version i to i + 1."""
        with self.transaction(lock=_MIGRATION_LOCK) as conn:
            raw = conn.raw
            raw.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            row = raw.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                raw.execute("INSERT INTO schema_version VALUES (0)")
                current = 0
            else:
                current = int(row[0])
            if current > len(migrations):
                raise RuntimeError(
                    f"{what} in {self.place}: schema version {current} is newer than this code "
                    f"({len(migrations)}); refusing to run an older service on it"
                )
            for version in range(current, len(migrations)):
                raw.execute(migrations[version])
                raw.execute("UPDATE schema_version SET version = %s", (version + 1,))

    def schema_version(self) -> int:
        with self.reading() as conn:
            row = conn.raw.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row is not None else 0

    def healthy(self) -> bool:
        """Whether the server answers now (cheap: one round trip on a pooled connection)."""
        try:
            with self.pool.connection(timeout=1.0) as raw:
                raw.execute("SELECT 1")
            return True
        except (psycopg_pool.PoolTimeout, psycopg.Error):
            return False

    def close(self) -> None:
        self.pool.close()
