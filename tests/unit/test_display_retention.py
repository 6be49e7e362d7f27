"""Retention of the display log (issue 10, privacy): records older than the window are purged
with the per-person rows kept only for them; newer ones stay; the counters stay right. A test
clock, no sleeping: a pass is asked for (`purge`) or awaited (`wait_purged`, the start pass)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from services._common.config import ConfigError
from services._common.days import SHANGHAI, day_number
from services.display.config import DEFAULT_RETENTION_DAYS, DisplayConfig
from services.display.ledger import SHARED_FILE, create_ledger
from services.display.store import (
    LOOKUP,
    OK,
    SCAN,
    SHOW,
    DayCounters,
    DisplayEvent,
    DisplayLog,
    Purged,
)

DAY_MS = 86_400_000
RETENTION_MS = 30 * DAY_MS
T0 = int(dt.datetime(2025, 3, 1, 12, 0, tzinfo=SHANGHAI).timestamp() * 1000)
OLD = T0 - 40 * DAY_MS  # outside the 30-day window
EDGE = T0 - 29 * DAY_MS  # inside it
RECENT = T0 - 5 * DAY_MS
KEY_A = b"A" * 16  # shown and scanned only 40 days ago
KEY_B = b"B" * 16  # first shown 40 days ago, again 5 days ago
KEY_C = b"C" * 16  # shown only inside the window


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def _day(at_ms: int) -> int:
    return day_number(dt.datetime.fromtimestamp(at_ms / 1000, SHANGHAI))


def _show(key: bytes, at_ms: int, colour: int = 0) -> DisplayEvent:
    return DisplayEvent(
        SHOW, OK, at_ms, _day(at_ms), key, "phone-1", "gate 2", "12**3X", "张*", "c", colour
    )


def _scan(key: bytes, at_ms: int, token_id: bytes, colour: int = 0) -> DisplayEvent:
    return DisplayEvent(
        SCAN,
        OK,
        at_ms,
        _day(at_ms),
        key,
        "scanner-1",
        "bus 632",
        colour=colour,
        token_id=token_id,
        token_expires_at_ms=at_ms + 60_000,
    )


def _lookup(key: bytes, at_ms: int) -> DisplayEvent:
    return DisplayEvent(LOOKUP, OK, at_ms, _day(at_ms), key, "desk-1", "clinic", colour=1)


def _rows(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def _keys_in(path: Path, table: str) -> set[bytes]:
    return {bytes(row[0]) for row in _rows(path, f"SELECT person_key FROM {table}") if row[0]}


def _fill(log: DisplayLog) -> None:
    """Three people: A only long ago, B long ago and lately, C lately only."""
    log.record(_show(KEY_A, OLD, colour=2))
    log.record(_scan(KEY_A, OLD + 1_000, b"a" * 16, colour=2))
    log.record(_show(KEY_B, OLD + 2_000))
    log.record(_lookup(KEY_B, OLD + 3_000))
    log.record(_show(KEY_B, RECENT))
    log.record(_scan(KEY_B, RECENT + 1_000, b"b" * 16))
    log.record(_show(KEY_C, EDGE, colour=1))
    log.record(_show(KEY_C, RECENT + 2_000, colour=1))


DAYS = (_day(OLD), _day(EDGE), _day(RECENT))


def _views(log: DisplayLog) -> list[DayCounters]:
    # `sequence` moves with every commit; the figures are what must not.
    return [_figures(log.counters(day)) for day in DAYS]


def _figures(c: DayCounters) -> DayCounters:
    return DayCounters(
        c.day,
        c.displays,
        c.scans,
        c.refused_scans,
        c.applicants,
        c.displays_by_colour,
        c.scans_by_colour,
        c.total_displays,
        c.total_scans,
        c.total_applicants,
        0,
    )


def test_records_past_the_window_go_and_newer_ones_stay(tmp_path: Path) -> None:
    path = tmp_path / "display.db"
    clock = Clock(T0)
    log = DisplayLog(path, clock_ms=clock, retention_ms=RETENTION_MS, purge_interval_s=86_400)
    try:
        assert log.wait_purged(1, timeout=10) == Purged()  # the start pass: nothing yet
        _fill(log)
        before = _views(log)
        assert [c.displays for c in before] == [2, 1, 2]
        assert before[0].applicants == 2 and before[0].total_applicants == 3

        purged = log.purge(timeout=10)

        # A's show and scan, B's show and look-up; both token claims (long expired).
        assert (purged.events, purged.token_claims) == (4, 2)
        # A: nothing inside the window, dropped. B: shown 5 days ago, kept.
        assert (purged.holders, purged.holders_kept) == (1, 1)
        at = [int(row[0]) for row in _rows(path, "SELECT at_ms FROM display_events")]
        assert sorted(at) == [EDGE, RECENT, RECENT + 1_000, RECENT + 2_000]
        # Nothing of A is left anywhere in the log.
        assert KEY_A not in _keys_in(path, "display_events") | _keys_in(path, "holders")
        assert _rows(path, "SELECT COUNT(*) FROM scanned_tokens") == [(0,)]
        # B's row says no more than the window holds: the day of its last event, not its first.
        holders = dict(_rows(path, "SELECT person_key, first_day FROM holders"))
        assert holders == {KEY_B: _day(RECENT), KEY_C: _day(EDGE)}

        # The counters of every day, kept or purged, and the totals are unchanged.
        assert _views(log) == before
        # B is a holder still: showing again is not a new applicant.
        log.record(_show(KEY_B, T0))
        assert log.counters(_day(T0)).applicants == 0
        later = _views(log)
        # A second pass finds nothing more.
        assert log.purge(timeout=10) == Purged()
    finally:
        log.close()

    # After a restart the counters come from the aggregates, the same as before.
    again = DisplayLog(path, clock_ms=clock, retention_ms=RETENTION_MS, purge_interval_s=86_400)
    try:
        assert again.wait_purged(1, timeout=10) == Purged()
        assert _views(again) == later
        assert later[0].total_displays == before[0].total_displays + 1
    finally:
        again.close()


def test_the_pass_at_start_purges_what_aged_while_the_service_was_down(tmp_path: Path) -> None:
    path = tmp_path / "display.db"
    clock = Clock(RECENT + 10_000)
    log = DisplayLog(path, clock_ms=clock, retention_ms=RETENTION_MS, purge_interval_s=86_400)
    try:
        log.record(_show(KEY_C, RECENT, colour=1))
        log.record(_scan(KEY_C, RECENT + 1_000, b"c" * 16, colour=1))
        before = _figures(log.counters(_day(RECENT)))
    finally:
        log.close()

    clock.now_ms = RECENT + RETENTION_MS + DAY_MS  # the service comes back 31 days later
    again = DisplayLog(path, clock_ms=clock, retention_ms=RETENTION_MS, purge_interval_s=86_400)
    try:
        purged = again.wait_purged(1, timeout=10)
        assert purged is not None
        assert (purged.events, purged.token_claims, purged.holders) == (2, 1, 1)
        assert _rows(path, "SELECT COUNT(*) FROM display_events") == [(0,)]
        assert _rows(path, "SELECT COUNT(*) FROM holders") == [(0,)]
        assert _figures(again.counters(_day(RECENT))) == before
    finally:
        again.close()


def test_small_chunks_interleave_with_displays_and_purge_everything(tmp_path: Path) -> None:
    path = tmp_path / "display.db"
    clock = Clock(T0)
    log = DisplayLog(
        path, clock_ms=clock, retention_ms=RETENTION_MS, purge_interval_s=86_400, purge_chunk=3
    )
    try:
        log.wait_purged(1, timeout=10)
        for i in range(20):
            log.record(_show(bytes([i]) * 16, OLD + i))
        for i in range(5):
            log.record(_show(bytes([100 + i]) * 16, RECENT + i))
        purged = log.purge(timeout=10)
        assert (purged.events, purged.holders) == (20, 20)
        assert _rows(path, "SELECT COUNT(*) FROM display_events") == [(5,)]
        assert _rows(path, "SELECT COUNT(*) FROM holders") == [(5,)]
        assert log.counters(_day(OLD)).displays == 20
    finally:
        log.close()


def test_without_a_retention_period_nothing_is_purged(tmp_path: Path) -> None:
    log = DisplayLog(tmp_path / "display.db")
    try:
        log.record(_show(KEY_A, 1_000))
        with pytest.raises(RuntimeError, match="no retention"):
            log.purge()
        assert log.wait_purged(1, timeout=0) is None
    finally:
        log.close()


def test_worker_zero_purges_the_shared_file_against_every_workers_log(tmp_path: Path) -> None:
    shared = tmp_path / SHARED_FILE
    create_ledger(shared)
    clock = Clock(T0)
    logs = [
        DisplayLog(
            tmp_path / f"display.{i}.db",
            shared=shared,
            clock_ms=clock,
            retention_ms=RETENTION_MS,
            purge_interval_s=86_400,
            purges_shared=i == 0,
        )
        for i in range(2)
    ]
    zero, one = logs
    try:
        for log in logs:
            log.wait_purged(1, timeout=10)
        zero.record(_show(KEY_A, OLD))  # A: long ago, at worker 0 only
        zero.record(_show(KEY_B, OLD))  # B: long ago at worker 0, lately at worker 1
        one.record(_show(KEY_B, RECENT))
        one.record(_scan(KEY_B, RECENT + 1_000, b"b" * 16))
        firsts_before = _rows(shared, "SELECT day, n FROM first_displays ORDER BY day")
        assert firsts_before == [(_day(OLD), 2)]

        purged = zero.purge(timeout=10)
        assert (purged.events, purged.holders, purged.holders_kept) == (2, 2, 0)
        assert purged.shared_token_claims == 1
        # A is gone from the service; B is kept, shown at worker 1 inside the window.
        assert (purged.shared_holders, purged.shared_holders_kept) == (1, 1)
        assert dict(_rows(shared, "SELECT person_key, first_day FROM holders")) == {
            KEY_B: _day(RECENT)
        }
        assert _rows(shared, "SELECT COUNT(*) FROM scanned_tokens") == [(0,)]
        assert _rows(shared, "SELECT day, n FROM first_displays ORDER BY day") == firsts_before

        # Worker 1 purges its own log only; worker 0's log is empty now.
        assert one.purge(timeout=10).shared_holders == 0
        assert _rows(tmp_path / "display.0.db", "SELECT COUNT(*) FROM display_events") == [(0,)]
        assert _rows(tmp_path / "display.1.db", "SELECT COUNT(*) FROM display_events") == [(2,)]
    finally:
        for log in logs:
            log.close()


def test_the_retention_settings(tmp_path: Path) -> None:
    env = {"HEALTHCODE_DATA_DIR": str(tmp_path)}
    config = DisplayConfig.from_env(env)
    assert config.retention_days == DEFAULT_RETENTION_DAYS == 30
    assert config.retention_ms == 30 * DAY_MS and config.purge_interval_s == 3600
    assert not config.purges_shared
    assert [config.for_worker(i, None).purges_shared for i in range(3)] == [True, False, False]
    custom = DisplayConfig.from_env(
        env | {"HEALTHCODE_DISPLAY_RETENTION_DAYS": "14", "HEALTHCODE_DISPLAY_PURGE_S": "60"}
    )
    assert (custom.retention_days, custom.purge_interval_s) == (14, 60)
    with pytest.raises(ConfigError, match="HEALTHCODE_DISPLAY_RETENTION_DAYS"):
        DisplayConfig.from_env(env | {"HEALTHCODE_DISPLAY_RETENTION_DAYS": "0"})


def test_a_log_from_before_the_first_displays_table_keeps_its_applicants(tmp_path: Path) -> None:
    path = tmp_path / "display.db"
    log = DisplayLog(path)
    log.record(_show(KEY_A, OLD))
    log.record(_show(KEY_B, RECENT))
    log.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE first_displays")  # as an older version left it
    conn.commit()
    conn.close()
    again = DisplayLog(path)
    try:
        assert again.counters(_day(RECENT)).applicants == 1
        assert again.counters(_day(RECENT)).total_applicants == 2
    finally:
        again.close()
