"""Live counters that add up across the worker processes of one display service.

With HEALTHCODE_DISPLAY_PROCESSES > 1 each worker logs to its own file (`display.<i>.db`) and
keeps its own counters in memory, so WatchCounters at any worker must add the others' figures.
Each log already keeps per-day counters in a small table (`daily_counters`, a few hundred rows,
updated in the same transaction as the events), so a worker reads the OTHER workers' logs read
only: a poller thread asks each file whether it changed (`PRAGMA data_version`, no table read)
every quarter of a second and re-reads that small table only when it did. No worker writes a
shared counter on the hot path, and a log left by a worker of an earlier run (more workers then,
or `display.db` from a single-process run) still counts: totals are totals.

Applicants (people on the day of their first display) are not additive over logs (one person
may show through two workers), so they come from the shared file's `first_displays`
(services/display/ledger.py).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from services.display.ledger import read_first_displays
from services.display.store import Counters, DayCounters, DisplayLog

log = logging.getLogger(__name__)

# display.db (one process) and display.<i>.db (worker i)
_LOG_NAME = re.compile(r"display(\.\d+)?\.db")


class CounterSource(Protocol):
    """What WatchCounters reads: a `DisplayLog`, or `SummedCounters` over several."""

    def counters(self, day: int) -> DayCounters: ...

    def wait_for_change(self, day: int, after_sequence: int, timeout: float) -> DayCounters: ...


def log_files(directory: Path) -> list[Path]:
    """Every display log in `directory` (display.db and display.<i>.db)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _LOG_NAME.fullmatch(p.name))


def _read_only(path: Path) -> sqlite3.Connection:
    # Opened by the constructor, then used by the poller thread only.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=1000")
    return conn


class _Follower:
    """One other file, read only; re-read only when `PRAGMA data_version` moves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = _read_only(path)
        self.version: int | None = None

    def changed(self) -> bool:
        version = int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self.version:
            return False
        self.version = version
        return True


class SummedCounters:
    """This worker's live counters plus those of every other display log in its directory."""

    def __init__(
        self, own: DisplayLog, own_path: Path, shared_path: Path, poll_s: float = 0.25
    ) -> None:
        self._own = own
        self._own_path = own_path.resolve()
        self._shared_path = shared_path
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._others = Counters()  # cells of the other logs; first_displays from shared
        self._external = 0  # bumps whenever another file changed what we report
        self._logs: dict[Path, tuple[_Follower, dict[tuple[int, str, str, int], int]]] = {}
        self._shared: _Follower | None = None
        self._stop = threading.Event()
        self._refresh()
        self._thread = threading.Thread(target=self._poll, name="counters-poller", daemon=True)
        self._thread.start()

    def counters(self, day: int) -> DayCounters:
        return self._combine(self._own.counters(day), day)

    def wait_for_change(self, day: int, after_sequence: int, timeout: float) -> DayCounters:
        """As `DisplayLog.wait_for_change`, over the sum: this worker's changes wake it at once,
        the others' within a poll interval."""
        remaining = timeout
        step = max(0.05, self._poll_s)
        while True:
            with self._lock:
                external = self._external
            wait = min(step, remaining)
            own = self._own.wait_for_change(day, after_sequence - external, max(0.0, wait))
            combined = self._combine(own, day)
            remaining -= wait
            if combined.sequence > after_sequence or remaining <= 0:
                return combined

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for follower, _cells in self._logs.values():
            follower.conn.close()
        if self._shared is not None:
            self._shared.conn.close()

    # -- combining ----------------------------------------------------------------------

    def _combine(self, own: DayCounters, day: int) -> DayCounters:
        with self._lock:
            other = self._others.day_view(day)
            external = self._external

        def add3(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
            return (a[0] + b[0], a[1] + b[1], a[2] + b[2])

        return DayCounters(
            day=day,
            displays=own.displays + other.displays,
            scans=own.scans + other.scans,
            refused_scans=own.refused_scans + other.refused_scans,
            # Applicants from the shared ledger only (other.first_displays), never per log.
            applicants=other.applicants,
            displays_by_colour=add3(own.displays_by_colour, other.displays_by_colour),
            scans_by_colour=add3(own.scans_by_colour, other.scans_by_colour),
            total_displays=own.total_displays + other.total_displays,
            total_scans=own.total_scans + other.total_scans,
            total_applicants=other.total_applicants,
            sequence=own.sequence + external,
        )

    # -- the poller ---------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self._refresh()
            except Exception:  # a bad read must not end the poller
                log.exception("reading the other workers' counters failed; retrying")

    def _refresh(self) -> None:
        changed = False
        for path in log_files(self._own_path.parent):
            if path.resolve() == self._own_path or path in self._logs:
                continue
            try:
                self._logs[path] = (_Follower(path), {})
            except sqlite3.Error as exc:
                log.debug("cannot open %s yet: %s", path, exc)
        for path, (follower, _cells) in list(self._logs.items()):
            try:
                if not follower.changed():
                    continue
                rows = follower.conn.execute(
                    "SELECT day, kind, outcome, colour, n FROM daily_counters"
                ).fetchall()
            except sqlite3.Error as exc:
                # A log being created (no table yet) or removed: try again next round.
                log.debug("cannot read %s: %s", path, exc)
                follower.version = None
                continue
            self._logs[path] = (follower, {(d, k, o, c): n for d, k, o, c, n in rows})
            changed = True
        firsts: dict[int, int] | None = None
        try:
            if self._shared is None and self._shared_path.exists():
                self._shared = _Follower(self._shared_path)
            if self._shared is not None and self._shared.changed():
                firsts = read_first_displays(self._shared.conn)
        except sqlite3.Error as exc:
            log.debug("cannot read %s: %s", self._shared_path, exc)
            if self._shared is not None:
                self._shared.version = None
        if not changed and firsts is None:
            return
        with self._lock:
            if changed:
                cells: dict[tuple[int, str, str, int], int] = {}
                for _follower, file_cells in self._logs.values():
                    for cell, n in file_cells.items():
                        cells[cell] = cells.get(cell, 0) + n
                self._others.cells = cells
            if firsts is not None:
                self._others.first_displays = firsts
            self._external += 1
