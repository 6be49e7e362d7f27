"""Proxy mandates (R3, issue 10) without a network: a family proxy or grid worker acts only for
the people an active mandate links them to; registering someone records one; grants can be
time-boxed (a test clock runs them out) and revoked; a refused act changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import healthcode_matcher
import pytest

from services._common.actors import Actor, NoMandate, Role
from services._common.errors import InvalidArgument, NotFound, PermissionDenied
from services._common.identifiers import Identified, Identifiers, mask_id_number
from services._common.storage import SqliteRepository
from services.declaration.logic import Declarations, ProxyInput
from services.declaration.model import (
    ACTIVE,
    EXPIRED,
    GRANT,
    IMPORT,
    REGISTRATION,
    REVOKED,
    DeclarationInput,
    ImportInput,
    Mandate,
    RecordedActor,
)
from services.declaration.repository import (
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    DeclarationRepository,
)
from tests import pg
from tests.pg import Place
from tests.support import SECRET, Clock

IDS = healthcode_matcher.synthetic_id_numbers(12, 1010).decode().split()
PHONES = healthcode_matcher.synthetic_phones(12, 1010).decode().split()
GRANNY, DAUGHTER, NEIGHBOUR, LONER, STRANGER = IDS[:5]
GRID = Actor(Role.GRID_WORKER, "grid-hp-007")
OTHER_GRID = Actor(Role.GRID_WORKER, "grid-hp-008")
ADMIN = Actor(Role.ADMIN, "ops-1")
SERVICE = Actor(Role.SERVICE, "display")
START = dt.datetime(2024, 5, 10, 2, 0, tzinfo=dt.UTC)  # 10:00 in Shanghai


@pytest.fixture()
def clock() -> Clock:
    return Clock(START)


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


def person(ids: Identifiers, id_number: str) -> Identified:
    return ids.person(id_number, "person.id_number")


def citizen(ids: Identifiers, id_number: str) -> Actor:
    me = person(ids, id_number)
    return Actor(Role.CITIZEN, "", me.key, me.masked)


def family(ids: Identifiers, id_number: str) -> Actor:
    me = person(ids, id_number)
    return Actor(Role.FAMILY_PROXY, "", me.key, me.masked)


def as_family(ids: Identifiers, id_number: str) -> ProxyInput:
    return ProxyInput(Role.FAMILY_PROXY, person(ids, id_number))


def as_grid(actor: Actor) -> ProxyInput:
    return ProxyInput(Role.GRID_WORKER, principal=actor.principal)


def mine(service: Declarations, actor: Actor, **kw: object) -> list[Mandate]:
    page, _ = service.list_mandates(actor, **kw)  # type: ignore[arg-type]
    return page


def test_registering_someone_records_a_mandate_for_the_proxy(
    service: Declarations, ids: Identifiers, clock: Clock
) -> None:
    daughter = family(ids, DAUGHTER)
    service.register(daughter, "王奶奶", GRANNY, [])
    service.register(GRID, "赵大爷", LONER, [])
    service.register(citizen(ids, NEIGHBOUR), "李四", NEIGHBOUR, [])  # themself: no mandate

    [held] = mine(service, daughter)
    assert held.person_key == person(ids, GRANNY).key
    assert held.masked_id_number == mask_id_number(GRANNY) and held.person_name == "王奶奶"
    assert held.proxy.role is Role.FAMILY_PROXY
    assert held.proxy.person_key == daughter.person_key
    assert held.proxy.masked_id_number == mask_id_number(DAUGHTER)
    assert held.basis == REGISTRATION and held.approved_by.role is Role.FAMILY_PROXY
    assert held.granted_at_ms == clock.ms() and held.valid_until_ms is None
    assert held.state(clock.ms()) == ACTIVE
    [grid_held] = mine(service, GRID)
    assert grid_held.proxy.principal == "grid-hp-007" and grid_held.basis == REGISTRATION
    assert mine(service, ADMIN, include_inactive=True) == [held, grid_held]

    # The elderly relative (as citizen) sees who may act for them.
    assert mine(service, citizen(ids, GRANNY)) == [held]
    assert mine(service, citizen(ids, NEIGHBOUR)) == []

    # The registering proxy acts for them: declares, links a phone, reads the record.
    declared, _ = service.declare(daughter, person(ids, GRANNY), DeclarationInput())
    assert declared.mandate_id == held.mandate_id
    assert declared.declared_by.masked_id_number == mask_id_number(DAUGHTER)
    service.add_phone(daughter, person(ids, GRANNY), PHONES[0])
    _, recent = service.get_person(daughter, person(ids, GRANNY), recent=1)
    assert [d.mandate_id for d in recent] == [held.mandate_id]


def test_a_proxy_without_a_mandate_is_refused_and_nothing_changes(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers
) -> None:
    service.register(citizen(ids, NEIGHBOUR), "李四", NEIGHBOUR, [PHONES[1]])
    service.register(GRID, "赵大爷", LONER, [])  # a mandate for LONER, not NEIGHBOUR
    neighbour = person(ids, NEIGHBOUR)
    before = repo.pending_count()
    stranger = family(ids, STRANGER)
    acts = [
        lambda a: service.declare(a, neighbour, DeclarationInput(temperature_celsius=38.5)),
        lambda a: service.add_phone(a, neighbour, PHONES[2]),
        lambda a: service.remove_phone(a, neighbour, ids.phone(PHONES[1], "phone")),
        lambda a: service.link_card(a, neighbour, "TJ00001234"),
        lambda a: service.get_person(a, neighbour),
        lambda a: service.register(a, "李四", NEIGHBOUR, [PHONES[3]]),
    ]
    for actor in (GRID, stranger):
        for act in acts:
            with pytest.raises(NoMandate) as refused:
                act(actor)
            assert refused.value.reason == "NO_MANDATE"
            assert "no active mandate" in refused.value.message
            assert "healthcode mandate grant" in refused.value.message
            assert NEIGHBOUR not in refused.value.message
    stored = repo.get_person(neighbour.key)
    assert stored is not None
    assert [p.masked for p in stored.phones] == [ids.phone(PHONES[1], "p").masked]
    assert stored.card_key is None and stored.last_declared_day is None
    assert repo.pending_count() == before
    assert repo.recent_declarations(neighbour.key, 5) == []
    # Unregistered people: refused the same way (a proxy learns nothing about them).
    with pytest.raises(NoMandate):
        service.declare(GRID, person(ids, IDS[9]), DeclarationInput())


def test_the_person_grants_a_mandate_and_the_proxy_may_act(
    service: Declarations, ids: Identifiers, clock: Clock
) -> None:
    service.register(citizen(ids, NEIGHBOUR), "李四", NEIGHBOUR, [])
    granted, created = service.grant_mandate(
        citizen(ids, NEIGHBOUR), person(ids, NEIGHBOUR), as_grid(GRID), reason="lives alone"
    )
    assert created and granted.basis == GRANT and granted.reason == "lives alone"
    assert granted.approved_by.role is Role.CITIZEN
    assert granted.approved_by.masked_id_number == mask_id_number(NEIGHBOUR)
    declared, _ = service.declare(GRID, person(ids, NEIGHBOUR), DeclarationInput())
    assert declared.mandate_id == granted.mandate_id
    assert declared.declared_by.principal == "grid-hp-007"
    # Another grid worker still may not.
    with pytest.raises(NoMandate, match="grid_worker grid-hp-008"):
        service.add_phone(OTHER_GRID, person(ids, NEIGHBOUR), PHONES[4])
    # An administrator grants for anyone, a family member by ID number.
    by_admin, _ = service.grant_mandate(
        ADMIN, person(ids, NEIGHBOUR), as_family(ids, DAUGHTER), reason="community register"
    )
    assert by_admin.approved_by == RecordedActor(Role.ADMIN, "ops-1", "")
    assert by_admin.proxy.masked_id_number == mask_id_number(DAUGHTER)
    service.add_phone(family(ids, DAUGHTER), person(ids, NEIGHBOUR), PHONES[4])


def test_a_time_boxed_mandate_runs_out(
    service: Declarations, ids: Identifiers, clock: Clock
) -> None:
    service.register(citizen(ids, NEIGHBOUR), "李四", NEIGHBOUR, [])
    until = clock() + dt.timedelta(hours=20)
    granted, _ = service.grant_mandate(
        citizen(ids, NEIGHBOUR), person(ids, NEIGHBOUR), as_grid(GRID), until
    )
    assert granted.valid_until_ms == int(until.timestamp() * 1000)
    service.declare(GRID, person(ids, NEIGHBOUR), DeclarationInput())

    clock.advance(dt.timedelta(hours=20))  # the next Shanghai day, at the mandate's end
    with pytest.raises(NoMandate):
        service.declare(GRID, person(ids, NEIGHBOUR), DeclarationInput())
    assert mine(service, GRID) == []
    [old] = mine(service, GRID, include_inactive=True)
    assert old.state(clock.ms()) == EXPIRED and old.revoked_at_ms is None
    # The person themself still declares.
    service.declare(citizen(ids, NEIGHBOUR), person(ids, NEIGHBOUR), DeclarationInput())


def test_revoked_by_the_person_the_proxy_or_an_administrator(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers, clock: Clock
) -> None:
    daughter = family(ids, DAUGHTER)
    service.register(daughter, "王奶奶", GRANNY, [])
    [held] = mine(service, daughter)
    granny = citizen(ids, GRANNY)

    for outsider in (citizen(ids, STRANGER), family(ids, STRANGER), OTHER_GRID):
        with pytest.raises(PermissionDenied, match="may be revoked by"):
            service.revoke_mandate(outsider, held.mandate_id)
    with pytest.raises(PermissionDenied):
        service.revoke_mandate(Actor(Role.VERIFIER, "gate-1"), held.mandate_id)
    assert mine(service, daughter) == [held]

    clock.advance(dt.timedelta(minutes=5))
    revoked, changed = service.revoke_mandate(granny, held.mandate_id, "moved in with her son")
    assert changed and revoked.state(clock.ms()) == REVOKED
    assert revoked.revoked_at_ms == clock.ms()
    assert revoked.revoked_by is not None and revoked.revoked_by.role is Role.CITIZEN
    assert revoked.revoked_by.masked_id_number == mask_id_number(GRANNY)
    assert revoked.revoke_reason == "moved in with her son"
    again, changed = service.revoke_mandate(ADMIN, held.mandate_id)
    assert not changed and again == revoked  # a replay changes nothing

    before = repo.pending_count()
    with pytest.raises(NoMandate):
        service.declare(daughter, person(ids, GRANNY), DeclarationInput())
    with pytest.raises(NoMandate):  # not even a replay of the registration
        service.register(daughter, "王奶奶", GRANNY, [PHONES[5]])
    assert repo.pending_count() == before
    assert mine(service, granny) == [] and mine(service, granny, include_inactive=True) == [revoked]

    # The proxy may give a mandate up; an administrator may end any.
    grid_held, _ = service.grant_mandate(granny, person(ids, GRANNY), as_grid(GRID))
    assert service.revoke_mandate(GRID, grid_held.mandate_id)[1]
    admin_held, _ = service.grant_mandate(granny, person(ids, GRANNY), as_grid(OTHER_GRID))
    assert service.revoke_mandate(ADMIN, admin_held.mandate_id)[0].revoked_by == (
        RecordedActor(Role.ADMIN, "ops-1", "")
    )

    with pytest.raises(NotFound, match="no mandate 999"):
        service.revoke_mandate(ADMIN, 999)
    with pytest.raises(InvalidArgument) as bad:
        service.revoke_mandate(ADMIN, 0, f"call {PHONES[0]}")
    assert [f for f, _ in bad.value.violations] == ["mandate_id", "reason"]


def test_grants_are_validated_field_by_field(
    service: Declarations, ids: Identifiers, clock: Clock
) -> None:
    service.register(citizen(ids, NEIGHBOUR), "李四", NEIGHBOUR, [])
    me = citizen(ids, NEIGHBOUR)
    with pytest.raises(InvalidArgument) as bad:
        service.grant_mandate(
            me,
            person(ids, NEIGHBOUR),
            as_family(ids, NEIGHBOUR),
            clock() - dt.timedelta(seconds=1),
            "x" * 201,
        )
    assert [f for f, _ in bad.value.violations] == ["proxy.person", "valid_until", "reason"]
    for proxy, field in [
        (ProxyInput(Role.VERIFIER, principal="gate-1"), "proxy.role"),
        (ProxyInput(None), "proxy.role"),
        (ProxyInput(Role.FAMILY_PROXY), "proxy.person"),
        (ProxyInput(Role.GRID_WORKER), "proxy.principal"),
        (ProxyInput(Role.GRID_WORKER, principal=PHONES[0]), "proxy.principal"),
        (ProxyInput(Role.GRID_WORKER, person(ids, DAUGHTER), "g"), "proxy.person"),
    ]:
        with pytest.raises(InvalidArgument) as bad:
            service.grant_mandate(me, person(ids, NEIGHBOUR), proxy)
        assert [f for f, _ in bad.value.violations] == [field], proxy
        assert PHONES[0] not in bad.value.message
    with pytest.raises(InvalidArgument) as bad:
        service.grant_mandate(me, person(ids, NEIGHBOUR), as_grid(GRID), clock())
    assert [f for f, _ in bad.value.violations] == ["valid_until"]  # now is not the future

    # Who may grant: the person themself or an administrator.
    with pytest.raises(PermissionDenied, match="only for themself"):
        service.grant_mandate(citizen(ids, STRANGER), person(ids, NEIGHBOUR), as_grid(GRID))
    for actor in (GRID, family(ids, DAUGHTER), Actor(Role.VERIFIER, "gate-1")):
        with pytest.raises(PermissionDenied):
            service.grant_mandate(actor, person(ids, NEIGHBOUR), as_grid(GRID))
    with pytest.raises(NotFound, match="Register"):
        service.grant_mandate(ADMIN, person(ids, STRANGER), as_grid(GRID))
    assert mine(service, ADMIN, include_inactive=True) == []


def test_the_same_grant_is_idempotent_and_another_end_replaces_it(
    service: Declarations, ids: Identifiers, clock: Clock
) -> None:
    service.register(citizen(ids, NEIGHBOUR), "李四", NEIGHBOUR, [])
    me, who = citizen(ids, NEIGHBOUR), person(ids, NEIGHBOUR)
    first, created = service.grant_mandate(me, who, as_grid(GRID))
    again, created_again = service.grant_mandate(me, who, as_grid(GRID), reason="again")
    assert created and not created_again and again == first
    later = clock() + dt.timedelta(days=30)
    boxed, created = service.grant_mandate(ADMIN, who, as_grid(GRID), later)
    assert created and boxed.mandate_id != first.mandate_id
    [old, new] = mine(service, ADMIN, person=who, include_inactive=True)
    assert old.mandate_id == first.mandate_id and old.state(clock.ms()) == REVOKED
    assert old.revoke_reason == f"replaced by mandate {boxed.mandate_id}"
    assert old.revoked_by is not None and old.revoked_by.role is Role.ADMIN
    assert new == boxed and mine(service, GRID) == [boxed]


def test_listing_as_the_person_as_the_proxy_and_as_an_administrator(
    service: Declarations, ids: Identifiers
) -> None:
    service.register(family(ids, DAUGHTER), "王奶奶", GRANNY, [])
    service.register(GRID, "赵大爷", LONER, [])
    granny, loner = person(ids, GRANNY), person(ids, LONER)
    service.grant_mandate(citizen(ids, GRANNY), granny, as_grid(GRID))

    assert [m.proxy.name for m in mine(service, citizen(ids, GRANNY))] == [
        f"family_proxy {mask_id_number(DAUGHTER)}",
        "grid_worker grid-hp-007",
    ]
    with pytest.raises(PermissionDenied, match="for themself"):
        mine(service, citizen(ids, GRANNY), person=loner)
    assert [m.masked_id_number for m in mine(service, GRID)] == [
        mask_id_number(LONER),
        mask_id_number(GRANNY),
    ]
    assert [m.person_key for m in mine(service, GRID, person=granny)] == [granny.key]
    with pytest.raises(PermissionDenied, match="they hold"):
        mine(service, GRID, proxy=as_grid(OTHER_GRID))
    assert mine(service, OTHER_GRID) == []
    assert len(mine(service, ADMIN, proxy=as_family(ids, DAUGHTER))) == 1
    assert len(mine(service, SERVICE, person=granny)) == 2
    with pytest.raises(PermissionDenied):
        mine(service, Actor(Role.VERIFIER, "gate-1"))

    # A page at a time, in the order granted.
    seen: list[int] = []
    token = ""
    while True:
        page, token = service.list_mandates(ADMIN, page_size=1, page_token=token)
        seen += [m.mandate_id for m in page]
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == 3
    with pytest.raises(InvalidArgument) as bad:
        service.list_mandates(ADMIN, page_size=5000, page_token="abc")
    assert [f for f, _ in bad.value.violations] == ["page_size", "page_token"]


def test_check_mandate_answers_services(service: Declarations, ids: Identifiers) -> None:
    service.register(GRID, "赵大爷", LONER, [])
    found = service.check_mandate(SERVICE, as_grid(GRID), person(ids, LONER))
    assert found is not None and found.proxy.principal == "grid-hp-007"
    assert service.check_mandate(SERVICE, as_grid(OTHER_GRID), person(ids, LONER)) is None
    assert service.check_mandate(ADMIN, as_grid(GRID), person(ids, GRANNY)) is None
    with pytest.raises(PermissionDenied):
        service.check_mandate(GRID, as_grid(GRID), person(ids, LONER))
    service.revoke_mandate(ADMIN, found.mandate_id)
    assert service.check_mandate(SERVICE, as_grid(GRID), person(ids, LONER)) is None


def test_a_revocation_between_the_check_and_the_write_wins(
    service: Declarations, repo: DeclarationRepository, ids: Identifiers, clock: Clock
) -> None:
    service.register(GRID, "赵大爷", LONER, [])
    [held] = mine(service, GRID)
    checked = repo.active_mandate(held.proxy, held.person_key, clock.ms())
    assert checked == held
    service.revoke_mandate(ADMIN, held.mandate_id)  # lands after the check
    before = repo.pending_count()
    with pytest.raises(NoMandate, match="a moment ago"):
        repo.save_declaration(
            key=held.person_key,
            day=19853,
            now=clock(),
            actor=held.approved_by,
            symptoms=[],
            temperature=None,
            visits=[],
            case_contact=False,
            case_contact_day=None,
            derived_sources=[],
            outbox_for=lambda _id: [],
            mandate=(held.mandate_id, clock.ms()),
        )
    assert repo.recent_declarations(held.person_key, 5) == [] and repo.pending_count() == before


def test_an_import_records_a_mandate_for_the_proxy_its_rows_name(
    service: Declarations, ids: Identifiers
) -> None:
    rows = [
        ImportInput(2, GRANNY, "王奶奶", registered_by=Role.FAMILY_PROXY,
                    registrar_id_number=DAUGHTER),
        ImportInput(3, LONER, "赵大爷", registered_by=Role.GRID_WORKER,
                    registrar_principal="grid-hp-007"),
        ImportInput(4, NEIGHBOUR, "李四", registered_by=Role.FAMILY_PROXY),  # unnamed: none
        ImportInput(5, STRANGER, "钱五", registered_by=Role.CITIZEN),
    ]  # fmt: skip
    assert service.import_chunk(ADMIN, rows).imported == 4
    made = mine(service, ADMIN)
    assert [(m.masked_id_number, m.proxy.name, m.basis) for m in made] == [
        (mask_id_number(GRANNY), f"family_proxy {mask_id_number(DAUGHTER)}", IMPORT),
        (mask_id_number(LONER), "grid_worker grid-hp-007", IMPORT),
    ]
    assert all(m.approved_by == RecordedActor(Role.ADMIN, "ops-1") for m in made)
    assert service.import_chunk(ADMIN, rows).already_present == 4  # a re-run adds none
    assert mine(service, ADMIN, include_inactive=True) == made
    service.declare(family(ids, DAUGHTER), person(ids, GRANNY), DeclarationInput())


class VersionThree(SqliteRepository):
    MIGRATIONS = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)


def test_a_version_three_database_upgrades_in_place(tmp_path: Path, ids: Identifiers) -> None:
    path = tmp_path / "d.sqlite3"
    old = VersionThree(path)
    granny = person(ids, GRANNY)
    with old.transaction() as conn:
        conn.execute(
            "INSERT INTO persons (person_key, name, masked_id_number, registered_at, "
            "registered_by_role, registered_by) VALUES (?, '王奶奶', ?, ?, 'grid_worker', 'g')",
            (granny.key, granny.masked, START.isoformat()),
        )
        conn.execute(
            "INSERT INTO declarations (person_key, day, declared_at, actor_role, actor, "
            "symptoms, visits, case_contact, derived_sources) "
            "VALUES (?, 19852, ?, 'grid_worker', 'g', '[]', '[]', 0, '[]')",  # yesterday
            (granny.key, START.isoformat()),
        )
    old.close()
    repo = DeclarationRepository(path)
    assert repo.schema_version == len(repo.MIGRATIONS)  # every migration applied
    [declared] = repo.recent_declarations(granny.key, 5)
    assert declared.mandate_id is None
    # People registered before mandates existed hold none: whoever acts for them gets one.
    service = Declarations(repo, ids, clock=Clock(START))
    with pytest.raises(NoMandate):
        service.declare(Actor(Role.GRID_WORKER, "g"), granny, DeclarationInput())
    service.grant_mandate(ADMIN, granny, ProxyInput(Role.GRID_WORKER, principal="g"))
    service.declare(Actor(Role.GRID_WORKER, "g"), granny, DeclarationInput())


def test_no_raw_number_reaches_the_mandates(
    service: Declarations, ids: Identifiers, place: Place
) -> None:
    service.register(family(ids, DAUGHTER), "王奶奶", GRANNY, [])
    service.grant_mandate(
        citizen(ids, GRANNY), person(ids, GRANNY), as_family(ids, NEIGHBOUR), reason="neighbour"
    )
    dump = pg.dump(place("d.sqlite3"))
    for raw in (GRANNY, DAUGHTER, NEIGHBOUR):
        assert raw not in dump
    assert mask_id_number(NEIGHBOUR) in dump


def test_a_family_proxy_never_acts_for_themself(service: Declarations, ids: Identifiers) -> None:
    me = family(ids, DAUGHTER)
    with pytest.raises(PermissionDenied, match="act as citizen"):
        service.register(me, "王芳", DAUGHTER, [])
    service.register(citizen(ids, DAUGHTER), "王芳", DAUGHTER, [])
    with pytest.raises(PermissionDenied, match="act as citizen"):
        service.declare(me, person(ids, DAUGHTER), DeclarationInput())
    assert mine(service, ADMIN, include_inactive=True) == []
