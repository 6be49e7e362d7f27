"""Cross-province exchange (R6): the agreed hash, the province table and its colour mapping,
the export's shared-only colours and the import's sources, in process."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from pathlib import Path

import healthcode_matcher
import pytest

from services._common import days
from services._common.actors import Actor, Role
from services._common.config import ConfigError
from services._common.errors import InvalidArgument, NotFound, PermissionDenied
from services._common.identifiers import Identifiers
from services.risk_index import provinces
from services.risk_index.logic import RiskIndex
from services.risk_index.model import KeyedPerson
from services.risk_index.provinces import KeyedColours, ProvinceExchange
from services.risk_index.repository import RiskIndexRepository
from tests.pg import Place
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(5, 41).decode().split()
NOW = dt.datetime(2024, 5, 10, 4, 0, tzinfo=dt.UTC)
ADMIN = Actor(Role.ADMIN, "operator")
KEYS = {"beijing": bytes(32), "hebei": bytes(range(32))}


def test_the_exchange_hash_is_the_documented_hmac() -> None:
    key = bytes(range(32))
    expected = hmac.new(key, b"healthcode-exchange-v1\0" + IDS[0].encode(), hashlib.sha256)
    assert provinces.exchange_hash(key, IDS[0]) == expected.digest()[:16]
    # Another province's key gives an unrelated hash; the person key is another thing again.
    assert provinces.exchange_hash(bytes(32), IDS[0]) != provinces.exchange_hash(key, IDS[0])
    person_key = Identifiers.from_secret(SECRET).person(IDS[0], "x").key
    assert provinces.exchange_hash(SECRET, IDS[0]) != person_key


def test_the_shipped_table_recognises_beijing_and_hebei() -> None:
    table = provinces.load_provinces(provinces.DEFAULT_PROVINCES)
    assert set(table) == {"beijing", "hebei"}
    for code in table:
        p = table[code]
        assert p.recognition == "direct"
        assert p.source_for("red") == ("province_red", True)
        assert p.source_for(" Yellow ") == ("province_yellow", True)
        assert p.source_for("红码") == ("province_red", True)
        assert p.source_for("green") == ("", True)
        assert p.source_for("purple") == ("province_yellow", False)  # the default


def test_a_table_naming_another_source_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[[provinces]]\ncode = "jiangsu"\n[provinces.states]\nred = "confirmed"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="states.red: 'confirmed' is not one of"):
        provinces.load_provinces(path)


def test_exchange_keys_are_made_for_development_only(tmp_path: Path) -> None:
    assert provinces.load_exchange_keys(tmp_path / "k", ["beijing"], create=False) == {}
    made = provinces.load_exchange_keys(tmp_path / "k", ["beijing"], create=True)
    assert len(made["beijing"]) == 32
    assert (tmp_path / "k" / "beijing.key").stat().st_mode & 0o077 == 0
    again = provinces.load_exchange_keys(tmp_path / "k", ["beijing"], create=False)
    assert again == made


class FakeColours:
    """Shared colours by person key: 3 for the listed key, 0 for one unknown, else green."""

    def __init__(self, red: bytes, unknown: bytes) -> None:
        self.red, self.unknown = red, unknown
        self.calls = 0

    def __call__(self, person_keys: bytes) -> KeyedColours:
        self.calls += 1
        keys = [person_keys[i : i + 16] for i in range(0, len(person_keys), 16)]
        colours = bytes(3 if k == self.red else 0 if k == self.unknown else 1 for k in keys)
        return KeyedColours(colours, 7, "v+shared", "2024-05-10")


Exchange = tuple[ProvinceExchange, RiskIndex, FakeColours]


@pytest.fixture()
def exchange(place: Place) -> Exchange:
    # Once per storage backend (tests/conftest.py `place`).
    repo = RiskIndexRepository(place("ri.sqlite3"))
    ids = Identifiers.from_secret(SECRET)
    index = RiskIndex(repo, ids, SECRET, clock=lambda: NOW)
    table = provinces.load_provinces(provinces.DEFAULT_PROVINCES)
    keys = {p: ids.person(p, "x").key for n, p in enumerate(IDS)}
    colours = FakeColours(red=keys[IDS[1]], unknown=keys[IDS[2]])
    x = ProvinceExchange(index, repo, ids, table, KEYS, colours, clock=lambda: NOW)
    return x, index, colours


def test_enrol_keeps_hashes_for_every_province_and_names_bad_entries(exchange: Exchange) -> None:
    x, _index, _ = exchange
    enrolled, problems = x.enrol(ADMIN, [*IDS[:3], "12345"])
    assert enrolled == 3 and [i for i, _ in problems] == [3]
    with pytest.raises(PermissionDenied):
        x.enrol(Actor(Role.PARTNER, "beijing"), IDS[:1])


def test_export_names_people_by_hash_with_known_colours_only(exchange: Exchange) -> None:
    x, _index, colours = exchange
    x.enrol(ADMIN, IDS[:3])
    chunks = list(x.export(Actor(Role.PARTNER, "beijing"), ""))
    assert len(chunks) == 1 and chunks[0].last
    got = {chunks[0].hashes[i * 16 : (i + 1) * 16]: c for i, c in enumerate(chunks[0].colours)}
    h = {i: provinces.exchange_hash(KEYS["beijing"], i) for i in IDS[:3]}
    assert got == {h[IDS[0]]: 1, h[IDS[1]]: 3}  # IDS[2] unknown to colour: left out
    assert chunks[0].rule_set_version == "v+shared" and colours.calls == 1


def test_a_province_partner_exchanges_its_own_province_only(exchange: Exchange) -> None:
    x, _index, _ = exchange
    with pytest.raises(PermissionDenied, match="its own province"):
        list(x.export(Actor(Role.PARTNER, "hebei"), "beijing"))
    with pytest.raises(NotFound, match="configured: beijing, hebei"):
        list(x.export(ADMIN, "shanghai"))
    with pytest.raises(InvalidArgument):
        list(x.export(ADMIN, ""))


def test_import_maps_states_to_sources_and_replays(exchange: Exchange) -> None:
    x, index, _ = exchange
    x.enrol(ADMIN, IDS[:3])
    h = {i: provinces.exchange_hash(KEYS["hebei"], i) for i in IDS[:3]}
    statuses = [(h[IDS[0]], "red"), (h[IDS[1]], "弹窗"), (h[IDS[2]], "green"), (bytes(16), "red")]
    done = x.import_status(Actor(Role.PARTNER, "hebei"), "", "hb-1", "", statuses)
    # Hebei's table has no 弹窗: its default (yellow) applies.
    assert (done.matched, done.unmatched, done.unknown_states) == (3, 1, 1)
    assert done.ingested == {"province_red": 1, "province_yellow": 1}
    assert index.current.index.source_len("province_red") == 1
    assert index.current.index.source_len("province_yellow") == 1
    again = x.import_status(Actor(Role.PARTNER, "hebei"), "", "hb-1", "", statuses)
    assert again.replayed and again.ingested == done.ingested
    yesterday = days.format_day(days.today(NOW) - 1)
    with pytest.raises(InvalidArgument, match="exchange_hash"):
        x.import_status(ADMIN, "hebei", "hb-2", yesterday, [(b"short", "red")])


def _exported(x: ProvinceExchange, code: str) -> set[bytes]:
    chunks = list(x.export(ADMIN, code))
    return {c.hashes[i : i + 16] for c in chunks for i in range(0, len(c.hashes), 16)}


def test_registrations_keep_the_exchange_hashes_they_carry(exchange: Exchange) -> None:
    # What the declaration service's outbox hands over (no ID number): hashes with the person.
    x, index, _ = exchange
    ids = Identifiers.from_secret(SECRET)
    service = Actor(Role.SERVICE, "declaration")

    def hashes(id_number: str) -> list[tuple[str, bytes]]:
        return [(code, provinces.exchange_hash(key, id_number)) for code, key in KEYS.items()]

    one = ids.person(IDS[0], "x")
    version, created = index.register_person(service, one.key, one.masked, hashes(IDS[0]))
    assert created and version > 0
    bulk = [
        KeyedPerson(ids.person(i, "x").key, ids.person(i, "x").masked, (), (), hashes(i))
        for i in IDS[1:4]
    ]
    assert index.register_people(service, bulk).created == 3
    for code, key in KEYS.items():
        # IDS[2] is unknown to the colour service (FakeColours): not exported, but kept.
        want = {provinces.exchange_hash(key, i) for i in (IDS[0], IDS[1], IDS[3])}
        assert _exported(x, code) == want
    # A resend (the outbox after a crash) changes nothing; a person already known (registered
    # before, without hashes) gains them: the index itself does not change.
    assert index.register_person(service, one.key, one.masked, hashes(IDS[0]))[1] is False
    late = ids.person(IDS[4], "x")
    index.register_person(service, late.key, late.masked)
    before = index.current.version
    assert index.register_people(service, [KeyedPerson(late.key, late.masked)]).created == 0
    index.register_people(service, [KeyedPerson(late.key, late.masked, (), (), hashes(IDS[4]))])
    assert index.current.version == before
    assert provinces.exchange_hash(KEYS["hebei"], IDS[4]) in _exported(x, "hebei")


def test_a_malformed_exchange_hash_is_refused_by_field(exchange: Exchange) -> None:
    _x, index, _ = exchange
    person = Identifiers.from_secret(SECRET).person(IDS[0], "x")
    service = Actor(Role.SERVICE, "declaration")
    with pytest.raises(InvalidArgument) as short:
        index.register_person(service, person.key, person.masked, [("beijing", b"short")])
    assert short.value.violations[0][0] == "exchange_hashes[0].hash"
    bad = KeyedPerson(person.key, person.masked, (), (), [("Bei Jing", bytes(16))])
    with pytest.raises(InvalidArgument) as code:
        index.register_people(service, [KeyedPerson(person.key, person.masked), bad])
    assert code.value.violations[0][0] == "people[1].exchange_hashes[0].province"
