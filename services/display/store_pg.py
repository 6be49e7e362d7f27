"""The display log on PostgreSQL: one log for every worker process and every display pod.

With HEALTHCODE_STORAGE=postgresql the workers of the display service (and its replicas on other
machines) write one set of tables in the `display` schema instead of a file each plus a shared
file (services/display/ledger.py):

- `display_events` is **partitioned by day** (declarative range partitions, one per Asia/Shanghai
  day, made a week ahead and on demand; a default partition catches a day nobody made). Rows go
  in by **COPY**, their ids drawn from the sequence first (one round trip for a batch), so a
  group commit of 500 displays is one stream, not 500 statements. Retention **drops** the
  partitions wholly before the window and deletes rows only on the day the window starts.
- `scanned_tokens` (token claims) and `holders` (first displays) are single tables: a token is
  accepted once across every worker and pod because the claim is a primary-key insert in the
  batch's own transaction, and two batches claiming one token wait on each other's commit.
- `daily_counters` and `first_displays` are per-day aggregates every worker adds to; the
  counters WatchCounters reports are one query over them, re-read by each worker when idle.

Writers are not serialised here (no advisory lock, unlike the repositories): every statement is
an insert or an increment, and each batch touches its rows in key order, so two workers' batches
never wait on each other in a cycle (no deadlock).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter as Tally
from collections.abc import Generator, Sequence
from typing import Any

import psycopg

from services._common.days import SHANGHAI, day_number
from services._common.pg import PgConnection, PgDatabase, PgPlace, as_sqlite, lock_key
from services.display.ledger import KEEP_EXPIRED_MS, purge_claims, purge_holders
from services.display.store import OK, SCAN, SHOW, TOKEN_REPLAYED, Counters, DisplayEvent, Purged

log = logging.getLogger(__name__)

# Partitions made ahead of today (and kept behind it, for a clock a little slow).
DAYS_AHEAD = 7

_EVENT_COLUMNS = (
    "id",
    "kind",
    "outcome",
    "at_ms",
    "day",
    "person_key",
    "masked_id",
    "masked_name",
    "device",
    "place",
    "actor",
    "colour",
    "index_version",
    "rule_set_version",
    "token_id",
    "context",
    "vehicle",
    "route",
)

PG_LOG_V1 = """
CREATE SEQUENCE display_events_id_seq AS BIGINT;
CREATE TABLE display_events (
    id BIGINT NOT NULL DEFAULT nextval('display_events_id_seq'),
    kind TEXT NOT NULL CHECK (kind IN ('show', 'scan', 'lookup')),
    outcome TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    day BIGINT NOT NULL,
    person_key BYTEA,
    masked_id TEXT NOT NULL DEFAULT '',
    masked_name TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL,
    place TEXT NOT NULL,
    actor TEXT NOT NULL DEFAULT '',
    colour BIGINT,
    index_version BIGINT,
    rule_set_version TEXT,
    token_id BYTEA,
    context TEXT NOT NULL DEFAULT '',
    vehicle TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (id, day)
) PARTITION BY RANGE (day);
ALTER SEQUENCE display_events_id_seq OWNED BY display_events.id;
CREATE TABLE display_events_default PARTITION OF display_events DEFAULT;
CREATE INDEX display_events_person ON display_events (person_key, at_ms);
CREATE TABLE scanned_tokens (
    token_id BYTEA PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX scanned_tokens_expiry ON scanned_tokens (expires_at_ms);
CREATE TABLE holders (
    person_key BYTEA PRIMARY KEY,
    first_day BIGINT NOT NULL
);
CREATE INDEX holders_first_day ON holders (first_day);
CREATE TABLE first_displays (
    day BIGINT PRIMARY KEY,
    n BIGINT NOT NULL
);
CREATE TABLE daily_counters (
    day BIGINT NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    colour BIGINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (day, kind, outcome, colour)
);
"""
PG_LOG_MIGRATIONS = (PG_LOG_V1,)

_Cell = tuple[int, str, str, int]


def _partition(day: int) -> str:
    return f"display_events_{day}"


class PgLog:
    """The display log's tables in one PostgreSQL schema (the writer thread's only)."""

    def __init__(self, place: PgPlace) -> None:
        self.place = place
        self.db = PgDatabase(place, max_size=3, name=f"healthcode-{place.schema}-log")
        self._partitions: set[int] = set()
        self._partition_lock = lock_key(f"{place.schema}:partitions")
        self._purge_lock = lock_key(f"{place.schema}:purge")

    def start(self, now_ms: int) -> None:
        self.db.migrate(PG_LOG_MIGRATIONS, "the display log")
        today = day_number(dt.datetime.fromtimestamp(now_ms / 1000, SHANGHAI))
        self.ensure_partitions(range(today - 1, today + DAYS_AHEAD + 1))

    def close(self) -> None:
        self.db.close()

    # -- partitions ---------------------------------------------------------------------

    def ensure_partitions(self, days: Sequence[int] | range) -> None:
        """Make the day partitions not made yet (every worker may ask: one makes them)."""
        wanted = set(days) - self._partitions
        if not wanted:
            return
        with self.db.transaction(lock=self._partition_lock) as conn:
            existing = self._existing(conn)
            for day in sorted(wanted - existing):
                conn.raw.execute("SAVEPOINT partition")
                try:
                    conn.raw.execute(
                        f"CREATE TABLE {_partition(day)} PARTITION OF display_events "
                        f"FOR VALUES FROM ({day}) TO ({day + 1})"
                    )
                    conn.raw.execute("RELEASE SAVEPOINT partition")
                    existing.add(day)
                except psycopg.errors.CheckViolation:
                    # The default partition already holds rows of that day: they stay there.
                    conn.raw.execute("ROLLBACK TO SAVEPOINT partition")
                    log.warning("day %d stays in the default partition (rows already there)", day)
            self._partitions = existing | wanted

    @staticmethod
    def _existing(conn: PgConnection) -> set[int]:
        rows = conn.raw.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'display_events'::regclass"
        ).fetchall()
        prefix = "display_events_"
        return {
            int(name[len(prefix) :])
            for (name,) in rows
            if name.startswith(prefix) and name[len(prefix) :].isdigit()
        }

    # -- the hot path -------------------------------------------------------------------

    def commit(
        self, events: Sequence[DisplayEvent]
    ) -> tuple[list[tuple[int, bool]], list[_Cell], list[int]]:
        """Log a batch in one transaction: ((event id, accepted) each, the counter cells it
        added to, the days of the first displays it made)."""
        self.ensure_partitions(sorted({e.day for e in events}))
        with self.db.transaction(lock=0) as conn:
            raw = conn.raw
            # First displays: the first show of each person in the batch, keys in order.
            shows: dict[bytes, int] = {}
            for i, e in enumerate(events):
                if e.kind == SHOW and e.outcome == OK and e.person_key is not None:
                    shows.setdefault(e.person_key, i)
            new_holders = _inserted(
                raw,
                "INSERT INTO holders (person_key, first_day) "
                "SELECT k, d FROM unnest(%s::bytea[], %s::bigint[]) AS t(k, d) ORDER BY k "
                "ON CONFLICT DO NOTHING RETURNING person_key",
                sorted(shows),
                [events[shows[k]].day for k in sorted(shows)],
            )
            first_days = [events[shows[k]].day for k in sorted(shows) if k in new_holders]
            # Token claims: the first scan of a token in the batch claims it; any other is a
            # replay, as is one whose token another batch (any worker, any pod) claimed.
            claims: dict[bytes, int] = {}
            replayed: set[int] = set()
            for i, e in enumerate(events):
                if e.kind == SCAN and e.outcome == OK and e.token_id is not None:
                    if e.token_id in claims:
                        replayed.add(i)
                    else:
                        claims[e.token_id] = i
            won = _inserted(
                raw,
                "INSERT INTO scanned_tokens (token_id, expires_at_ms) "
                "SELECT k, x FROM unnest(%s::bytea[], %s::bigint[]) AS t(k, x) ORDER BY k "
                "ON CONFLICT DO NOTHING RETURNING token_id",
                sorted(claims),
                [
                    events[claims[t]].token_expires_at_ms or events[claims[t]].at_ms
                    for t in sorted(claims)
                ],
            )
            replayed |= {i for token, i in claims.items() if token not in won}
            ids = [
                int(r[0])
                for r in raw.execute(
                    "SELECT nextval('display_events_id_seq') FROM generate_series(1, %s)",
                    (len(events),),
                )
            ]
            rows: list[tuple[Any, ...]] = []
            cells: list[_Cell] = []
            results: list[tuple[int, bool]] = []
            for event_id, (i, e) in zip(ids, enumerate(events), strict=True):
                accepted = i not in replayed
                outcome = e.outcome if accepted else TOKEN_REPLAYED
                colour = e.colour if accepted else None
                rows.append(
                    (event_id, e.kind, outcome, e.at_ms, e.day, e.person_key, e.masked_id,
                     e.masked_name, e.device, e.place, e.actor, colour, e.index_version,
                     e.rule_set_version, e.token_id, e.context, e.vehicle, e.route)
                )  # fmt: skip
                cells.append((e.day, e.kind, outcome, -1 if colour is None else colour))
                results.append((event_id, accepted))
            conn.copy_rows("display_events", _EVENT_COLUMNS, rows)
            _add_counts(raw, Tally(cells), Tally(first_days))
        return results, cells, first_days

    def read_counters(self, timeout: float | None = None) -> Counters:
        """Every worker's counters: two small tables (`timeout`: for a pooled connection)."""
        counters = Counters()
        with self.db.reading(timeout=timeout) as conn:
            for day, kind, outcome, colour, n in conn.raw.execute(
                "SELECT day, kind, outcome, colour, n FROM daily_counters"
            ):
                counters.add((int(day), kind, outcome, int(colour)), int(n))
            for day, n in conn.raw.execute("SELECT day, n FROM first_displays"):
                counters.first_displays[int(day)] = int(n)
        return counters

    # -- retention ----------------------------------------------------------------------

    def purge(
        self, now_ms: int, cutoff_ms: int, cutoff_day: int, chunk: int, purged: Purged
    ) -> Generator[None, None, None]:
        """A retention pass in short transactions: whole days are dropped, the day the window
        starts on is deleted row by row; then expired claims and holders (ledger.py). One
        process of the service purges at a time (a session lock): the others skip the pass."""
        with self.db.pool.connection() as raw:
            if not raw.execute("SELECT pg_try_advisory_lock(%s)", (self._purge_lock,)).fetchone()[
                0
            ]:  # type: ignore[index]
                return
            try:
                yield from self._purge(raw, now_ms, cutoff_ms, cutoff_day, chunk, purged)
            finally:
                raw.execute("SELECT pg_advisory_unlock(%s)", (self._purge_lock,))

    def _purge(
        self,
        raw: psycopg.Connection[Any],
        now_ms: int,
        cutoff_ms: int,
        cutoff_day: int,
        chunk: int,
        purged: Purged,
    ) -> Generator[None, None, None]:
        with self.db.transaction(lock=self._partition_lock) as conn:
            for day in sorted(self._existing(conn)):
                if day >= cutoff_day:
                    continue
                name = _partition(day)
                counted = conn.raw.execute(f"SELECT count(*) FROM {name}").fetchone()
                purged.events += int(counted[0]) if counted is not None else 0
                conn.raw.execute(f"DROP TABLE {name}")
            self._partitions = {d for d in self._partitions if d >= cutoff_day}
        yield
        done = False
        while not done:
            with self.db.transaction(lock=0) as conn:
                n = conn.raw.execute(
                    "DELETE FROM display_events WHERE (id, day) IN (SELECT id, day FROM "
                    "display_events WHERE day <= %s AND at_ms < %s LIMIT %s)",
                    (cutoff_day, cutoff_ms, chunk),
                ).rowcount
            purged.events += n
            done = n < chunk
            yield
        session = as_sqlite(PgConnection(raw))
        done = False
        while not done:
            n, done = purge_claims(session, now_ms - KEEP_EXPIRED_MS, chunk)
            purged.token_claims += n
            yield
        done = False
        while not done:
            dropped, kept, done = purge_holders(session, cutoff_day, cutoff_ms, [session], chunk)
            purged.holders += dropped
            purged.holders_kept += kept
            yield


def _inserted(
    raw: psycopg.Connection[Any], statement: str, keys: list[bytes], values: list[int]
) -> set[bytes]:
    if not keys:
        return set()
    return {bytes(r[0]) for r in raw.execute(statement, (keys, values))}


def _add_counts(raw: psycopg.Connection[Any], cells: Tally[_Cell], firsts: Tally[int]) -> None:
    """Add the batch's counts, cells in key order (workers lock shared rows in one order)."""
    if cells:
        keys = sorted(cells)
        raw.execute(
            "INSERT INTO daily_counters AS c (day, kind, outcome, colour, n) "
            "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], "
            "%s::bigint[]) ORDER BY 1, 2, 3, 4 "
            "ON CONFLICT (day, kind, outcome, colour) DO UPDATE SET n = c.n + excluded.n",
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [k[3] for k in keys],
                [cells[k] for k in keys],
            ),
        )
    if firsts:
        days = sorted(firsts)
        raw.execute(
            "INSERT INTO first_displays AS f (day, n) "
            "SELECT * FROM unnest(%s::bigint[], %s::bigint[]) ORDER BY 1 "
            "ON CONFLICT (day) DO UPDATE SET n = f.n + excluded.n",
            (days, [firsts[d] for d in days]),
        )
