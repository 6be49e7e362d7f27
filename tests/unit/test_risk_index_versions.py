"""Coalesced versions and bulk registration in the risk index (issue 8: one version per
interval, not one per change; a write names the version that carries it)."""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path

import healthcode_matcher
import pytest

from services._common import changes, days
from services._common.actors import Actor, Role
from services._common.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from services._common.identifiers import Identifiers, mask_id_number, mask_phone
from services.risk_index.logic import Delta, Published, RiskIndex
from services.risk_index.model import KeyedPerson, RawRow
from services.risk_index.repository import RiskIndexRepository
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(30, 77).decode().split()
PHONES = healthcode_matcher.synthetic_phones(10, 77).decode().split()
HASHER = healthcode_matcher.Hasher(SECRET)
FEED = Actor(Role.FEED, "national-db")
SERVICE = Actor(Role.SERVICE, "declaration")
NOW = dt.datetime(2024, 5, 10, 4, 0, tzinfo=dt.UTC)
TODAY = days.format_day(days.today(NOW))
# Long enough that nothing publishes by itself during a test: `flush()` publishes.
NEVER = 3600.0


def open_index(path: Path, interval: float = NEVER, max_rows: int = 50_000) -> RiskIndex:
    repo = RiskIndexRepository(path / "ri.sqlite3")
    return RiskIndex(
        repo,
        Identifiers.from_secret(SECRET),
        SECRET,
        clock=lambda: NOW,
        publish_interval_s=interval,
        max_batch_rows=max_rows,
    )


def person(n: int, phones: tuple[int, ...] = ()) -> KeyedPerson:
    return KeyedPerson(
        HASHER.person_key(IDS[n]),
        mask_id_number(IDS[n]),
        [(HASHER.phone_key(PHONES[p]), mask_phone(PHONES[p])) for p in phones],
    )


def test_changes_within_an_interval_share_the_next_version(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    try:
        versions = {
            ri.register_person(SERVICE, HASHER.person_key(i), mask_id_number(i))[0]
            for i in IDS[:20]
        }
        batch = ri.ingest_batch(
            FEED, "close_contact", "b1", [RawRow("id_number", IDS[0], day=TODAY)]
        )
        # Every write was answered with the version that will carry it ...
        assert versions == {1} and batch.version == 1
        # ... which is not published until the interval ends (here: the flush).
        assert ri.current.version == 0 and ri.current.index.person_count == 0
        assert ri.accepted_version == 1  # what a reader waits for to see all of them
        assert ri.flush() == 1 and ri.accepted_version == 1
        assert ri.current.index.person_count == 20
        assert ri.current.index.source_len("close_contact") == 1
        # The next change goes to the version after.
        assert ri.register_person(SERVICE, HASHER.person_key(IDS[20]), "11**********1X")[0] == 2
    finally:
        ri.close()


def test_the_publisher_publishes_by_itself(tmp_path: Path) -> None:
    ri = open_index(tmp_path, interval=0.05)
    try:
        version, _ = ri.register_person(SERVICE, HASHER.person_key(IDS[0]), "11**********1X")
        seen = ri.watch(0, lambda: True)
        first = next(seen)
        while first.version < version:
            first = next(seen)
        assert first.version == version and ri.current.index.person_count == 1
    finally:
        ri.close()


def test_a_watcher_gets_a_snapshot_first_then_deltas(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    try:
        watch = ri.watch(0, lambda: True)
        snapshot = next(watch)
        assert isinstance(snapshot, Published) and snapshot.version == 0
        ri.register_person(SERVICE, HASHER.person_key(IDS[0]), "11**********1X")
        ri.ingest_batch(FEED, "close_contact", "b1", [RawRow("id_number", IDS[0], day=TODAY)])
        ri.flush()
        delta = next(watch)
        assert isinstance(delta, Delta) and (delta.from_version, delta.version) == (0, 1)
        assert [type(c) for c in delta.changes] == [changes.Persons, changes.Rows]
        # A replica that says it holds version 0 holds nothing (the empty index): a snapshot.
        again = next(ri.watch(0, lambda: True))
        assert isinstance(again, Published) and again.version == 1
        ri.register_person(SERVICE, HASHER.person_key(IDS[1]), "11**********2X")
        ri.flush()
        behind = next(ri.watch(1, lambda: True))
        assert isinstance(behind, Delta) and (behind.from_version, behind.version) == (1, 2)
    finally:
        ri.close()


def test_a_delta_rebuilds_exactly_the_published_version(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    try:
        base = ri.current.index
        ri.register_people(SERVICE, [person(0, (0, 1)), person(1, (2,))])
        ri.ingest_batch(
            FEED,
            "telecom_roaming",
            "t1",
            [RawRow("phone", PHONES[1], day=TODAY, county=420106)],
        )
        ri.set_county_level(Actor(Role.ADMIN, "ops"), 420106, 3)
        ri.unlink_phone(SERVICE, HASHER.phone_key(PHONES[0]))
        ri.flush()
        delta = ri._publication.delta_since(0)
        assert delta is not None
        # Through the wire and back, then applied to the replica's copy of version 0.
        wire = changes.from_proto(changes.to_proto(0, delta.changes))
        builder = base.builder()
        changes.apply_all(builder, wire)
        rebuilt = builder.finish(version=delta.version)
        assert rebuilt.to_bytes() == ri.current.index.to_bytes()
        # Whom the changes can touch: the two new people (ids 0 and 1), as LE u32s.
        assert changes.touched_persons(base, rebuilt, wire) == struct.pack("<2I", 0, 1)
    finally:
        ri.close()


def test_a_crash_before_publishing_loses_nothing_acknowledged(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    version, created = ri.register_person(SERVICE, HASHER.person_key(IDS[0]), "11**********1X")
    ri.ingest_batch(FEED, "close_contact", "b1", [RawRow("id_number", IDS[1], day=TODAY)])
    assert (version, created) == (1, True) and ri.current.version == 0
    # No close(), no flush: as after kill -9. A new process rebuilds from the database.
    again = open_index(tmp_path)
    try:
        assert again.current.version == 1
        assert again.current.index.person_count == 2
        assert again.current.index.source_len("close_contact") == 1
    finally:
        again.close()
        ri.close()


def test_close_publishes_what_is_staged(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    ri.register_person(SERVICE, HASHER.person_key(IDS[0]), "11**********1X")
    ri.close()
    assert ri.current.version == 1 and ri.current.index.person_count == 1


def test_register_people_in_bulk_is_one_change_and_idempotent(tmp_path: Path) -> None:
    ri = open_index(tmp_path, interval=0)
    try:
        people = [person(0, (0, 1)), person(1, (2,)), person(2)]
        done = ri.register_people(SERVICE, people)
        assert (done.version, done.created, done.linked) == (1, 3, 3)
        index = ri.current.index
        assert ri.current.version == 1 and (index.person_count, index.phone_count) == (3, 3)
        holder = index.person_id_by_key(HASHER.person_key(IDS[0]))
        phone = index.phone_id_by_key(HASHER.phone_key(PHONES[1]))
        assert holder is not None and phone is not None
        # The same again changes nothing and names the current version.
        again = ri.register_people(SERVICE, people)
        assert (again.version, again.created, again.linked) == (1, 0, 0)
        # A phone moving to another holder is a change; the known person is not.
        moved = ri.register_people(SERVICE, [person(1, (1,))])
        assert (moved.version, moved.created, moved.linked) == (2, 0, 1)
    finally:
        ri.close()


def test_register_people_refuses_bad_entries_naming_each_field(tmp_path: Path) -> None:
    ri = open_index(tmp_path, interval=0)
    try:
        bad = [
            person(0),
            KeyedPerson(b"short", "11**********1X"),
            KeyedPerson(HASHER.person_key(IDS[2]), IDS[2], [(HASHER.phone_key(PHONES[0]), "")]),
        ]
        with pytest.raises(InvalidArgument) as refused:
            ri.register_people(SERVICE, bad)
        assert [f for f, _ in refused.value.violations] == [
            "people[1].person_key",
            "people[2].masked_id_number",
            "people[2].phones[0].masked_phone",
        ]
        assert ri.current.version == 0 and ri.current.index.person_count == 0  # nothing changed
        with pytest.raises(PermissionDenied):
            ri.register_people(FEED, [person(0)])
    finally:
        ri.close()


def test_register_people_refuses_an_oversized_call(tmp_path: Path) -> None:
    ri = open_index(tmp_path, interval=0, max_rows=2)
    try:
        with pytest.raises(ResourceExhausted):
            ri.register_people(SERVICE, [person(0), person(1), person(2)])
        assert ri.current.index.person_count == 0
    finally:
        ri.close()


def test_a_delta_too_large_for_one_message_goes_as_the_whole_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ri = open_index(tmp_path, interval=0)
    try:
        ri.register_people(SERVICE, [person(0)])
        watch = ri.watch(1, lambda: True)
        assert isinstance(next(watch), Delta)  # "you are current"
        monkeypatch.setattr("services.risk_index.logic.MAX_DELTA_BYTES", 10)
        ri.register_people(SERVICE, [person(1), person(2)])
        step = next(watch)
        assert isinstance(step, Published) and step.version == 2
        # The watcher now holds version 2: the next change is a delta from it again.
        monkeypatch.setattr("services.risk_index.logic.MAX_DELTA_BYTES", 4 << 20)
        ri.register_people(SERVICE, [person(3)])
        after = next(watch)
        assert isinstance(after, Delta) and (after.from_version, after.version) == (2, 3)
    finally:
        ri.close()


def test_the_kept_history_is_bounded_in_bytes_and_a_replica_behind_it_gets_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A person's change is 16 bytes of key: with MAX_DELTA_BYTES at 40 the history keeps at
    # most 80 bytes (five people's versions), however many versions fit the version count.
    monkeypatch.setattr("services.risk_index.logic.MAX_DELTA_BYTES", 40)
    ri = open_index(tmp_path, interval=0)
    try:
        for n in range(12):
            ri.register_people(SERVICE, [person(n)])
        publication = ri._publication
        assert publication._history_bytes <= 80
        assert sorted(publication._history) == [8, 9, 10, 11, 12]
        assert publication._history_bytes == sum(
            changes.approx_bytes(c) for step in publication._history.values() for c in step
        )
        recent = publication.delta_since(9)
        assert recent is not None and list(recent.changes) == [
            changes.Persons(HASHER.person_key(IDS[n])) for n in (9, 10, 11)
        ]
        assert publication.delta_since(6) is None  # version 7 is gone: a snapshot
        watch = ri.watch(3, lambda: True)
        step = next(watch)
        assert isinstance(step, Published) and step.version == 12
    finally:
        ri.close()


def test_approx_bytes_counts_each_change_by_its_data() -> None:
    key = b"k" * changes.KEY
    assert changes.approx_bytes(changes.Persons(key * 3)) == 48
    assert changes.approx_bytes(changes.Phones(key * 2, key * 2)) == 64
    assert changes.approx_bytes(changes.Unlink(key)) == 16
    rows = changes.Rows("nucleic_acid_positive", key * 2, [1, 2], [420106, 420106])
    assert changes.approx_bytes(rows) == 32 + 16 + 16
