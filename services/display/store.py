"""The durable display log (R9) and the live counters read from it.

Every Show and Scan is one row, committed before the caller gets its reply. One writer thread
owns the SQLite connection and commits whatever has queued up in one transaction (group commit):
under a midnight peak many displays share one fsync instead of paying one each, and a caller is
still only answered once its own row is on disk.

Counters are kept per (day, kind, colour) in a small table updated in the same transaction, so a
restart reads totals from a few hundred rows instead of scanning a billion events.

No raw identifier is stored: a person appears as the 16-byte keyed hash plus masked text.

Retention (R15): with `retention_ms` (HEALTHCODE_DISPLAY_RETENTION_DAYS, services/display/
config.py) the writer thread purges, at start and then every `purge_interval_s`, the events
older than the window and the per-person rows kept only for them: claims of expired tokens, and
holders with no event inside the window (those with one keep their row, its day moved into the
window: services/display/ledger.py `purge_holders`). The per-day counters (`daily_counters`,
`first_displays`) are aggregates and stay, so the figures of every day, kept or not, and the
totals are unchanged. A pass is a series of small transactions (`purge_chunk` rows each) taken
between two group commits, so a display never waits for more than one chunk; one log line per
pass gives the counts. Deleted rows are overwritten (`secure_delete`) and the WAL is truncated
after a pass when no reader holds it. With several workers, worker 0 also purges the shared
file. The log is in time order (ids grow with time): a row logged out of order, after a step
back of the clock, goes once the rows before it have.

On PostgreSQL (HEALTHCODE_STORAGE=postgresql) the same writer thread and group commit write one
log shared by every worker and pod, partitioned by day and filled by COPY:
services/display/store_pg.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from services._common.days import SHANGHAI, day_number
from services._common.places import PgPlace
from services._common.storage import open_sqlite
from services.display.ledger import (
    KEEP_EXPIRED_MS,
    SharedLedger,
    purge_claims,
    purge_holders,
    truncate_wal,
    write_transaction,
)
from services.display.tokens import TokenReplayed

if TYPE_CHECKING:
    from services.display.store_pg import PgLog

log = logging.getLogger(__name__)

SHOW = "show"
SCAN = "scan"  # a code token scanned
LOOKUP = "lookup"  # a verifier read an ID card (代查): counted with scans
OK = "OK"
# A scan of a token scanned before is logged with the refusal's own reason.
TOKEN_REPLAYED = TokenReplayed.reason
# On PostgreSQL, how often an idle writer re-reads the counters every worker writes.
PG_COUNTER_POLL_S = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS display_events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('show', 'scan', 'lookup')),
    outcome TEXT NOT NULL,             -- OK, or why a scan was refused (TOKEN_EXPIRED, ...)
    at_ms INTEGER NOT NULL,            -- Unix time, ms
    day INTEGER NOT NULL,              -- Asia/Shanghai day number (days since 1970-01-01)
    person_key BLOB,                   -- 16-byte keyed hash; NULL when a token was unreadable
    masked_id TEXT NOT NULL DEFAULT '',
    masked_name TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL,
    place TEXT NOT NULL,
    actor TEXT NOT NULL DEFAULT '',    -- the verifier (scan) or proxy (show) who acted
    colour INTEGER,                    -- 0 green, 1 yellow, 2 red; NULL when refused
    index_version INTEGER,
    rule_set_version TEXT,
    token_id BLOB,
    context TEXT NOT NULL DEFAULT '',  -- where the verifier works: bus, exam, hospital, venue, ...
    vehicle TEXT NOT NULL DEFAULT '',  -- a bus scan's vehicle and route (R11)
    route TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS display_events_person ON display_events (person_key, at_ms);
-- A token may be scanned once: its id is claimed here in the scan's own transaction.
CREATE TABLE IF NOT EXISTS scanned_tokens (
    token_id BLOB PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- Everyone who displayed a code, with the day of their first display (applicants); past the
-- retention window, only people with an event inside it, with the day of their last one.
CREATE TABLE IF NOT EXISTS holders (
    person_key BLOB PRIMARY KEY,
    first_day INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holders_first_day ON holders (first_day);
-- New holders per day (this log's applicants): an aggregate, kept past the retention window.
CREATE TABLE IF NOT EXISTS first_displays (
    day INTEGER PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS daily_counters (
    day INTEGER NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    colour INTEGER NOT NULL,           -- -1 when there was no colour (a refused scan)
    n INTEGER NOT NULL,
    PRIMARY KEY (day, kind, outcome, colour)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class DisplayEvent:
    """One display or scan, as it will be logged."""

    kind: str
    outcome: str
    at_ms: int
    day: int
    person_key: bytes | None
    device: str
    place: str
    masked_id: str = ""
    masked_name: str = ""
    actor: str = ""
    colour: int | None = None
    index_version: int | None = None
    rule_set_version: str | None = None
    token_id: bytes | None = None
    token_expires_at_ms: int | None = None
    context: str = ""  # the verifier's context (scans and look-ups)
    vehicle: str = ""
    route: str = ""


@dataclass(frozen=True, slots=True)
class DayCounters:
    """One day's figures and the all-time totals, as WatchCounters reports them."""

    day: int
    displays: int
    scans: int
    refused_scans: int
    applicants: int
    displays_by_colour: tuple[int, int, int]  # green, yellow, red
    scans_by_colour: tuple[int, int, int]
    total_displays: int
    total_scans: int
    total_applicants: int
    sequence: int


@dataclass(slots=True)
class Counters:
    """Counts per (day, kind, outcome, colour) cell, plus first displays per day."""

    cells: dict[tuple[int, str, str, int], int] = field(default_factory=dict)
    first_displays: dict[int, int] = field(default_factory=dict)  # day -> new holders
    sequence: int = 0  # bumps on every committed change

    def add(self, cell: tuple[int, str, str, int], n: int = 1) -> None:
        self.cells[cell] = self.cells.get(cell, 0) + n

    def day_view(self, day: int) -> DayCounters:
        displays = [0, 0, 0]
        scans = [0, 0, 0]
        refused = total_displays = total_scans = 0
        for (d, kind, outcome, colour), n in self.cells.items():
            accepted = outcome == OK
            if kind == SHOW:
                total_displays += n
            elif accepted:
                total_scans += n
            if d != day:
                continue
            if not accepted:
                refused += n
            elif 0 <= colour <= 2:
                (displays if kind == SHOW else scans)[colour] += n
        return DayCounters(
            day=day,
            displays=sum(displays),
            scans=sum(scans),
            refused_scans=refused,
            applicants=self.first_displays.get(day, 0),
            displays_by_colour=(displays[0], displays[1], displays[2]),
            scans_by_colour=(scans[0], scans[1], scans[2]),
            total_displays=total_displays,
            total_scans=total_scans,
            total_applicants=sum(self.first_displays.values()),
            sequence=self.sequence,
        )


@dataclass(frozen=True, slots=True)
class Recorded:
    """The outcome of logging one event."""

    event_id: int
    # False only for a scan whose token had already been scanned (logged as TOKEN_REPLAYED).
    accepted: bool


@dataclass(slots=True)
class Purged:
    """What one retention pass deleted."""

    events: int = 0
    token_claims: int = 0
    holders: int = 0  # dropped: no event inside the window
    holders_kept: int = 0  # an event inside the window: kept, their day moved into it
    # The shared file (worker 0 of several): claims and holders of the service.
    shared_token_claims: int = 0
    shared_holders: int = 0
    shared_holders_kept: int = 0


_Job = tuple[DisplayEvent, "Future[Recorded]"]
# A display to log, a purge asked for (answered when a pass that started after it ends), or
# None: stop.
_Item: TypeAlias = "_Job | Future[Purged] | None"


class DisplayLog:
    """The log's one writer, and the counters it keeps.

    `record` blocks until the event is committed. A scan's token id is claimed in the same
    transaction, so two scans of one token (even in one batch) cannot both be accepted. With
    `shared` (several worker processes, each with its own log) the claim is made in the shared
    file within the batch, just before the batch commits here (services/display/ledger.py).
    """

    def __init__(
        self,
        path: Path | PgPlace,
        *,
        max_batch: int = 512,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        shared: Path | None = None,
        retention_ms: int | None = None,
        purge_interval_s: float = 3600.0,
        purge_chunk: int = 1000,
        purges_shared: bool = False,
    ) -> None:
        """`path`: this log's SQLite file, or the service's PostgreSQL schema (one log for every
        worker and pod: services/display/store_pg.py; `shared` is then not needed). `shared`:
        the file the workers of one service share (services/display/ledger.py); token claims
        and first displays go there instead of into this log. `retention_ms`:
        purge what is older (None: keep everything), at start and every `purge_interval_s`,
        `purge_chunk` rows per transaction; `purges_shared`: this worker also purges the
        shared file (one worker does)."""
        self._pg: PgLog | None = None
        if isinstance(path, PgPlace):
            # One table for every worker: claims and first displays need no shared file.
            from services.display.store_pg import PgLog  # it imports this module

            self._pg = PgLog(path)
            path, shared = Path(path.schema), None
        self._path = path
        self._shared_path = shared
        self._shared: SharedLedger | None = None
        self._max_batch = max_batch
        # Told the size of each group commit (services/_common/metrics.py sets it).
        self.on_commit: Callable[[int], None] | None = None
        self._clock_ms = clock_ms
        self._retention_ms = retention_ms
        self._purge_interval_s = purge_interval_s
        self._purge_chunk = max(1, purge_chunk)
        self._purges_shared = purges_shared
        self._purges = 0
        self._last_purged: Purged | None = None
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._counters = Counters()
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._last_prune_ms = 0
        self._last_refresh = 0.0
        self._thread = threading.Thread(target=self._run, name="display-log-writer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def record(self, event: DisplayEvent, timeout: float = 10.0) -> Recorded:
        """Log `event` durably and say whether it was accepted."""
        if not self._thread.is_alive():
            raise RuntimeError("the display log is closed")
        done: Future[Recorded] = Future()
        self._queue.put((event, done))
        return done.result(timeout=timeout)

    def counters(self, day: int) -> DayCounters:
        with self._changed:
            return self._counters.day_view(day)

    def wait_for_change(self, day: int, after_sequence: int, timeout: float) -> DayCounters:
        """The counters once their sequence passes `after_sequence`, or as they are at timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._counters.sequence > after_sequence, timeout)
            return self._counters.day_view(day)

    def purge(self, timeout: float = 60.0) -> Purged:
        """Run a retention pass now (after the one under way, if any); what it deleted."""
        if self._retention_ms is None:
            raise RuntimeError("this display log has no retention period")
        if not self._thread.is_alive():
            raise RuntimeError("the display log is closed")
        done: Future[Purged] = Future()
        self._queue.put(done)
        return done.result(timeout=timeout)

    def wait_purged(self, passes: int = 1, timeout: float = 60.0) -> Purged | None:
        """What the last retention pass deleted, once `passes` have ended since the start
        (the first one runs at start); None if they have not within `timeout`."""
        with self._changed:
            self._changed.wait_for(lambda: self._purges >= passes, timeout)
            return self._last_purged if self._purges >= passes else None

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        if self._pg is not None:
            self._run_pg(self._pg)
            return
        try:
            conn = open_sqlite(self._path)
            conn.isolation_level = None  # explicit BEGIN/COMMIT: one transaction per batch
            # WAL with synchronous=FULL: a committed display survives power loss, not only a
            # process crash; group commit keeps the fsync count down.
            conn.execute("PRAGMA synchronous=FULL")
            # Purged rows are overwritten on disk, not left in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            had_first_displays = _has_table(conn, "first_displays")
            _add_scan_context(conn)  # before the schema's IF NOT EXISTS: a log from before
            conn.executescript(_SCHEMA)
            if not had_first_displays:
                # A log from before first_displays: applicants were counted from holders.
                conn.execute(
                    "INSERT OR IGNORE INTO first_displays (day, n) "
                    "SELECT first_day, COUNT(*) FROM holders GROUP BY first_day"
                )
            self._load_counters(conn)
            if self._shared_path is not None:
                self._shared = SharedLedger(self._shared_path)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._serve(conn)
        finally:
            conn.close()
            if self._shared is not None:
                self._shared.close()

    def _run_pg(self, pg: PgLog) -> None:
        try:
            pg.start(self._clock_ms())
            self._replace_counters(pg.read_counters())
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            self._startup_error = exc
            self._ready.set()
            pg.close()
            return
        self._ready.set()
        try:
            self._serve(None)
        finally:
            pg.close()

    def _replace_counters(self, read: Counters) -> None:
        """The counters as the database holds them (every worker's), if they moved."""
        with self._changed:
            if (read.cells, read.first_displays) == (
                self._counters.cells,
                self._counters.first_displays,
            ):
                return
            self._counters.cells = read.cells
            self._counters.first_displays = read.first_displays
            self._counters.sequence += 1
            self._changed.notify_all()

    def _serve(self, conn: sqlite3.Connection | None) -> None:
        """Commit what queues up, batch by batch; between two batches, one step of a
        retention pass when one is under way."""
        purging: Generator[None, None, Purged] | None = None
        answering: list[Future[Purged]] = []  # answered when the pass under way ends
        asked: list[Future[Purged]] = []  # asked meanwhile: answered by the next pass
        next_pass = time.monotonic() if self._retention_ms is not None else math.inf
        try:
            while True:
                if purging is None and (asked or time.monotonic() >= next_pass):
                    purging = self._purge_pass(conn) if conn is not None else self._purge_pass_pg()
                    answering, asked = asked, []
                if purging is not None:
                    timeout: float | None = 0.0
                elif math.isinf(next_pass):
                    timeout = None
                else:
                    timeout = max(0.0, next_pass - time.monotonic())
                if self._pg is not None:
                    # Other workers (and pods) write the same counters: re-read them when idle.
                    timeout = (
                        PG_COUNTER_POLL_S if timeout is None else min(timeout, PG_COUNTER_POLL_S)
                    )
                    self._refresh_pg_counters()
                batch: list[_Job] = []
                stop = False
                try:
                    item = self._queue.get(timeout=timeout)
                    while True:
                        if item is None:
                            stop = True
                            break
                        if isinstance(item, Future):
                            asked.append(item)
                        else:
                            batch.append(item)
                            if len(batch) >= self._max_batch:
                                break
                        item = self._queue.get_nowait()
                except queue.Empty:
                    pass
                if batch and conn is not None:
                    self._commit(conn, batch)
                elif batch:
                    self._commit_pg(batch)
                if stop:
                    return
                if purging is None:
                    continue
                try:
                    next(purging)
                    continue
                except StopIteration as end:
                    purged: Purged = end.value
                    self._purged(purged)
                    for waiter in answering:
                        waiter.set_result(purged)
                except Exception as exc:
                    log.exception("purging the display log %s failed", self._path.name)
                    for waiter in answering:
                        waiter.set_exception(exc)
                purging, answering = None, []
                next_pass = time.monotonic() + self._purge_interval_s
        finally:
            if purging is not None:
                purging.close()
            for waiter in answering + asked:
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the display log is closed"))

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        results: list[Recorded] = []
        cells: list[tuple[int, str, str, int]] = []
        first_days: list[int] = []
        claimed_shared: list[bytes] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            # People this log has not seen before (first displays, if no other worker saw them).
            new_here: list[int] = []
            for i, (event, _) in enumerate(batch):
                if event.kind == SHOW and event.outcome == OK and event.person_key is not None:
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO holders (person_key, first_day) VALUES (?, ?)",
                        (event.person_key, event.day),
                    )
                    if cur.rowcount == 1:
                        new_here.append(i)
            claims = [
                i
                for i, (event, _) in enumerate(batch)
                if event.kind == SCAN and event.outcome == OK and event.token_id is not None
            ]
            replayed: set[int] = set()
            if self._shared is None:
                for i in claims:
                    event = batch[i][0]
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO scanned_tokens (token_id, expires_at_ms) "
                        "VALUES (?, ?)",
                        (event.token_id, event.token_expires_at_ms or event.at_ms),
                    )
                    if cur.rowcount == 0:
                        replayed.add(i)
                first_days.extend(batch[i][0].day for i in new_here)
            elif claims or new_here:
                # Several workers: the claim and the first display are the service's, not this
                # log's (services/display/ledger.py).
                won, first = self._shared.settle(
                    [
                        (
                            batch[i][0].token_id or b"",
                            batch[i][0].token_expires_at_ms or batch[i][0].at_ms,
                        )
                        for i in claims
                    ],
                    [(batch[i][0].person_key or b"", batch[i][0].day) for i in new_here],
                    self._clock_ms(),
                    prune=self._prune_due(),
                )
                for i, ok in zip(claims, won, strict=True):
                    if ok:
                        claimed_shared.append(batch[i][0].token_id or b"")
                    else:
                        replayed.add(i)
                first_days.extend(
                    batch[i][0].day for i, new in zip(new_here, first, strict=True) if new
                )
            for day in first_days:
                conn.execute(
                    "INSERT INTO first_displays (day, n) VALUES (?, 1) "
                    "ON CONFLICT (day) DO UPDATE SET n = n + 1",
                    (day,),
                )
            for i, (event, _) in enumerate(batch):
                accepted = i not in replayed
                outcome = event.outcome if accepted else TOKEN_REPLAYED
                colour = event.colour if accepted else None
                cur = conn.execute(
                    "INSERT INTO display_events (kind, outcome, at_ms, day, person_key, "
                    "masked_id, masked_name, device, place, actor, colour, index_version, "
                    "rule_set_version, token_id, context, vehicle, route) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        event.kind,
                        outcome,
                        event.at_ms,
                        event.day,
                        event.person_key,
                        event.masked_id,
                        event.masked_name,
                        event.device,
                        event.place,
                        event.actor,
                        colour,
                        event.index_version,
                        event.rule_set_version,
                        event.token_id,
                        event.context,
                        event.vehicle,
                        event.route,
                    ),
                )
                event_id = cur.lastrowid or 0
                cell = (event.day, event.kind, outcome, -1 if colour is None else colour)
                conn.execute(
                    "INSERT INTO daily_counters (day, kind, outcome, colour, n) "
                    "VALUES (?,?,?,?,1) ON CONFLICT (day, kind, outcome, colour) "
                    "DO UPDATE SET n = n + 1",
                    cell,
                )
                cells.append(cell)
                results.append(Recorded(event_id, accepted))
            if self._shared is None and self._prune_due():
                self._prune(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            log.exception("display log commit failed; %d callers get an error", len(batch))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if self._shared is not None:
                # Those scans were not logged: their tokens may be scanned again.
                self._shared.release(claimed_shared)
            for _, done in batch:
                done.set_exception(exc)
            return
        self._committed(batch, results, cells, first_days)

    def _committed(
        self,
        batch: list[_Job],
        results: list[Recorded],
        cells: list[tuple[int, str, str, int]],
        first_days: list[int],
    ) -> None:
        """The batch is durable: count it, then answer its callers."""
        with self._changed:
            for cell in cells:
                self._counters.add(cell)
            for day in first_days:
                self._counters.first_displays[day] = self._counters.first_displays.get(day, 0) + 1
            self._counters.sequence += 1
            self._changed.notify_all()
        if self.on_commit is not None:
            self.on_commit(len(batch))
        for (_, done), recorded in zip(batch, results, strict=True):
            done.set_result(recorded)

    def _prune_due(self) -> bool:
        # Prune claims of expired tokens at most once a minute.
        now = self._clock_ms()
        if now - self._last_prune_ms < 60_000:
            return False
        self._last_prune_ms = now
        return True

    def _prune(self, conn: sqlite3.Connection) -> None:
        # Expired tokens can no longer be replayed (they fail the freshness check first), so
        # their ids need not be kept.
        now = self._clock_ms()
        conn.execute("DELETE FROM scanned_tokens WHERE expires_at_ms < ?", (now - KEEP_EXPIRED_MS,))

    # -- retention ------------------------------------------------------------------------

    def _purge_pass(self, conn: sqlite3.Connection) -> Generator[None, None, Purged]:
        """One retention pass: each step (up to the next `yield`) is one short transaction."""
        assert self._retention_ms is not None
        now = self._clock_ms()
        cutoff_ms = now - self._retention_ms
        cutoff_day = day_number(dt.datetime.fromtimestamp(cutoff_ms / 1000, SHANGHAI))
        chunk = self._purge_chunk
        purged = Purged()
        done = False
        while not done:
            n, done = _purge_events(conn, cutoff_ms, chunk)
            purged.events += n
            yield
        done = False
        while not done:
            n, done = purge_claims(conn, now - KEEP_EXPIRED_MS, chunk)
            purged.token_claims += n
            yield
        done = False
        while not done:
            dropped, kept, done = purge_holders(conn, cutoff_day, cutoff_ms, [conn], chunk)
            purged.holders += dropped
            purged.holders_kept += kept
            yield
        if self._shared is not None and self._purges_shared:
            yield from self._purge_shared(self._shared, now, cutoff_ms, cutoff_day, purged)
        truncate_wal(conn)
        return purged

    def _purge_shared(
        self, shared: SharedLedger, now: int, cutoff_ms: int, cutoff_day: int, purged: Purged
    ) -> Generator[None, None, None]:
        # counters.py imports this module; its list of the directory's logs is wanted here.
        from services.display.counters import log_files

        chunk = self._purge_chunk
        done = False
        while not done:
            n, done = shared.purge_claims(now - KEEP_EXPIRED_MS, chunk)
            purged.shared_token_claims += n
            yield
        # A holder of the service is kept if any worker's log (display.<i>.db, or a
        # display.db left by a single-process run) names them inside the window.
        logs = [
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
            for path in log_files(self._path.parent)
        ]
        try:
            # Each person is looked up in every log: fewer people per step with more logs.
            per_step = max(1, chunk // max(1, len(logs)))
            done = False
            while not done:
                dropped, kept, done = shared.purge_holders(cutoff_day, cutoff_ms, logs, per_step)
                purged.shared_holders += dropped
                purged.shared_holders_kept += kept
                yield
        finally:
            for events in logs:
                events.close()
        shared.truncate_wal()

    def _purged(self, purged: Purged) -> None:
        days = (self._retention_ms or 0) / 86_400_000
        shared = (
            f"; shared file: {purged.shared_token_claims} token claims, "
            f"{purged.shared_holders} holders ({purged.shared_holders_kept} kept)"
            if self._shared is not None and self._purges_shared
            else ""
        )
        log.info(
            "display log %s, retention %g days: purged %d events, %d token claims, %d holders; "
            "%d holders kept (an event inside the window)%s",
            self._path.name,
            days,
            purged.events,
            purged.token_claims,
            purged.holders,
            purged.holders_kept,
            shared,
        )
        with self._changed:
            self._purges += 1
            self._last_purged = purged
            self._changed.notify_all()

    # -- PostgreSQL (services/display/store_pg.py) ---------------------------------------------

    def _refresh_pg_counters(self) -> None:
        assert self._pg is not None
        now = time.monotonic()
        if now - self._last_refresh < PG_COUNTER_POLL_S:
            return
        self._last_refresh = now
        try:
            # Briefly: the database away must not hold up the commits queued behind.
            self._replace_counters(self._pg.read_counters(timeout=PG_COUNTER_POLL_S))
        except Exception as exc:  # noqa: BLE001 - the database away: the next round tries again
            log.debug("reading the display counters failed: %s", exc)

    def _commit_pg(self, batch: list[_Job]) -> None:
        assert self._pg is not None
        try:
            results, cells, first_days = self._pg.commit([event for event, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch gets it
            log.warning("display log commit failed; %d callers get an error: %s", len(batch), exc)
            for _, done in batch:
                done.set_exception(exc)
            return
        self._committed(batch, [Recorded(i, ok) for i, ok in results], cells, first_days)

    def _purge_pass_pg(self) -> Generator[None, None, Purged]:
        assert self._retention_ms is not None and self._pg is not None
        now = self._clock_ms()
        cutoff_ms = now - self._retention_ms
        cutoff_day = day_number(dt.datetime.fromtimestamp(cutoff_ms / 1000, SHANGHAI))
        purged = Purged()
        yield from self._pg.purge(now, cutoff_ms, cutoff_day, self._purge_chunk, purged)
        return purged

    def _load_counters(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT day, kind, outcome, colour, n FROM daily_counters").fetchall()
        firsts = conn.execute("SELECT day, n FROM first_displays").fetchall()
        with self._changed:
            for day, kind, outcome, colour, n in rows:
                self._counters.add((day, kind, outcome, colour), n)
            for day, n in firsts:
                self._counters.first_displays[day] = n


def _add_scan_context(conn: sqlite3.Connection) -> None:
    """A log from before scan contexts (issue 11) gets their columns; its rows keep ''."""
    if not _has_table(conn, "display_events"):
        return
    have = {row[1] for row in conn.execute("PRAGMA table_info(display_events)")}
    for column in ("context", "vehicle", "route"):
        if column not in have:
            conn.execute(f"ALTER TABLE display_events ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def _purge_events(conn: sqlite3.Connection, cutoff_ms: int, chunk: int) -> tuple[int, bool]:
    """Delete, in one transaction, the events logged before `cutoff_ms` among the `chunk`
    oldest: (how many, whether the window's start was reached). Ids grow with time, so the
    oldest rows come first and no index on the time is needed on the hot path."""
    rows = conn.execute(
        "SELECT id, at_ms FROM display_events ORDER BY id LIMIT ?", (chunk,)
    ).fetchall()
    old = [(int(row[0]),) for row in rows if int(row[1]) < cutoff_ms]
    if old:
        with write_transaction(conn):
            conn.executemany("DELETE FROM display_events WHERE id = ?", old)
    return len(old), len(old) < len(rows) or len(rows) < chunk
