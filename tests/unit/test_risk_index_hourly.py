"""Rows of hourly sources (a negative test "within 48 hours") at the risk index: timed by `at`
and kept in their Asia/Shanghai hour, or with only a day and counted from its 00:00; refused
with neither; and a data directory from before hours still opens (schema migration)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path

import healthcode_matcher
import pytest

from services._common import days
from services._common.actors import Actor, Role
from services._common.errors import AlreadyExists, InvalidArgument
from services._common.identifiers import Identifiers
from services._common.sources import SOURCES
from services._common.storage import _statements
from services.risk_index.logic import RiskIndex
from services.risk_index.model import RawRow
from services.risk_index.repository import SCHEMA_V1, RiskIndexRepository
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(6, 23).decode().split()
FEED = Actor(Role.FEED, "lab-feed")
SHANGHAI = days.SHANGHAI
NOW = dt.datetime(2024, 5, 10, 12, 20, tzinfo=SHANGHAI)  # the service's clock: 12:20
HOUR = days.hour_number(NOW)  # 2024-05-10 12:00
TODAY = days.today(NOW)


def open_index(path: Path) -> tuple[RiskIndex, RiskIndexRepository]:
    repo = RiskIndexRepository(path / "ri.sqlite3")
    return RiskIndex(repo, Identifiers.from_secret(SECRET), SECRET, clock=lambda: NOW), repo


@pytest.fixture()
def index(tmp_path: Path) -> RiskIndex:
    return open_index(tmp_path)[0]


def test_the_catalogue_marks_the_negative_test_hourly(index: RiskIndex) -> None:
    assert SOURCES["nat_negative"].hourly and not SOURCES["close_contact"].hourly
    assert index.current.index.source_is_hourly("nat_negative")
    assert not index.current.index.source_is_hourly("close_contact")
    assert {v.source.name for v in index.list_sources() if v.source.hourly} >= {"nat_negative"}


def test_a_timed_row_is_kept_in_its_shanghai_hour(index: RiskIndex) -> None:
    at = dt.datetime(2024, 5, 8, 5, 37, tzinfo=dt.UTC)  # 13:37 in Shanghai, 47 hours back
    index.ingest_batch(FEED, "nat_negative", "lab-1", [RawRow("id_number", IDS[0], at=at)])
    assert index.current.index.source_days("nat_negative") == [HOUR - 47]
    assert days.format_hour(HOUR - 47) == "2024-05-08 13:00"


def test_a_row_with_only_a_day_counts_from_its_first_hour(index: RiskIndex) -> None:
    yesterday = days.format_day(TODAY - 1)
    index.ingest_batch(FEED, "nat_negative", "lab-1", [RawRow("id_number", IDS[0], day=yesterday)])
    assert index.current.index.source_days("nat_negative") == [(TODAY - 1) * 24]


def test_a_row_with_its_day_and_time_in_agreement_is_taken(index: RiskIndex) -> None:
    at = NOW - dt.timedelta(hours=3)
    row = RawRow("id_number", IDS[0], day=days.format_day(TODAY), at=at)
    index.ingest_batch(FEED, "nat_negative", "lab-1", [row])
    assert index.current.index.source_days("nat_negative") == [HOUR - 3]


def test_a_lab_clock_a_little_ahead_is_taken_but_a_future_time_is_not(index: RiskIndex) -> None:
    ahead = RawRow("id_number", IDS[0], at=NOW + dt.timedelta(minutes=4))
    index.ingest_batch(FEED, "nat_negative", "lab-1", [ahead])
    future = RawRow("id_number", IDS[1], at=NOW + dt.timedelta(minutes=30))
    with pytest.raises(InvalidArgument) as caught:
        index.ingest_batch(FEED, "nat_negative", "lab-2", [future])
    assert caught.value.violations[0][0] == "rows[0].at"
    assert "future" in caught.value.violations[0][1]


def test_every_bad_time_is_named_and_nothing_changes(index: RiskIndex) -> None:
    naive = dt.datetime(2024, 5, 10, 9, 0)
    rows = [
        RawRow("id_number", IDS[0], at=NOW - dt.timedelta(hours=1)),
        RawRow("id_number", IDS[1]),  # neither a time nor a day
        RawRow("id_number", IDS[2], at=naive),
        RawRow("id_number", IDS[3], day=days.format_day(TODAY - 1), at=NOW),
        RawRow("id_number", IDS[4], at=NOW - dt.timedelta(days=400)),
    ]
    with pytest.raises(InvalidArgument) as caught:
        index.ingest_batch(FEED, "nat_negative", "lab-1", rows)
    fields = [f for f, _ in caught.value.violations]
    assert fields == ["rows[1].at", "rows[2].at", "rows[3].day", "rows[4].at"]
    described = dict(caught.value.violations)
    assert "nat_negative" in described["rows[1].at"] and "hours" in described["rows[1].at"]
    assert "offset" in described["rows[2].at"]
    assert days.format_day(TODAY) in described["rows[3].day"]
    assert index.current.version == 0


def test_a_time_on_a_daily_or_undated_source_is_refused(index: RiskIndex) -> None:
    timed = RawRow("id_number", IDS[0], day=days.format_day(TODAY), at=NOW)
    with pytest.raises(InvalidArgument, match=r"leave it unset") as caught:
        index.ingest_batch(FEED, "close_contact", "cdc-1", [timed])
    assert [f for f, _ in caught.value.violations] == ["rows[0].at"]
    with pytest.raises(InvalidArgument) as caught:
        index.ingest_batch(FEED, "home_quarantine", "list-1", [RawRow("id_number", IDS[0], at=NOW)])
    assert [f for f, _ in caught.value.violations] == ["rows[0].at"]


def test_hours_survive_a_restart_and_a_replay_is_recognised(tmp_path: Path) -> None:
    ri, repo = open_index(tmp_path)
    timed = [
        RawRow("id_number", IDS[0], at=NOW - dt.timedelta(hours=47)),
        RawRow("id_number", IDS[1], day=days.format_day(TODAY)),
    ]
    ri.ingest_batch(FEED, "nat_negative", "lab-1", timed)
    before = sorted(d for d in ri.current.index.source_days("nat_negative") if d is not None)
    ri.close()
    repo.close()
    with sqlite3.connect(tmp_path / "ri.sqlite3") as conn:
        stored = conn.execute("SELECT day, hour FROM feed_rows ORDER BY seq").fetchall()
    # The day beside the hour; no hour when the feed gave only a day.
    assert stored == [((HOUR - 47) // 24, HOUR - 47), (TODAY, None)]

    again, _ = open_index(tmp_path)
    after = sorted(d for d in again.current.index.source_days("nat_negative") if d is not None)
    assert after == before == [HOUR - 47, TODAY * 24]
    assert again.ingest_batch(FEED, "nat_negative", "lab-1", timed).replayed
    # The same batch id with the test an hour later is other content.
    later = [RawRow("id_number", IDS[0], at=NOW - dt.timedelta(hours=46)), timed[1]]
    with pytest.raises(AlreadyExists, match="other content"):
        again.ingest_batch(FEED, "nat_negative", "lab-1", later)


def _old_digest(source: str, rows: list[tuple[str, bytes, int | None, int | None]]) -> bytes:
    """The batch fingerprint as version 1 of the schema's code computed it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{source}\0{0}\0".encode())
    for kind, key, day, county in rows:
        h.update(kind.encode() + b"\0" + key)
        h.update(f"\0{day}\0{county}\0".encode())
        h.update(json.dumps({}, sort_keys=True).encode() + b"\0")
    return h.digest()


def test_a_data_dir_from_before_hours_opens_and_its_tests_count_from_midnight(
    tmp_path: Path,
) -> None:
    # A database written by the previous release: schema 1, one negative test with a day.
    key = Identifiers.from_secret(SECRET).person(IDS[0], "id").key
    day = TODAY - 1
    conn = sqlite3.connect(tmp_path / "ri.sqlite3")
    for statement in _statements(SCHEMA_V1):
        conn.execute(statement)
    stamp = (NOW - dt.timedelta(days=1)).astimezone(dt.UTC).isoformat()
    conn.execute("INSERT INTO versions VALUES (1, ?, 'batch:lab-old')", (stamp,))
    conn.execute(
        "INSERT INTO batches (batch_id, source, digest, replace, actor_role, actor_principal, "
        "received_at, row_count, version) VALUES (?, ?, ?, 0, 'feed', 'lab', ?, 1, 1)",
        (
            "lab-old",
            "nat_negative",
            _old_digest("nat_negative", [("person", key, day, None)]),
            stamp,
        ),
    )
    conn.execute(
        "INSERT INTO feed_rows (batch_id, seq, subject_kind, subject_key, masked, day) "
        "VALUES ('lab-old', 0, 'person', ?, '12**************34', ?)",
        (key, day),
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    ri, repo = open_index(tmp_path)
    assert repo.schema_version == len(repo.MIGRATIONS) >= 3
    assert ri.current.version == 1
    assert ri.current.index.source_days("nat_negative") == [day * 24]
    # The old batch replayed as its feed sent it (only a day) is still the same batch.
    old = RawRow("id_number", IDS[0], day=days.format_day(day))
    assert ri.ingest_batch(FEED, "nat_negative", "lab-old", [old]).replayed
    # And new timed rows go in beside it.
    timed = RawRow("id_number", IDS[1], at=NOW - dt.timedelta(hours=2))
    assert ri.ingest_batch(FEED, "nat_negative", "lab-new", [timed]).version == 2
    assert sorted(d for d in ri.current.index.source_days("nat_negative") if d is not None) == [
        day * 24,
        HOUR - 2,
    ]
