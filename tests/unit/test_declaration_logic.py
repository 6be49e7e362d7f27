"""Registration, proxies, phones and the once-a-day declaration, without a network."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import healthcode_matcher
import pytest

from services._common.actors import Actor, Role
from services._common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services._common.identifiers import Identified, Identifiers, mask_id_number, mask_phone
from services.declaration.logic import Declarations, derived_rows
from services.declaration.model import DeclarationInput, ImportInput
from services.declaration.repository import DeclarationRepository
from tests import pg
from tests.pg import Place
from tests.support import SECRET, Clock

IDS = healthcode_matcher.synthetic_id_numbers(10, 3).decode().split()
PHONES = healthcode_matcher.synthetic_phones(10, 3).decode().split()
GRID = Actor(Role.GRID_WORKER, "grid-0042")


@pytest.fixture()
def clock() -> Clock:
    # 23:30 in Shanghai on 10 May 2024.
    return Clock(dt.datetime(2024, 5, 10, 15, 30, tzinfo=dt.UTC))


@pytest.fixture()
def repo(place: Place) -> Iterator[DeclarationRepository]:
    # Once per storage backend (tests/conftest.py `place`).
    repo = DeclarationRepository(place("d.sqlite3"))
    yield repo
    repo.close()


@pytest.fixture()
def ids() -> Identifiers:
    return Identifiers.from_secret(SECRET)


@pytest.fixture()
def service(repo: DeclarationRepository, ids: Identifiers, clock: Clock) -> Declarations:
    return Declarations(repo, ids, clock=clock)


def citizen(ids: Identifiers, id_number: str) -> Actor:
    me = ids.person(id_number, "actor.person.id_number")
    return Actor(Role.CITIZEN, "", me.key, me.masked)


def ref(ids: Identifiers, id_number: str) -> Identified:
    return ids.person(id_number, "person.id_number")


def test_register_stores_keys_and_masks_and_queues_the_index(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers
) -> None:
    person, created = service.register(
        citizen(ids, IDS[0]), "张三", IDS[0], [PHONES[0], PHONES[1]], "TJ00001234"
    )
    assert created
    assert person.key == ref(ids, IDS[0]).key
    assert [p.masked for p in person.phones] == [
        mask_phone(PHONES[0]),
        mask_phone(PHONES[1]),
    ]
    assert person.masked_card == "******1234"
    assert person.registered_by.role is Role.CITIZEN
    assert [m.kind for m in repo.pending()] == [
        "register_person",
        "link_phone",
        "link_phone",
        "link_card",
    ]


def test_no_raw_number_reaches_the_database(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers, place: Place
) -> None:
    service.register(GRID, "李四", IDS[1], [PHONES[2]])
    service.declare(GRID, ref(ids, IDS[1]), DeclarationInput(temperature_celsius=38.0))
    dump = pg.dump(place("d.sqlite3"))
    assert IDS[1] not in dump and PHONES[2] not in dump
    assert "李四" in dump  # names are kept (printed codes), numbers are not


def test_replayed_registration_is_harmless_and_adds_new_phones(
    service: Declarations, repo: DeclarationRepository
) -> None:
    service.register(GRID, "王五", IDS[2], [PHONES[3]])
    person, created = service.register(GRID, "王五", IDS[2], [PHONES[3], PHONES[4]])
    assert not created
    assert len(person.phones) == 2
    assert [m.kind for m in repo.pending()][-1] == "link_phone"
    with pytest.raises(AlreadyExists, match="another name"):
        service.register(GRID, "赵六", IDS[2], [])


def test_a_phone_has_one_holder(service: Declarations, ids: Identifiers) -> None:
    service.register(GRID, "甲", IDS[3], [PHONES[5]])
    with pytest.raises(AlreadyExists, match=r"phones\[0\]"):
        service.register(GRID, "乙", IDS[4], [PHONES[5]])
    service.register(GRID, "乙", IDS[4], [])
    with pytest.raises(AlreadyExists):
        service.add_phone(GRID, ref(ids, IDS[4]), PHONES[5])


def test_every_bad_field_is_reported(service: Declarations) -> None:
    bad = IDS[0][:-1] + ("0" if IDS[0][-1] != "0" else "1")
    with pytest.raises(InvalidArgument) as caught:
        service.register(GRID, " ", bad, [PHONES[0], "12345"], "")
    assert [f for f, _ in caught.value.violations] == ["name", "id_number", "phones[1]"]


def test_a_citizen_registers_only_themself(service: Declarations, ids: Identifiers) -> None:
    with pytest.raises(PermissionDenied, match="family_proxy"):
        service.register(citizen(ids, IDS[5]), "丙", IDS[6], [])
    proxy = citizen(ids, IDS[5])
    proxy = Actor(Role.FAMILY_PROXY, "", proxy.person_key, proxy.masked_id_number)
    person, _ = service.register(proxy, "丙", IDS[6], [])
    assert person.registered_by.role is Role.FAMILY_PROXY
    assert person.registered_by.masked_id_number == mask_id_number(IDS[5])
    with pytest.raises(PermissionDenied):
        service.register(Actor(Role.VERIFIER, "v1"), "丁", IDS[7], [])


def test_one_declaration_per_shanghai_day(
    service: Declarations, ids: Identifiers, clock: Clock
) -> None:
    service.register(GRID, "张三", IDS[0], [])
    person = ref(ids, IDS[0])
    declaration, opens = service.declare(GRID, person, DeclarationInput())
    assert declaration.derived_sources == []
    assert opens.isoformat() == "2024-05-11T00:00:00+08:00"
    with pytest.raises(FailedPrecondition) as caught:
        service.declare(GRID, person, DeclarationInput())
    assert "2024-05-11T00:00:00+08:00" in caught.value.message
    assert caught.value.violations[0][0] == "DAILY_DECLARATION"
    clock.advance(dt.timedelta(minutes=31))  # 00:01 in Shanghai: a new day
    declaration, _ = service.declare(GRID, person, DeclarationInput())
    assert declaration.day == 19854


def test_declaration_feeds_the_declared_sources(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers
) -> None:
    service.register(GRID, "张三", IDS[0], [])
    before = len(repo.pending())
    declaration, _ = service.declare(
        GRID,
        ref(ids, IDS[0]),
        DeclarationInput(
            symptoms=["cough", "cough"],
            temperature_celsius=37.29999923706055,  # 37.3 through a float32
            visits=[(420106, "2024-05-08", "market"), (420106, "2024-05-08", "")],
            case_contact=True,
            case_contact_day="2024-05-07",
        ),
    )
    assert declaration.temperature_celsius == 37.3
    assert declaration.symptoms == ["cough"]
    assert declaration.derived_sources == [
        "declared_case_contact",
        "declared_fever",
        "declared_symptoms",
        "declared_travel",
    ]
    batches = [m.payload for m in repo.pending()[before:]]
    travel = next(b for b in batches if b["source"] == "declared_travel")
    assert travel["rows"] == [
        {
            "person_key": ref(ids, IDS[0]).key.hex(),
            "masked": mask_id_number(IDS[0]),
            "day": "2024-05-08",
            "county": 420106,
        }
    ]
    assert travel["batch_id"].endswith(":2024-05-10:declared_travel")


def test_bad_declaration_fields(service: Declarations, ids: Identifiers) -> None:
    service.register(GRID, "张三", IDS[0], [])
    with pytest.raises(InvalidArgument) as caught:
        service.declare(
            GRID,
            ref(ids, IDS[0]),
            DeclarationInput(
                symptoms=[""],
                temperature_celsius=45.0,
                visits=[(12, "2024-05-30", f"call {PHONES[0]}")],
                case_contact=False,
                case_contact_day="2024-05-01",
            ),
        )
    assert [f for f, _ in caught.value.violations] == [
        "symptoms[0]",
        "temperature_celsius",
        "visits[0].county",
        "visits[0].day",
        "visits[0].place",
        "case_contact_day",
    ]


def test_unregistered_person(service: Declarations, ids: Identifiers) -> None:
    with pytest.raises(NotFound, match="Register"):
        service.declare(citizen(ids, IDS[9]), ref(ids, IDS[9]), DeclarationInput())
    # A proxy holds no mandate for someone not registered: refused before anything is read.
    with pytest.raises(PermissionDenied, match="no active mandate"):
        service.declare(GRID, ref(ids, IDS[9]), DeclarationInput())


def test_remove_phone(service: Declarations, repo: DeclarationRepository, ids: Identifiers) -> None:
    service.register(GRID, "张三", IDS[0], [PHONES[0], PHONES[1]])
    person = service.remove_phone(GRID, ref(ids, IDS[0]), ids.phone(PHONES[0], "phone"))
    assert len(person.phones) == 1
    assert repo.pending()[-1].kind == "unlink_phone"
    with pytest.raises(NotFound):
        service.remove_phone(GRID, ref(ids, IDS[0]), ids.phone(PHONES[0], "phone"))


def test_derived_rows_threshold() -> None:
    assert derived_rows(1, [], 37.2, [], None) == {}
    assert derived_rows(1, [], 37.3, [], None) == {"declared_fever": [(1, 0)]}


def test_an_import_stores_each_card_with_its_last_holder_and_each_registrar_s_mandate(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers
) -> None:
    # On both backends. Cards no one else touches go in with their new person's row; a card
    # passed on within the chunk goes by updates in row order, so the unique card never
    # clashes: person 0 takes C, then D; person 1 then takes C.
    admin = Actor(Role.ADMIN, "operator")

    def row(line: int, i: int, card: str) -> ImportInput:
        return ImportInput(line, IDS[i], f"张{i}", registered_by=Role.CITIZEN, transit_card=card)

    rows = [
        row(2, 0, "TJ000000000C"),
        row(3, 0, "TJ000000000D"),
        row(4, 1, "TJ000000000C"),
        row(5, 2, "TJ000000000E"),
        row(6, 3, "")._replace(registered_by=Role.FAMILY_PROXY, registrar_id_number=IDS[5]),
        row(7, 4, "")._replace(registered_by=Role.GRID_WORKER, registrar_principal="grid-7"),
    ]
    outcome = service.import_chunk(admin, rows)
    assert (outcome.imported, outcome.rejected) == (5, 0)
    # The proxies who registered persons 3 and 4 hold mandates for them, approved by the import.
    mandates = repo.list_mandates()
    assert [(m.person_key, m.proxy.role, m.basis) for m in mandates] == [
        (ref(ids, IDS[3]).key, Role.FAMILY_PROXY, "import"),
        (ref(ids, IDS[4]).key, Role.GRID_WORKER, "import"),
    ]
    assert mandates[0].proxy.person_key == ref(ids, IDS[5]).key
    assert mandates[1].proxy.principal == "grid-7"
    assert all(m.approved_by.principal == "operator" for m in mandates)
    holders = {
        card: repo.card_holder(ids.card(card, "card").key)
        for card in ("TJ000000000C", "TJ000000000D", "TJ000000000E")
    }
    assert holders == {
        "TJ000000000C": ref(ids, IDS[1]).key,
        "TJ000000000D": ref(ids, IDS[0]).key,
        "TJ000000000E": ref(ids, IDS[2]).key,
    }
    masked = {i: repo.get_person(ref(ids, IDS[i]).key) for i in range(4)}
    assert [p.masked_card if p else None for p in masked.values()] == [
        "********000D",
        "********000C",
        "********000E",
        "",
    ]
