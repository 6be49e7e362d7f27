"""Credentials, not claims (services/_common/auth.py): certificate identities, bearer tokens and
the comparison of a request body's actor with the credential."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jwt
import pytest
from healthcode.v1 import common_pb2

from services._common import auth
from services._common.actors import Role
from services._common.auth import (
    ActorMismatch,
    Caller,
    ReasonedUnauthenticated,
    TokenIssuer,
    TokenVerifier,
    caller_from_spiffe,
    create_issuer_keys,
    rotate_issuer_key,
)
from services._common.config import ConfigError
from services._common.convert import actor_from_proto
from services._common.errors import InvalidArgument

PERSON = bytes(range(16))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    create_issuer_keys(tmp_path)
    return tmp_path


def test_certificate_identities() -> None:
    assert caller_from_spiffe("spiffe://healthcode/service/colour") == Caller(
        Role.SERVICE, "colour", peer="spiffe://healthcode/service/colour"
    )
    feed = caller_from_spiffe("spiffe://healthcode/feed/cdc")
    assert feed is not None and (feed.role, feed.principal) == (Role.FEED, "cdc")
    partner = caller_from_spiffe("spiffe://healthcode/partner/cold_chain/tianjin-port")
    assert partner is not None
    assert (partner.role, partner.principal, partner.context) == (
        Role.PARTNER,
        "tianjin-port",
        "cold_chain",
    )
    assert caller_from_spiffe("spiffe://healthcode/edge/gateway") is None  # relays tokens
    for bad in (
        "spiffe://elsewhere/service/colour",
        "spiffe://healthcode/partner/bakery/x",
        "spiffe://healthcode/admin/root",
        "spiffe://healthcode/service/",
    ):
        with pytest.raises(ReasonedUnauthenticated):
            caller_from_spiffe(bad)


def test_person_and_staff_tokens_verify_to_their_caller(keys: Path) -> None:
    issuer, verifier = TokenIssuer(keys), TokenVerifier(keys / auth.ISSUER_KEYS)
    person = verifier.verify(issuer.person(PERSON, "110***********001X"), "spiffe://x")
    assert person.role is Role.CITIZEN and person.person_key == PERSON
    assert person.roles == {Role.CITIZEN, Role.FAMILY_PROXY}
    staff = verifier.verify(issuer.staff(Role.VERIFIER, "bus-17", "bus"), "spiffe://x")
    assert (staff.role, staff.principal, staff.context) == (Role.VERIFIER, "bus-17", "bus")
    with pytest.raises(ValueError):
        issuer.staff(Role.VERIFIER, "bus-17", "moon")  # a verifier works somewhere known
    with pytest.raises(ValueError):
        issuer.staff(Role.SERVICE, "colour")  # services are certificates only


def test_tokens_that_must_not_pass(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    issuer, verifier = TokenIssuer(keys), TokenVerifier(keys / auth.ISSUER_KEYS)
    other = tmp_path_factory.mktemp("other")
    create_issuer_keys(other)
    cases = {
        "unpublished key": TokenIssuer(other).person(PERSON, ""),
        "expired": issuer.person(PERSON, "", dt.timedelta(seconds=-5)),
        "garbage": "abc.def.ghi",
    }
    # A token whose payload was changed after signing (a person key swapped in).
    good = issuer.person(PERSON, "")
    head, _payload, sig = good.split(".")
    forged_payload = jwt.utils.base64url_encode(
        json.dumps({"sub": bytes(16).hex(), "role": "admin"}).encode()
    ).decode()
    cases["altered"] = f"{head}.{forged_payload}.{sig}"
    for name, token in cases.items():
        try:
            verifier.verify(token, "spiffe://x")
        except ReasonedUnauthenticated:
            continue
        pytest.fail(f"the {name} token was accepted")


def test_rotation_keeps_the_previous_key_until_its_tokens_expire(keys: Path) -> None:
    old = TokenIssuer(keys).staff(Role.ADMIN, "root")
    verifier = TokenVerifier(keys / auth.ISSUER_KEYS)
    new_kid = rotate_issuer_key(keys)
    new = TokenIssuer(keys)
    assert new.kid == new_kid != jwt.get_unverified_header(old)["kid"]
    # A verifier that started before the rotation learns the new key on first sight of it.
    assert verifier.verify(new.staff(Role.ADMIN, "root"), "p").principal == "root"
    assert verifier.verify(old, "p").principal == "root"
    published = json.loads((keys / auth.ISSUER_KEYS).read_text())["keys"]
    assert len(published) == 2 and "retired_at" in published[0]
    assert all("d" not in k for k in published)  # public halves only
    assert (keys / auth.ISSUER_KEY).stat().st_mode & 0o077 == 0


def test_a_missing_key_set_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="issuer-keys.json"):
        TokenVerifier(tmp_path / auth.ISSUER_KEYS)


def _as(caller: Caller | None) -> object:
    return auth._CALLER.set(caller)


def test_the_body_may_only_repeat_the_credential() -> None:
    citizen = Caller(Role.CITIZEN, "", PERSON, "110***********001X")
    token = _as(citizen)
    try:
        # Unset: the credential's actor.
        actor = actor_from_proto(common_pb2.Actor(), None)
        assert actor.role is Role.CITIZEN and actor.person_key == PERSON
        # The same person as a family proxy (acting for a relative).
        proxy = actor_from_proto(
            common_pb2.Actor(
                role=common_pb2.ACTOR_ROLE_FAMILY_PROXY,
                person=common_pb2.PersonRef(person_key=PERSON),
            ),
            None,
        )
        assert proxy.role is Role.FAMILY_PROXY and proxy.masked_id_number == "110***********001X"
        for body in (
            common_pb2.Actor(
                role=common_pb2.ACTOR_ROLE_CITIZEN,
                person=common_pb2.PersonRef(person_key=bytes(16)),
            ),
            common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="root"),
        ):
            with pytest.raises(ActorMismatch):
                actor_from_proto(body, None)
        with pytest.raises(InvalidArgument):
            actor_from_proto(common_pb2.Actor(principal="root"), None)
    finally:
        auth._CALLER.reset(token)  # type: ignore[arg-type]
    token = _as(Caller(Role.VERIFIER, "bus-17", context="bus"))
    try:
        with pytest.raises(ActorMismatch):
            actor_from_proto(
                common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="bus-18"), None
            )
        same = actor_from_proto(
            common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="bus-17"), None
        )
        assert same.principal == "bus-17"
    finally:
        auth._CALLER.reset(token)  # type: ignore[arg-type]
    # A platform service's account is its certificate's name.
    token = _as(Caller(Role.SERVICE, "display"))
    try:
        actor = actor_from_proto(
            common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="healthcode"), None
        )
        assert (actor.role, actor.principal) == (Role.SERVICE, "display")
    finally:
        auth._CALLER.reset(token)  # type: ignore[arg-type]
