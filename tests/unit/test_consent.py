"""Consent for partner look-ups (issue 11, item 11) without a network, on both storage
backends: a look-up is recorded in the transaction that allows it; the holder (or a proxy under a
mandate, or the support desk) sees it, withdraws the partner's access and restores it; a
withdrawn partner and a purpose outside a partner kind's own are refused, and the refusal is
recorded too; a proxy without a mandate sees and changes nothing; rows are never deleted."""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
from collections.abc import Iterator

import grpc
import healthcode_matcher
import pytest

from services._common.actors import Actor, NoMandate, Role
from services._common.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from services._common.identifiers import Identified, Identifiers
from services._common.purposes import (
    BUS,
    EXAM,
    TRIAGE,
    ConsentRevoked,
    PurposeNotAllowed,
    check_purpose,
)
from services.declaration.consent import Consents, Partner
from services.declaration.logic import Declarations
from services.declaration.repository import DeclarationRepository
from services.display.logic import Place
from services.display.partners import ConsentPeer
from tests.pg import Place as Where
from tests.support import SECRET, Clock

IDS = healthcode_matcher.synthetic_id_numbers(5, 1111).decode().split()
PATIENT, DAUGHTER, STRANGER, NOBODY = IDS[:4]
SERVICE = Actor(Role.SERVICE, "display")
SUPPORT = Actor(Role.SUPPORT, "desk-2")
RUIJIN = Partner("partner:ruijin", "hospital")
NANKAI = Partner("partner:nankai", "hospital")
LINE8 = Partner("partner:line8", "bus_operator")


@pytest.fixture()
def clock() -> Clock:
    return Clock(dt.datetime(2024, 5, 10, 2, 0, tzinfo=dt.UTC))


@pytest.fixture()
def ids() -> Identifiers:
    return Identifiers.from_secret(SECRET)


@pytest.fixture()
def repo(place: Where) -> Iterator[DeclarationRepository]:
    # Once per storage backend (tests/conftest.py `place`).
    repo = DeclarationRepository(place("d.sqlite3"))
    yield repo
    repo.close()


@pytest.fixture()
def consents(repo: DeclarationRepository, clock: Clock) -> Consents:
    return Consents(repo, clock_ms=clock.ms)


def person(ids: Identifiers, id_number: str) -> Identified:
    return ids.person(id_number, "person.id_number")


def citizen(ids: Identifiers, id_number: str) -> Actor:
    me = person(ids, id_number)
    return Actor(Role.CITIZEN, "", me.key, me.masked)


def family(ids: Identifiers, id_number: str) -> Actor:
    me = person(ids, id_number)
    return Actor(Role.FAMILY_PROXY, "", me.key, me.masked)


@pytest.fixture()
def patient(repo: DeclarationRepository, ids: Identifiers, clock: Clock) -> Identified:
    """An elderly patient her daughter registered (so the daughter holds a mandate)."""
    Declarations(repo, ids, clock=clock).register(family(ids, DAUGHTER), "王秀英", PATIENT, [])
    Declarations(repo, ids, clock=clock).register(citizen(ids, STRANGER), "李四", STRANGER, [])
    return person(ids, PATIENT)


def table(repo: DeclarationRepository, name: str) -> list[sqlite3.Row]:
    with repo.reading() as conn:
        return conn.execute(f"SELECT * FROM {name}").fetchall()


def test_a_look_up_is_recorded_and_the_holder_sees_it_masked(
    consents: Consents, patient: Identified, ids: Identifiers, clock: Clock
) -> None:
    access_id = consents.check(SERVICE, patient.key, RUIJIN, TRIAGE, "Ruijin pre-check 2")
    assert access_id > 0
    record = consents.list_access(citizen(ids, PATIENT), patient.key)
    assert record.masked_id_number == patient.masked and PATIENT not in record.masked_id_number
    (seen,) = record.accesses
    assert (seen.access_id, seen.partner, seen.purpose) == (access_id, RUIJIN, TRIAGE)
    assert (seen.place, seen.at_ms, seen.refusal) == ("Ruijin pre-check 2", clock.ms(), "")
    assert record.withdrawn == {}
    # A place typed by staff never smuggles a number into the record.
    consents.check(SERVICE, patient.key, RUIJIN, TRIAGE, f"desk of {STRANGER}")
    newest = consents.list_access(citizen(ids, PATIENT), patient.key).accesses[0]
    assert STRANGER not in newest.place


def test_a_withdrawn_partner_is_refused_and_the_refusal_recorded_until_restored(
    consents: Consents, patient: Identified, ids: Identifiers, repo: DeclarationRepository
) -> None:
    holder = citizen(ids, PATIENT)
    consents.check(SERVICE, patient.key, RUIJIN, TRIAGE)
    withdrawal, changed = consents.set_consent(holder, patient.key, "partner:ruijin", revoke=True)
    assert changed and withdrawal is not None
    assert withdrawal.by.role is Role.CITIZEN and withdrawal.mandate_id is None
    # Again: nothing changes.
    assert consents.set_consent(holder, patient.key, "partner:ruijin", revoke=True)[1] is False

    with pytest.raises(ConsentRevoked) as refused:
        consents.check(SERVICE, patient.key, RUIJIN, TRIAGE)
    assert refused.value.reason == "CONSENT_REVOKED"
    assert "show their health code" in refused.value.message
    # Another hospital still looks the patient up.
    consents.check(SERVICE, patient.key, NANKAI, TRIAGE)

    record = consents.list_access(holder, patient.key)
    assert [(a.partner.principal, a.refusal) for a in record.accesses] == [
        ("partner:nankai", ""),
        ("partner:ruijin", "CONSENT_REVOKED"),
        ("partner:ruijin", ""),
    ]
    assert set(record.withdrawn) == {"partner:ruijin"}

    _, restored = consents.set_consent(holder, patient.key, "partner:ruijin", revoke=False)
    assert restored
    consents.check(SERVICE, patient.key, RUIJIN, TRIAGE)
    assert consents.list_access(holder, patient.key).withdrawn == {}
    # Nothing deleted: four look-ups, two changes.
    assert len(table(repo, "partner_access")) == 4
    assert [int(r["revoked"]) for r in table(repo, "consent_changes")] == [1, 0]


def test_a_purpose_outside_the_partner_kinds_own_is_refused_and_recorded(
    consents: Consents, patient: Identified, ids: Identifiers
) -> None:
    with pytest.raises(PurposeNotAllowed) as wrong:
        consents.check(SERVICE, patient.key, LINE8, TRIAGE)
    assert wrong.value.reason == "PURPOSE_NOT_ALLOWED" and "bus" in wrong.value.message
    consents.check(SERVICE, patient.key, LINE8, BUS)
    with pytest.raises(PurposeNotAllowed):
        consents.check(SERVICE, patient.key, Partner("partner:cc", "cold_chain"), TRIAGE)
    refusals = [a.refusal for a in consents.list_access(SUPPORT, patient.key).accesses]
    assert sorted(refusals) == ["", "PURPOSE_NOT_ALLOWED", "PURPOSE_NOT_ALLOWED"]
    # The colour service's check for list checks: exam organisers only.
    check_purpose("exam_organiser", EXAM)
    with pytest.raises(PurposeNotAllowed):
        check_purpose("hospital", EXAM)


def test_a_proxy_acts_under_a_mandate_and_one_without_is_refused(
    consents: Consents, patient: Identified, ids: Identifiers
) -> None:
    consents.check(SERVICE, patient.key, RUIJIN, TRIAGE)
    stranger = family(ids, STRANGER)
    with pytest.raises(NoMandate):
        consents.list_access(stranger, patient.key)
    with pytest.raises(NoMandate):
        consents.set_consent(stranger, patient.key, "partner:ruijin", revoke=True)
    # A citizen acts for themself only.
    with pytest.raises(PermissionDenied):
        consents.list_access(citizen(ids, STRANGER), patient.key)
    daughter = family(ids, DAUGHTER)
    assert len(consents.list_access(daughter, patient.key).accesses) == 1
    withdrawal, changed = consents.set_consent(daughter, patient.key, "partner:ruijin", revoke=True)
    assert changed and withdrawal is not None and withdrawal.mandate_id is not None
    assert withdrawal.by.masked_id_number == person(ids, DAUGHTER).masked
    # The support desk restores it (after an appeal, say).
    assert consents.set_consent(SUPPORT, patient.key, "partner:ruijin", revoke=False)[1]


def test_bad_requests_are_refused_with_the_field_to_fix(
    consents: Consents, patient: Identified, ids: Identifiers
) -> None:
    with pytest.raises(PermissionDenied):
        consents.check(citizen(ids, PATIENT), patient.key, RUIJIN, TRIAGE)
    with pytest.raises(InvalidArgument) as bad:
        consents.check(SERVICE, patient.key, Partner(f"partner:{PATIENT}", "spy"), "gossip")
    fields = {f for f, _ in bad.value.violations}
    assert fields == {"partner.principal", "partner.kind", "purpose"}
    with pytest.raises(InvalidArgument):
        consents.set_consent(citizen(ids, PATIENT), patient.key, "ruijin", revoke=True)
    with pytest.raises(NotFound):
        consents.check(SERVICE, person(ids, NOBODY).key, RUIJIN, TRIAGE)


def test_the_displays_peer_never_allows_a_look_up_it_could_not_ask_about() -> None:
    # A port nothing listens on: the declaration service is unreachable.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        peer = ConsentPeer(channel, timeout_s=0.5)
        with pytest.raises(Unavailable) as down:
            peer.check(
                Actor(Role.PARTNER, "ruijin"), b"k" * 16, "hospital", "triage", Place("d", "desk")
            )
    assert "nothing was looked up" in down.value.message
