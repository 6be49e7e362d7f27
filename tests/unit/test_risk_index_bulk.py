"""The risk index's bulk registration (RegisterPeople) resolves a whole batch with a few
lookups and one write per table; it must do exactly what one statement per person did."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import sqlite3
from pathlib import Path

import pytest

from services._common.actors import Actor, Role
from services._common.errors import InvalidArgument
from services.risk_index import repository
from services.risk_index.logic import RiskIndex
from services.risk_index.model import Batch, KeyedPerson, Row
from services.risk_index.repository import RiskIndexRepository
from services.risk_index.validation import check_people
from tests.pg import Place
from tests.support import risk_index_in

NOW = dt.datetime(2024, 5, 10, 4, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(seconds=1)


def key(kind: str, n: int) -> bytes:
    return f"{kind}{n:015d}".encode()[:16].ljust(16, b"-")


def person(n: int, phones: tuple[int, ...] = (), cards: tuple[int, ...] = ()) -> KeyedPerson:
    return KeyedPerson(
        key("p", n),
        f"11**********{n % 100:02d}",
        [(key("m", p), f"138****{p:04d}") for p in phones],
        [(key("c", c), f"********{c:04d}") for c in cards],
    )


def tables(repo: RiskIndexRepository) -> dict[str, list[tuple[object, ...]]]:
    with repo.reading() as conn:
        return {
            t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")]
            for t in ("persons", "phones", "cards", "versions")
        }


def one_by_one(
    conn: sqlite3.Connection, people: list[KeyedPerson], when: str, version: int
) -> tuple[int, int, list[KeyedPerson]]:
    """The reference: the statements the registry issued per person before the bulk path."""
    created = linked = 0
    changed = []
    for p in people:
        new = (
            conn.execute(
                "INSERT INTO persons VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (p.key, p.masked, when, version),
            ).rowcount
            > 0
        )
        created += new
        links = []
        for table, items in (("phones", p.phones), ("cards", p.cards)):
            column = table[:-1] + "_key"
            held = [
                k
                for k, _ in items
                if (
                    r := conn.execute(
                        f"SELECT holder_key FROM {table} WHERE {column} = ?", (k,)
                    ).fetchone()
                )
                is not None
                and r[0] == p.key
            ]
            todo = [(k, m) for k, m in items if k not in held]
            conn.executemany(
                f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?) ON CONFLICT ({column}) DO UPDATE SET "
                "holder_key = excluded.holder_key, changed_at = excluded.changed_at, "
                f"version = excluded.version, masked_{table[:-1]} = excluded.masked_{table[:-1]}",
                [(k, m, p.key, when, version) for k, m in todo],
            )
            links.append(todo)
        linked += len(links[0]) + len(links[1])
        if new or links[0] or links[1]:
            changed.append(KeyedPerson(p.key, p.masked, links[0], links[1]))
    if changed:
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (version, repository._iso(NOW), f"people:{len(changed)}"),
        )
    return created, linked, changed


def test_bulk_registration_keeps_every_semantic(place: Place) -> None:
    # On both backends: on PostgreSQL the links are COPY'd and merged (pg.upsert_rows).
    repo = RiskIndexRepository(place("ri.sqlite3"))
    # Phone 1 and card 1 go to person 1; person 0 keeps phone 0.
    first = [person(0, (0, 1)), person(1, (2,), (1,)), person(2)]
    created, linked, changed = repo.register_people(first, NOW, 1)
    assert (created, linked, [p.key for p in changed]) == (3, 4, [p.key for p in first])

    # The same call again: nothing is new, nothing changes, no version is opened.
    assert repo.register_people(first, LATER, 2) == (0, 0, [])
    assert [r[0] for r in tables(repo)["versions"]] == [1]

    # A known person is skipped; phone 1 moves from person 0 to person 1 (an unlink from 0
    # and a link to 1 in one upsert); a new person 3 with a new card.
    second = [person(0, (0,)), person(1, (1, 2), (1,)), person(3, (), (5,))]
    created, linked, changed = repo.register_people(second, LATER, 2)
    assert (created, linked) == (1, 2)
    assert [(p.key, list(p.phones), list(p.cards)) for p in changed] == [
        (key("p", 1), [(key("m", 1), "138****0001")], []),
        (key("p", 3), [], [(key("c", 5), "********0005")]),
    ]
    state = tables(repo)
    holders = {r[0]: r[2] for r in state["phones"]}
    assert holders[key("m", 1)] == key("p", 1) and holders[key("m", 0)] == key("p", 0)
    versions = {r[0]: r[4] for r in state["phones"]}
    assert (versions[key("m", 1)], versions[key("m", 0)]) == (2, 1)
    registered = {r[0]: r[2] for r in state["persons"]}
    assert registered[key("p", 0)] == repository._iso(NOW)  # a known person keeps its record
    repo.close()


def test_a_phone_named_twice_in_one_call_ends_with_its_last_holder(place: Place) -> None:
    # On both backends: on PostgreSQL the links are COPY'd and merged (pg.upsert_rows).
    repo = RiskIndexRepository(place("ri.sqlite3"))
    # Person 5 twice in the call: created once; phone 7 moves 0 -> 1 -> 0 within the call.
    people = [person(0, (7,)), person(5), person(1, (7,)), person(5), person(0, (7,))]
    created, linked, changed = repo.register_people(people, NOW, 1)
    assert (created, linked) == (3, 3)
    assert [p.key for p in changed] == [key("p", n) for n in (0, 5, 1, 0)]
    assert {r[0]: r[2] for r in tables(repo)["phones"]} == {key("m", 7): key("p", 0)}
    repo.close()


def test_an_unlinked_phone_is_linked_again(place: Place) -> None:
    # On both backends: on PostgreSQL the links are COPY'd and merged (pg.upsert_rows).
    repo = RiskIndexRepository(place("ri.sqlite3"))
    repo.register_people([person(0, (3,))], NOW, 1)
    assert repo.unlink_phone(key("m", 3), NOW, 2) == 2
    created, linked, changed = repo.register_people([person(0, (3,))], LATER, 3)
    assert (created, linked, [p.key for p in changed]) == (0, 1, [key("p", 0)])
    assert {r[0]: (r[2], r[4]) for r in tables(repo)["phones"]} == {key("m", 3): (key("p", 0), 3)}
    repo.close()


@pytest.mark.parametrize("seed", range(6))
def test_bulk_registration_matches_one_statement_per_person(
    place: Place, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On both backends (look-ups by IN list, or by array on PostgreSQL), with small look-up
    # chunks so a call spans several of them.
    monkeypatch.setattr("services._common.pg.SQLITE_KEYS_PER_LOOKUP", 7)
    monkeypatch.setattr("services._common.pg.PG_KEYS_PER_LOOKUP", 7)
    rng = random.Random(seed)
    bulk = RiskIndexRepository(place("bulk.sqlite3"))
    reference = RiskIndexRepository(place("reference.sqlite3"))
    when = repository._iso(NOW)
    for version in range(1, 6):
        people = [
            person(
                rng.randrange(40),
                tuple(rng.randrange(30) for _ in range(rng.randrange(3))),
                tuple(rng.randrange(10) for _ in range(rng.randrange(2))),
            )
            for _ in range(rng.randrange(1, 60))
        ]
        if version == 3:
            for phone in range(0, 30, 4):
                bulk.unlink_phone(key("m", phone), NOW, version)
                reference.unlink_phone(key("m", phone), NOW, version)
        got = bulk.register_people(people, NOW, version)
        with reference.transaction() as conn:
            want = one_by_one(conn, people, when, version)
        assert got == want
        assert tables(bulk) == tables(reference)
    bulk.close()
    reference.close()


def test_check_people_passes_good_entries_and_names_every_bad_one() -> None:
    good = [person(0, (1,), (2,)), KeyedPerson(key("p", 1), " 11**********01 ")]
    assert [p.masked for p in check_people(good)] == ["11**********00", "11**********01"]
    bad = [
        person(0),
        KeyedPerson(b"short", "11**********1X"),
        KeyedPerson(key("p", 2), "110101199001011234", [(key("m", 0), "")]),
        KeyedPerson(key("p", 3), "1**", cards=[(key("c", 1), "13812345678*")]),
    ]
    with pytest.raises(InvalidArgument) as refused:
        check_people(bad)
    assert [f for f, _ in refused.value.violations] == [
        "people[1].person_key",
        "people[2].masked_id_number",
        "people[2].phones[0].masked_phone",
        "people[3].cards[0].masked_card",
    ]


def test_foreign_keys_hold_after_a_bulk_registration_and_stay_enforced(tmp_path: Path) -> None:
    repo = RiskIndexRepository(tmp_path / "ri.sqlite3")
    repo.register_people([person(0, (0, 1), (0,)), person(1, (1,))], NOW, 1)
    with repo.reading() as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError), repo.transaction() as conn:
        conn.execute(
            "INSERT INTO phones VALUES (?, '138****0009', ?, '', 1)", (key("m", 9), key("p", 9))
        )
    repo.close()


def old_digest(batch: Batch) -> bytes:
    """The fingerprint as first written (one hash update per part); stored digests use it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{batch.source}\0{int(batch.replace)}\0".encode())
    for r in batch.rows:
        h.update(r.kind.encode() + b"\0" + r.key)
        h.update(f"\0{r.day}\0{r.county}\0".encode())
        if r.hour is not None:
            h.update(f"h{r.hour}\0".encode())
        h.update(json.dumps(dict(r.attributes), sort_keys=True).encode() + b"\0")
    return h.digest()


def test_batch_digest_is_unchanged() -> None:
    rows = [
        Row("person", key("p", 0), "11**********00", 19852, 120101),
        Row("person", key("p", 1), "11**********01", None, None, {"lab": "天津", "a": "1"}),
        Row("phone", key("m", 2), "138****0002", 19852, None, {}, 19852 * 24 + 7),
        Row("phone", key("m", 3), "138****0003", None, 120102, {"z": "x"}, 0),
    ]
    for replace in (False, True):
        batch = Batch("b1", "close_contact", replace, Actor(Role.FEED, "feed"), rows)
        assert batch.digest() == old_digest(batch)
    assert Batch("b2", "s", False, Actor(Role.FEED, "f"), []).digest() == old_digest(
        Batch("b2", "s", False, Actor(Role.FEED, "f"), [])
    )


def open_index(path: Path) -> RiskIndex:
    # Nothing publishes by itself: flush() does.
    return risk_index_in(path, clock=lambda: NOW, publish_interval_s=3600.0)


def test_the_index_follows_bulk_registrations_and_a_restart_rebuilds_it(tmp_path: Path) -> None:
    service = Actor(Role.SERVICE, "declaration")
    ri = open_index(tmp_path)
    first = ri.register_people(service, [person(0, (0, 1)), person(1, (2,), (1,)), person(2)])
    assert (first.version, first.created, first.linked) == (1, 3, 4)
    # Known people skipped, phone 1 moves to person 1: one link changed.
    moved = ri.register_people(service, [person(0, (0,)), person(1, (1, 2), (1,)), person(2)])
    assert (moved.version, moved.created, moved.linked) == (1, 0, 1)
    assert ri.register_people(service, [person(2)]).linked == 0
    ri.flush()
    index = ri.current.index
    assert (index.person_count, index.phone_count, index.card_count) == (3, 3, 1)
    phone = index.phone_id_by_key(key("m", 1))
    assert phone is not None
    assert index.holder_of_phone(phone) == index.person_id_by_key(key("p", 1))
    built = index.to_bytes()
    # No close(): as after kill -9. Everything acknowledged is rebuilt from the database.
    again = open_index(tmp_path)
    try:
        assert again.current.version == 1 and again.current.index.to_bytes() == built
    finally:
        again.close()
        ri.close()
