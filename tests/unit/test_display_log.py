"""The display log: durable before the reply, one scan per token, counters that survive a
restart, and no raw identifier stored. On both storage backends (tests/conftest.py `place`)."""

from __future__ import annotations

import threading

from services.display.store import TOKEN_REPLAYED, DisplayLog
from tests import pg
from tests.pg import Place
from tests.unit.display_events import DAY
from tests.unit.display_events import scan_event as _scan
from tests.unit.display_events import show_event as _show

KEY_A = b"A" * 16
KEY_B = b"B" * 16


def test_a_recorded_display_is_on_disk_when_record_returns(place: Place) -> None:
    log = DisplayLog(place("display.db"))
    try:
        recorded = log.record(_show(KEY_A, 2))
        # Another connection (as after a crash) sees the committed row.
        rows = pg.rows(
            place("display.db"), "SELECT id, kind, colour, person_key FROM display_events"
        )
        assert rows == [(recorded.event_id, "show", 2, KEY_A)]
    finally:
        log.close()


def test_a_token_is_accepted_once(place: Place) -> None:
    log = DisplayLog(place("display.db"))
    try:
        assert log.record(_scan(KEY_A, b"t" * 16)).accepted
        second = log.record(_scan(KEY_A, b"t" * 16))
        assert not second.accepted
        [outcome] = pg.rows(
            place("display.db"),
            "SELECT outcome, colour FROM display_events WHERE id = ?",
            (second.event_id,),
        )
        assert outcome == (TOKEN_REPLAYED, None)
    finally:
        log.close()


def test_concurrent_scans_of_one_token_accept_exactly_one(place: Place) -> None:
    log = DisplayLog(place("display.db"))
    results: list[bool] = []
    lock = threading.Lock()

    def scan() -> None:
        accepted = log.record(_scan(KEY_A, b"x" * 16)).accepted
        with lock:
            results.append(accepted)

    try:
        threads = [threading.Thread(target=scan) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(results) == [False] * 15 + [True]
    finally:
        log.close()


def test_counters_per_day_and_colour_survive_a_restart(place: Place) -> None:
    log = DisplayLog(place("display.db"))
    log.record(_show(KEY_B, 1, day=DAY - 1))
    log.record(_show(KEY_A, 0))
    log.record(_show(KEY_A, 0))
    log.record(_show(KEY_B, 2))
    log.record(_scan(KEY_A, b"1" * 16, colour=0))
    log.record(_scan(KEY_A, b"1" * 16, colour=0))  # replay: refused
    before = log.counters(DAY)
    log.close()

    again = DisplayLog(place("display.db"))
    try:
        after = again.counters(DAY)
    finally:
        again.close()
    for c in (before, after):
        assert c.displays == 3
        assert c.displays_by_colour == (2, 0, 1)
        assert c.scans == 1 and c.scans_by_colour == (1, 0, 0)
        assert c.refused_scans == 1
        assert c.total_displays == 4
        # KEY_B's first display was the day before.
        assert c.applicants == 1 and c.total_applicants == 2


def test_wait_for_change_wakes_on_a_commit(place: Place) -> None:
    log = DisplayLog(place("display.db"))
    try:
        start = log.counters(DAY)
        threading.Timer(0.05, lambda: log.record(_show(KEY_A, 0))).start()
        changed = log.wait_for_change(DAY, start.sequence, timeout=10)
        assert changed.sequence > start.sequence and changed.displays == 1
    finally:
        log.close()
