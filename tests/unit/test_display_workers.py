"""Several display workers (issue 9, part 2), in one test process: each with its own log, all
sharing the token claims and first displays (services/display/ledger.py), and counters that add
up over every log of the directory (services/display/counters.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services._common.config import ConfigError
from services._common.workers import Supervisor
from services.colour.config import ColourConfig
from services.display.config import DisplayConfig
from services.display.counters import SummedCounters, log_files
from services.display.ledger import SHARED_FILE, create_ledger
from services.display.store import TOKEN_REPLAYED, DisplayLog
from tests.unit.display_events import DAY, scan_event, show_event


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[list[DisplayLog]]:
    shared = tmp_path / SHARED_FILE
    create_ledger(shared)
    opened = [DisplayLog(tmp_path / f"display.{i}.db", shared=shared) for i in range(3)]
    yield opened
    for log in opened:
        log.close()


def test_a_token_scanned_at_one_worker_is_refused_at_every_other(
    logs: list[DisplayLog],
) -> None:
    a, b, c = logs
    assert a.record(scan_event(b"A" * 16, b"t" * 16)).accepted
    assert not b.record(scan_event(b"A" * 16, b"t" * 16)).accepted
    assert not c.record(scan_event(b"A" * 16, b"t" * 16)).accepted
    assert not a.record(scan_event(b"A" * 16, b"t" * 16)).accepted
    # Each refusal is logged by the worker that refused it, with the replay reason.
    assert b.counters(DAY).refused_scans == 1 and c.counters(DAY).refused_scans == 1
    assert a.counters(DAY).scans == 1 and a.counters(DAY).refused_scans == 1


def test_one_token_scanned_at_once_through_every_worker_is_accepted_once(
    logs: list[DisplayLog],
) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def scan(log: DisplayLog) -> None:
        start.wait()
        accepted = log.record(scan_event(b"B" * 16, b"u" * 16)).accepted
        with lock:
            results.append(accepted)

    threads = [threading.Thread(target=scan, args=(logs[i % 3],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 11 + [True]


def test_a_person_shown_at_two_workers_is_one_applicant(
    tmp_path: Path, logs: list[DisplayLog]
) -> None:
    a, b, _ = logs
    a.record(show_event(b"P" * 16))
    b.record(show_event(b"P" * 16))
    b.record(show_event(b"Q" * 16))
    summed = SummedCounters(a, tmp_path / "display.0.db", tmp_path / SHARED_FILE, poll_s=0.05)
    try:
        view = summed.wait_for_change(DAY, -1, timeout=0)
        deadline = time.monotonic() + 10
        while (view.displays, view.applicants) != (3, 2) and time.monotonic() < deadline:
            view = summed.wait_for_change(DAY, view.sequence, timeout=1)
        assert (view.displays, view.applicants, view.total_applicants) == (3, 2, 2)
    finally:
        summed.close()


def test_counters_add_up_over_every_log_and_wake_on_another_workers_change(
    tmp_path: Path, logs: list[DisplayLog]
) -> None:
    a, b, c = logs
    # A log left by a single-process run counts too (totals are totals).
    old = DisplayLog(tmp_path / "display.db")
    old.record(show_event(b"O" * 16, colour=2))
    old.close()
    a.record(show_event(b"A" * 16))
    b.record(show_event(b"B" * 16, colour=1))
    c.record(scan_event(b"C" * 16, b"c" * 16))
    assert [p.name for p in log_files(tmp_path)] == [
        "display.0.db",
        "display.1.db",
        "display.2.db",
        "display.db",
    ]
    summed = SummedCounters(a, tmp_path / "display.0.db", tmp_path / SHARED_FILE, poll_s=0.05)
    try:
        view = summed.counters(DAY)
        assert view.displays == 3 and view.displays_by_colour == (1, 1, 1)
        assert view.scans == 1 and view.total_displays == 3 and view.total_scans == 1
        # Another worker's scan wakes a watcher of this one.
        woken: list[int] = []

        def watch() -> None:
            # Woken by each change the poller sees (the claim in the shared file may come
            # first), until the other worker's scan is counted.
            seen = view
            deadline = time.monotonic() + 10
            while seen.scans < 2 and time.monotonic() < deadline:
                seen = summed.wait_for_change(DAY, seen.sequence, timeout=10)
                woken.append(seen.scans)

        watcher = threading.Thread(target=watch)
        watcher.start()
        b.record(scan_event(b"B" * 16, b"b" * 16))
        watcher.join()
        assert woken and woken[-1] == 2
        refused = c.record(scan_event(b"C" * 16, b"b" * 16))
        assert not refused.accepted
        deadline = time.monotonic() + 10
        while summed.counters(DAY).refused_scans != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert summed.counters(DAY).refused_scans == 1
    finally:
        summed.close()


def test_a_single_process_log_keeps_its_claims_to_itself(tmp_path: Path) -> None:
    log = DisplayLog(tmp_path / "display.db")
    try:
        assert log.record(scan_event(b"A" * 16, b"z" * 16)).accepted
        assert not log.record(scan_event(b"A" * 16, b"z" * 16)).accepted
    finally:
        log.close()
    assert not (tmp_path / SHARED_FILE).exists()
    assert TOKEN_REPLAYED == "TOKEN_REPLAYED"


def test_the_process_settings_and_each_workers_files(tmp_path: Path) -> None:
    env = {"HEALTHCODE_DATA_DIR": str(tmp_path), "HEALTHCODE_DISPLAY_PROCESSES": "2"}
    display = DisplayConfig.from_env(env)
    assert display.processes == 2 and display.shared_path is None
    worker = display.for_worker(1, 40_001)
    assert worker.port == 40_001
    assert worker.db_path == tmp_path / "display" / "display.1.db"
    assert worker.shared_path == tmp_path / "display" / SHARED_FILE
    assert worker.replica.snapshot_path == tmp_path / "display" / "index.1.snapshot"
    assert worker.signing_key_path == display.signing_key_path
    assert DisplayConfig.from_env({"HEALTHCODE_DATA_DIR": str(tmp_path)}).processes == 1
    colour = ColourConfig.from_env(
        {"HEALTHCODE_DATA_DIR": str(tmp_path), "HEALTHCODE_COLOUR_PROCESSES": "3"}
    )
    assert colour.processes == 3
    assert (
        colour.for_worker(2, None).replica.snapshot_path == tmp_path / "colour" / "index.2.snapshot"
    )
    # Every replica of the machine, whichever service and worker, maps the same key files.
    shared = tmp_path / "shared-keys"
    assert worker.replica.shared_keys_dir == shared
    assert colour.for_worker(2, None).replica.shared_keys_dir == shared
    assert colour.replica.shared_keys_dir == shared
    off = {"HEALTHCODE_DATA_DIR": str(tmp_path), "HEALTHCODE_SHARED_KEYS": "off"}
    assert ColourConfig.from_env(off).replica.shared_keys_dir is None
    assert DisplayConfig.from_env(off).for_worker(0, None).replica.shared_keys_dir is None
    with pytest.raises(ConfigError, match="HEALTHCODE_SHARED_KEYS: 'yes'; say on or off"):
        ColourConfig.from_env({**off, "HEALTHCODE_SHARED_KEYS": "yes"})


def test_a_worker_that_fails_before_it_serves_stops_the_service() -> None:
    # `python -m json.tool --worker 0 ...` refuses its arguments and exits 2 at once: a
    # startup failure that a restart would repeat, so the parent gives up with status 1.
    assert Supervisor("fake", "json.tool", 2, "127.0.0.1", 0).run() == 1
