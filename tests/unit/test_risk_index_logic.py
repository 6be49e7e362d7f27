"""The risk index's domain: batch validation, idempotency, versions, restart, watching."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import healthcode_matcher
import pytest

from services._common import days
from services._common.actors import Actor, Role
from services._common.errors import (
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from services._common.identifiers import Identifiers
from services._common.places import PgPlace
from services.risk_index.logic import Delta, Published, RiskIndex
from services.risk_index.model import RawRow
from services.risk_index.repository import RiskIndexRepository
from tests.pg import Place
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(20, 11).decode().split()
PHONES = healthcode_matcher.synthetic_phones(5, 11).decode().split()
FEED = Actor(Role.FEED, "national-db")
SERVICE = Actor(Role.SERVICE, "declaration")
NOW = dt.datetime(2024, 5, 10, 4, 0, tzinfo=dt.UTC)
TODAY = days.format_day(days.today(NOW))
YESTERDAY = days.format_day(days.today(NOW) - 1)


def person_row(id_number: str, day: str = TODAY, **kw: object) -> RawRow:
    return RawRow("id_number", id_number, day=day, **kw)  # type: ignore[arg-type]


def open_index(
    path: Path, where: Path | PgPlace | None = None, **kw: object
) -> tuple[RiskIndex, RiskIndexRepository]:
    repo = RiskIndexRepository(where or path / "ri.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    return RiskIndex(repo, ids, SECRET, clock=lambda: NOW, **kw), repo  # type: ignore[arg-type]


@pytest.fixture()
def index(tmp_path: Path, place: Place) -> Iterator[RiskIndex]:
    # Once per storage backend (tests/conftest.py `place`).
    ri, repo = open_index(tmp_path, place("ri.sqlite3"))
    yield ri
    repo.close()


def members(ri: RiskIndex, source: str) -> int:
    return ri.current.index.source_len(source)


def test_empty_start_is_version_zero_with_every_source_defined(index: RiskIndex) -> None:
    assert index.current.version == 0
    names = {name for name, _kind, _county in index.current.index.sources()}
    assert {"close_contact", "telecom_roaming", "declared_travel"} <= names


def test_a_batch_makes_one_new_version(index: RiskIndex) -> None:
    result = index.ingest_batch(FEED, "close_contact", "b1", [person_row(i) for i in IDS[:3]])
    assert (result.version, result.row_count, result.replayed) == (1, 3, False)
    assert index.current.version == 1
    assert members(index, "close_contact") == 3
    assert index.current.index.person_id(IDS[0]) is not None


def test_replay_changes_nothing_and_other_content_is_refused(index: RiskIndex) -> None:
    rows = [person_row(i) for i in IDS[:2]]
    first = index.ingest_batch(FEED, "confirmed", "b1", rows)
    again = index.ingest_batch(FEED, "confirmed", "b1", rows)
    assert again.replayed and again.version == first.version == index.current.version
    with pytest.raises(AlreadyExists, match="b1"):
        index.ingest_batch(FEED, "confirmed", "b1", rows[:1])


def test_every_bad_row_is_reported_and_nothing_changes(index: RiskIndex) -> None:
    bad_id = IDS[3][:-1] + ("0" if IDS[3][-1] != "0" else "1")
    rows = [
        person_row(IDS[0]),
        person_row(bad_id),
        person_row(IDS[1], day="2024-13-01"),
        RawRow("phone", PHONES[0], day=TODAY),
        person_row(IDS[2], day=""),
        person_row(IDS[4], county=120101),
        person_row(IDS[5], attributes={"note": f"phone {PHONES[1]}"}),
    ]
    with pytest.raises(InvalidArgument) as caught:
        index.ingest_batch(FEED, "close_contact", "b1", rows)
    fields = [f for f, _ in caught.value.violations]
    assert fields == [
        "rows[1].id_number",
        "rows[2].day",
        "rows[3].phone",
        "rows[4].day",
        "rows[5].county",
        "rows[6].attributes[note]",
    ]
    assert f"should be {IDS[3][-1]}" in caught.value.violations[0][1]
    assert index.current.version == 0


def test_unknown_source_and_missing_batch_id(index: RiskIndex) -> None:
    with pytest.raises(InvalidArgument) as caught:
        index.ingest_batch(FEED, "rumours", "", [person_row(IDS[0])])
    assert [f for f, _ in caught.value.violations] == ["batch_id", "source"]


def test_oversized_batch_is_resource_exhausted(tmp_path: Path) -> None:
    ri, _ = open_index(tmp_path, max_batch_rows=2)
    with pytest.raises(ResourceExhausted):
        ri.ingest_batch(FEED, "confirmed", "b", [person_row(i) for i in IDS[:3]])


def test_county_and_phone_sources(index: RiskIndex) -> None:
    index.ingest_batch(
        FEED, "telecom_roaming", "t1", [RawRow("phone", PHONES[0], day=TODAY, county=420106)]
    )
    assert members(index, "telecom_roaming") == 1
    assert index.current.index.source_counties("telecom_roaming") == [420106]
    with pytest.raises(InvalidArgument, match=r"rows\[0\].county"):
        index.ingest_batch(FEED, "telecom_roaming", "t2", [RawRow("phone", PHONES[0], day=TODAY)])


def test_replace_batch_drops_earlier_rows(index: RiskIndex) -> None:
    index.ingest_batch(FEED, "home_quarantine", "q1", [RawRow("id_number", i) for i in IDS[:3]])
    index.ingest_batch(FEED, "home_quarantine", "q2", [RawRow("id_number", IDS[5])], replace=True)
    assert members(index, "home_quarantine") == 1
    stats = {v.source.name: v.stats for v in index.list_sources()}
    assert stats["home_quarantine"].row_count == 1
    assert stats["home_quarantine"].batch_count == 2


def test_registry_changes_are_versions_only_when_they_change(index: RiskIndex) -> None:
    hasher = healthcode_matcher.Hasher(SECRET)
    key, phone = hasher.person_key(IDS[0]), hasher.phone_key(PHONES[0])
    assert index.register_person(SERVICE, key, "11**************11") == (1, True)
    assert index.register_person(SERVICE, key, "11**************11") == (1, False)
    assert index.link_phone(SERVICE, key, "11**************11", phone, "138****0000") == 2
    assert index.link_phone(SERVICE, key, "11**************11", phone, "138****0000") == 2
    pid = index.current.index.person_id_by_key(key)
    assert pid is not None
    assert index.current.index.phones_of(pid) == [index.current.index.phone_id_by_key(phone)]
    assert index.unlink_phone(SERVICE, phone) == (3, True)
    assert index.unlink_phone(SERVICE, phone) == (3, False)
    assert index.current.index.phones_of(pid) == []


def test_registry_refuses_raw_masked_forms_and_wrong_roles(index: RiskIndex) -> None:
    key = healthcode_matcher.Hasher(SECRET).person_key(IDS[0])
    with pytest.raises(InvalidArgument, match="masked_id_number"):
        index.register_person(SERVICE, key, IDS[0])
    with pytest.raises(InvalidArgument, match="person_key"):
        index.register_person(SERVICE, b"short", "11**")
    with pytest.raises(PermissionDenied):
        index.register_person(FEED, key, "11**************11")
    with pytest.raises(PermissionDenied):
        index.ingest_batch(Actor(Role.VERIFIER, "v"), "confirmed", "b", [person_row(IDS[0])])


def test_county_levels(index: RiskIndex) -> None:
    admin = Actor(Role.ADMIN, "ops")
    assert index.set_county_level(admin, 120101, 3) == 1
    assert index.set_county_level(admin, 120101, 3) == 1
    assert index.current.index.county_levels() == {120101: 3}
    with pytest.raises(InvalidArgument) as caught:
        index.set_county_level(admin, 99, 0)
    assert [f for f, _ in caught.value.violations] == ["county", "level"]


def test_restart_rebuilds_the_same_index_and_keeps_numbering(tmp_path: Path) -> None:
    ri, repo = open_index(tmp_path)
    hasher = healthcode_matcher.Hasher(SECRET)
    ri.ingest_batch(FEED, "close_contact", "b1", [person_row(i) for i in IDS[:4]])
    ri.ingest_batch(
        FEED, "telecom_roaming", "t1", [RawRow("phone", PHONES[1], day=YESTERDAY, county=420106)]
    )
    ri.link_phone(SERVICE, hasher.person_key(IDS[9]), "11**", hasher.phone_key(PHONES[1]), "1**")
    ri.set_county_level(Actor(Role.ADMIN, "ops"), 420106, 3)
    before = ri.current
    ri.close()
    repo.close()

    again, _ = open_index(tmp_path)
    after = again.current
    assert after.version == before.version == 4
    for name in ("close_contact", "telecom_roaming"):
        assert after.index.source_len(name) == before.index.source_len(name)
    assert after.index.county_levels() == {420106: 3}
    phone_id = after.index.phone_id(PHONES[1])
    assert phone_id is not None
    holder = after.index.holder_of_phone(phone_id)
    assert holder == after.index.person_id(IDS[9])
    assert again.ingest_batch(
        FEED, "close_contact", "b1", [person_row(i) for i in IDS[:4]]
    ).replayed
    assert again.ingest_batch(FEED, "confirmed", "c1", [person_row(IDS[0])]).version == 5


def test_watch_sends_current_then_each_new_version(index: RiskIndex) -> None:
    stream = index.watch(0, lambda: True)
    index.ingest_batch(FEED, "confirmed", "b1", [person_row(IDS[0])])
    first = next(stream)
    assert isinstance(first, Published) and first.version == 1
    loaded = healthcode_matcher.Index.from_bytes(first.snapshot(), SECRET)
    assert loaded.source_len("confirmed") == 1
    index.ingest_batch(FEED, "confirmed", "b2", [person_row(IDS[1])])
    assert next(stream).version == 2


def test_watch_skips_the_version_the_replica_holds(index: RiskIndex) -> None:
    index.ingest_batch(FEED, "confirmed", "b1", [person_row(IDS[0])])
    active = [True]
    stream = index.watch(1, lambda: active[0])
    current = next(stream)  # "you are current": no snapshot of the version it holds
    assert isinstance(current, Delta) and (current.from_version, current.version) == (1, 1)
    index.ingest_batch(FEED, "confirmed", "b2", [person_row(IDS[1])])
    assert next(stream).version == 2
    index.close()
    assert list(stream) == []


def test_a_new_replica_gets_even_the_empty_version_zero(index: RiskIndex) -> None:
    first = next(index.watch(0, lambda: True))
    assert isinstance(first, Published) and first.version == 0
    assert healthcode_matcher.Index.from_bytes(first.snapshot(), SECRET).person_count == 0
