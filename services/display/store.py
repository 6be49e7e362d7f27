"""The durable display log (R9) and the live counters read from it.

Every Show and Scan is one row, committed before the caller gets its reply. One writer thread
owns the SQLite connection and commits whatever has queued up in one transaction (group commit):
under a midnight peak many displays share one fsync instead of paying one each, and a caller is
still only answered once its own row is on disk.

Counters are kept per (day, kind, colour) in a small table updated in the same transaction, so a
restart reads totals from a few hundred rows instead of scanning a billion events.

No raw identifier is stored: a person appears as the 16-byte keyed hash plus masked text.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from services._common.storage import open_sqlite
from services.display.ledger import SharedLedger
from services.display.tokens import TokenReplayed

log = logging.getLogger(__name__)

SHOW = "show"
SCAN = "scan"  # a code token scanned
LOOKUP = "lookup"  # a verifier read an ID card (代查): counted with scans
OK = "OK"
# A scan of a token scanned before is logged with the refusal's own reason.
TOKEN_REPLAYED = TokenReplayed.reason

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
    token_id BLOB
);
CREATE INDEX IF NOT EXISTS display_events_person ON display_events (person_key, at_ms);
-- A token may be scanned once: its id is claimed here in the scan's own transaction.
CREATE TABLE IF NOT EXISTS scanned_tokens (
    token_id BLOB PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
-- Everyone who ever displayed a code, with the day of their first display (applicants).
CREATE TABLE IF NOT EXISTS holders (
    person_key BLOB PRIMARY KEY,
    first_day INTEGER NOT NULL
) WITHOUT ROWID;
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


_Job = tuple[DisplayEvent, "Future[Recorded]"]


class DisplayLog:
    """The log's one writer, and the counters it keeps.

    `record` blocks until the event is committed. A scan's token id is claimed in the same
    transaction, so two scans of one token (even in one batch) cannot both be accepted. With
    `shared` (several worker processes, each with its own log) the claim is made in the shared
    file within the batch, just before the batch commits here (services/display/ledger.py).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = 512,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        shared: Path | None = None,
    ) -> None:
        """`shared`: the file the workers of one service share (services/display/ledger.py);
        token claims and first displays go there instead of into this log."""
        self._path = path
        self._shared_path = shared
        self._shared: SharedLedger | None = None
        self._max_batch = max_batch
        self._clock_ms = clock_ms
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._counters = Counters()
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._last_prune_ms = 0
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

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = open_sqlite(self._path)
            conn.isolation_level = None  # explicit BEGIN/COMMIT: one transaction per batch
            # WAL with synchronous=FULL: a committed display survives power loss, not only a
            # process crash; group commit keeps the fsync count down.
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            self._load_counters(conn)
            if self._shared_path is not None:
                self._shared = SharedLedger(self._shared_path)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                self._commit(conn, batch)
                if stop:
                    return
        finally:
            conn.close()
            if self._shared is not None:
                self._shared.close()

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
            for i, (event, _) in enumerate(batch):
                accepted = i not in replayed
                outcome = event.outcome if accepted else TOKEN_REPLAYED
                colour = event.colour if accepted else None
                cur = conn.execute(
                    "INSERT INTO display_events (kind, outcome, at_ms, day, person_key, "
                    "masked_id, masked_name, device, place, actor, colour, index_version, "
                    "rule_set_version, token_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
        with self._changed:
            for cell in cells:
                self._counters.add(cell)
            for day in first_days:
                self._counters.first_displays[day] = self._counters.first_displays.get(day, 0) + 1
            self._counters.sequence += 1
            self._changed.notify_all()
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
        conn.execute("DELETE FROM scanned_tokens WHERE expires_at_ms < ?", (now - 120_000,))

    def _load_counters(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT day, kind, outcome, colour, n FROM daily_counters").fetchall()
        firsts = conn.execute(
            "SELECT first_day, COUNT(*) FROM holders GROUP BY first_day"
        ).fetchall()
        with self._changed:
            for day, kind, outcome, colour, n in rows:
                self._counters.add((day, kind, outcome, colour), n)
            for day, n in firsts:
                self._counters.first_displays[day] = n
