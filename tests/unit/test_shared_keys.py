"""One copy of the keys for every replica of a machine (issue 9, item 2): replicas (and the risk
index) that load a whole index version read its person and phone keys from files they all map
(`Index.share_keys`, matcher_ext/src/shared.rs), and answer exactly as a replica holding its
own keys does. The format's own checks (damage, truncation, another registry's keys, a file
behind or ahead of the index) are the Rust tests of shared.rs; here, the replica's use of it."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import healthcode_matcher as hm
import pytest

from services._common.actors import Actor, Role
from services._common.days import SHANGHAI, day_number
from services._common.identifiers import mask_id_number
from services._common.sources import SOURCES
from services.colour.engine import ColourEngine
from services.colour.follower import IndexFollower
from services.colour.rulestore import compile_rules
from services.risk_index.logic import RiskIndex
from services.risk_index.model import KeyedPerson
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, Clock, risk_index_in

PEOPLE = hm.synthetic_id_numbers(300, 77).decode().split()
PHONES = hm.synthetic_phones(200, 77).decode().split()
NEWCOMER = hm.synthetic_id_numbers(301, 77).decode().split()[300]
TODAY = dt.date(2021, 3, 1)
HASHER = hm.Hasher(SECRET)
HIGH_RISK_COUNTY = 420_106


def city() -> hm.Index:
    """300 people, 200 phones; a tenth of the people confirmed cases, a few phones in a
    high-risk place (so phone keys decide colours too)."""
    builder = hm.Index(SECRET).builder()
    for name, source in SOURCES.items():
        builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
    for person in PEOPLE:
        builder.add_person(person)
    for n, phone in enumerate(PHONES):
        builder.add_phone(phone, builder.add_person(PEOPLE[n]))
    builder.add_rows_by_identifier("confirmed", PEOPLE[::10], [day_number(TODAY)] * 30)
    # Phones seen in the highest-risk county: their holders' colour comes through phone keys.
    builder.set_county_level(HIGH_RISK_COUNTY, 3)
    builder.add_rows_by_identifier(
        "telecom_roaming", PHONES[1::20], [day_number(TODAY)] * 10, [HIGH_RISK_COUNTY] * 10
    )
    return builder.finish(version=7)


def engine() -> ColourEngine:
    clock = Clock(dt.datetime(2021, 3, 1, 9, 0, tzinfo=SHANGHAI))
    return ColourEngine(SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)), now=clock)


def resumed(snapshot: Path, shared: Path | None) -> ColourEngine:
    """A replica that starts from `snapshot`, as a restarted worker does."""
    replica = engine()
    follower = IndexFollower(
        replica, "127.0.0.1:9", SECRET, snapshot_path=snapshot, shared_keys_dir=shared
    )
    try:
        assert follower.resume_from_snapshot()
    finally:
        follower._channel.close()  # never started: nothing else to stop
    return replica


def colours(replica: ColourEngine) -> list[object]:
    return [replica.evaluate(HASHER.person_key(p)).colour for p in [*PEOPLE, NEWCOMER]]


def test_two_replicas_map_one_copy_and_answer_as_one_holding_its_own(tmp_path: Path) -> None:
    snapshot = tmp_path / "index.snapshot"
    city().save(str(snapshot))
    shared = tmp_path / "shared-keys"
    own = resumed(snapshot, None)
    first, second = resumed(snapshot, shared), resumed(snapshot, shared)
    assert sorted(p.name for p in shared.iterdir()) == ["persons.keys", "phones.keys"]
    for replica in (first, second):
        assert replica.index is not None and replica.index.shared_person_count == len(PEOPLE)
        assert colours(replica) == colours(own)
    assert own.index is not None and own.index.shared_person_count == 0
    # Red: the 30 confirmed cases by person key, the 10 phones' holders by phone key.
    assert colours(own).count(hm.Colour.RED) == 40
    assert {colours(own)[n] for n in range(1, 200, 20)} == {hm.Colour.RED}

    # A person registered after the files were written: kept in the process, found as before.
    index = first.index
    assert index is not None
    builder = index.builder()
    builder.add_person(NEWCOMER)
    first.install_index(builder.finish(version=8))
    assert first.evaluate(HASHER.person_key(NEWCOMER)).registered
    assert not second.evaluate(HASHER.person_key(NEWCOMER)).registered  # still at version 7


def test_a_replica_that_cannot_share_keeps_its_keys_and_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = tmp_path / "index.snapshot"
    city().save(str(snapshot))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the shared keys would go", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="services.colour.follower"):
        replica = resumed(snapshot, blocked / "shared-keys")
    assert replica.index is not None and replica.index.shared_person_count == 0
    assert colours(replica) == colours(resumed(snapshot, None))
    assert "keys not shared" in caplog.text


def test_a_damaged_key_file_is_written_again_not_believed(tmp_path: Path) -> None:
    index = city()
    shared = tmp_path / "shared-keys"
    shared.mkdir()
    _, done = index.share_keys(str(shared))
    assert done == {"persons": "written", "phones": "written"}
    data = bytearray((shared / "persons.keys").read_bytes())
    data[64] ^= 0xFF  # the first person's key
    (shared / "persons.keys").write_bytes(bytes(data))
    again, done = index.share_keys(str(shared))
    assert done == {"persons": "written", "phones": "mapped"}
    assert again.person_id(PEOPLE[0]) == index.person_id(PEOPLE[0]) == 0
    assert again.to_bytes() == index.to_bytes()  # the same index, byte for byte


def test_the_risk_index_reads_the_keys_of_the_index_it_loads_from_the_same_files(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-keys"

    def start() -> RiskIndex:
        return risk_index_in(
            tmp_path, snapshot_path=tmp_path / "index.snapshot", shared_keys_dir=shared
        )

    first = start()
    people = [KeyedPerson(HASHER.person_key(p), mask_id_number(p)) for p in PEOPLE]
    first.register_people(Actor(Role.SERVICE, "declaration"), people[:200])
    first.flush()
    first.close()  # writes its snapshot at version 1
    again = start()
    try:
        # Loaded whole from its snapshot: every key from the files, written by it (an empty
        # pair was written at the first start, when it held nobody).
        assert again.current.index.shared_person_count == 200
        assert int.from_bytes((shared / "persons.keys").read_bytes()[8:16], "little") == 200
        # Registrations after the load stay in the process, and every id is as it was.
        again.register_people(Actor(Role.SERVICE, "declaration"), people[200:])
        again.flush()
        index = again.current.index
        assert (index.person_count, index.shared_person_count) == (300, 200)
        assert [index.person_id(p) for p in PEOPLE] == list(range(300))
        # A replica loading this version finds the files well short of it (200 of 300) and
        # writes them whole; the next maps them.
        replica, done = index.share_keys(str(shared))
        assert done["persons"] == "written" and replica.shared_person_count == 300
        _, done = index.share_keys(str(shared))
        assert done["persons"] == "mapped"
    finally:
        again.close()
