"""Sign-in codes (services/declaration/signin.py), with a clock the test moves: a code proves a
phone registered to the person, lasts five minutes, works once, and ends after five wrong tries;
the answer to a code request does not say whose phone is whose."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients import feedgen
from services._common.actors import Actor, Role
from services._common.auth import TokenIssuer, TokenVerifier, create_issuer_keys
from services._common.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from services._common.identifiers import Identifiers
from services.declaration.logic import Declarations
from services.declaration.repository import DeclarationRepository
from services.declaration.signin import (
    CODE_TTL_S,
    MAX_STAFF_FAILURES,
    STAFF_LOCKOUT_S,
    SignInDesk,
    SignInRefused,
    StaffDesk,
    StaffSignInRefused,
    sms_sender,
)
from tests.support import SECRET

ME = feedgen.synthetic_id_numbers(1, 99)[0]
MY_PHONE, NOT_MINE = "13700137001", "13600136002"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def world(tmp_path: Path) -> tuple[SignInDesk, Clock, Path]:
    repo = DeclarationRepository(tmp_path / "d.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    me = ids.person(ME, "id")
    Declarations(repo, ids).register(
        Actor(Role.CITIZEN, "", me.key, me.masked), "李雷", ME, [MY_PHONE]
    )
    create_issuer_keys(tmp_path / "keys")
    clock = Clock()
    desk = SignInDesk(repo, ids, TokenIssuer(tmp_path / "keys"), sms_sender("reply"), clock)
    return desk, clock, tmp_path / "keys"


def test_a_code_signs_in_once_and_the_token_names_the_person(
    world: tuple[SignInDesk, Clock, Path],
) -> None:
    desk, _clock, keys = world
    masked_phone, code = desk.request_code(ME, MY_PHONE)
    assert masked_phone == "137****7001" and len(code) == 6
    token, _expires, masked = desk.sign_in(ME, code)
    caller = TokenVerifier(keys / "issuer-keys.json").verify(token, "spiffe://x")
    assert caller.role is Role.CITIZEN and caller.masked_id_number == masked
    assert ME not in token
    with pytest.raises(SignInRefused):
        desk.sign_in(ME, code)  # used


def test_a_phone_not_registered_to_the_person_gets_no_code(
    world: tuple[SignInDesk, Clock, Path],
) -> None:
    desk, _clock, _keys = world
    masked_phone, code = desk.request_code(ME, NOT_MINE)
    assert masked_phone == "136****6002" and code == ""


def test_a_code_expires_and_a_new_one_waits_its_turn(
    world: tuple[SignInDesk, Clock, Path],
) -> None:
    desk, clock, _keys = world
    _, code = desk.request_code(ME, MY_PHONE)
    with pytest.raises(ResourceExhausted):
        desk.request_code(ME, MY_PHONE)  # again at once
    clock.now += CODE_TTL_S + 1
    with pytest.raises(SignInRefused):
        desk.sign_in(ME, code)
    _, fresh = desk.request_code(ME, MY_PHONE)
    assert desk.sign_in(ME, fresh)[0]


def test_five_wrong_tries_end_a_code(world: tuple[SignInDesk, Clock, Path]) -> None:
    desk, _clock, _keys = world
    _, code = desk.request_code(ME, MY_PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        with pytest.raises(SignInRefused):
            desk.sign_in(ME, wrong)
    with pytest.raises(SignInRefused):
        desk.sign_in(ME, code)


def test_without_an_sms_gateway_no_code_is_sent_for_anyone(tmp_path: Path) -> None:
    repo = DeclarationRepository(tmp_path / "d.sqlite3")
    desk = SignInDesk(repo, Identifiers.from_secret(SECRET), None, sms_sender("none"))
    for phone in (MY_PHONE, NOT_MINE):
        with pytest.raises(FailedPrecondition, match="SMS gateway"):
            desk.request_code(ME, phone)


def test_staff_accounts_sign_in_lock_after_failures_and_end_when_disabled(tmp_path: Path) -> None:
    repo = DeclarationRepository(tmp_path / "d.sqlite3")
    create_issuer_keys(tmp_path / "keys")
    clock = Clock()
    staff = StaffDesk(repo, TokenIssuer(tmp_path / "keys"), clock)
    admin = Actor(Role.ADMIN, "root")
    with pytest.raises(PermissionDenied):
        staff.create(Actor(Role.SUPPORT, "desk-1"), "bus-17", Role.VERIFIER, "bus", "p" * 12)
    with pytest.raises(InvalidArgument):
        staff.create(admin, "bus-17", Role.VERIFIER, "moon", "p" * 12)  # no such workplace
    assert staff.create(admin, "bus-17", Role.VERIFIER, "bus", "a good long password")
    stored = repo.staff_account("bus-17")
    assert stored is not None and b"a good long password" not in stored.password_hash
    token, _, role, where = staff.sign_in("bus-17", "a good long password")
    caller = TokenVerifier(tmp_path / "keys" / "issuer-keys.json").verify(token, "p")
    assert (caller.role, caller.principal, caller.context) == (Role.VERIFIER, "bus-17", "bus")
    assert (role, where) == (Role.VERIFIER, "bus")
    for _ in range(MAX_STAFF_FAILURES):
        with pytest.raises(StaffSignInRefused):
            staff.sign_in("bus-17", "not the password")
    with pytest.raises(ResourceExhausted):  # locked, even with the right password
        staff.sign_in("bus-17", "a good long password")
    clock.now += STAFF_LOCKOUT_S + 1
    assert staff.sign_in("bus-17", "a good long password")[0]
    assert staff.disable(admin, "bus-17", "left the bus company")
    with pytest.raises(StaffSignInRefused):
        staff.sign_in("bus-17", "a good long password")
    with pytest.raises(StaffSignInRefused):
        staff.sign_in("nobody", "a good long password")
