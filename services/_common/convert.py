"""Proto <-> domain conversions shared by the servicers (no gRPC here, only messages)."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from healthcode.v1 import common_pb2

from services._common.actors import Actor, Role
from services._common.auth import ActorMismatch, Caller, current_caller
from services._common.errors import InvalidArgument
from services._common.identifiers import Identified, Identifiers, check_key
from services._common.logs import redact

_ROLES: dict[common_pb2.ActorRole.ValueType, Role] = {
    common_pb2.ACTOR_ROLE_CITIZEN: Role.CITIZEN,
    common_pb2.ACTOR_ROLE_FAMILY_PROXY: Role.FAMILY_PROXY,
    common_pb2.ACTOR_ROLE_GRID_WORKER: Role.GRID_WORKER,
    common_pb2.ACTOR_ROLE_VERIFIER: Role.VERIFIER,
    common_pb2.ACTOR_ROLE_FEED: Role.FEED,
    common_pb2.ACTOR_ROLE_PARTNER: Role.PARTNER,
    common_pb2.ACTOR_ROLE_ADMIN: Role.ADMIN,
    common_pb2.ACTOR_ROLE_SERVICE: Role.SERVICE,
    common_pb2.ACTOR_ROLE_SUPPORT: Role.SUPPORT,
}
_ROLE_PROTO = {role: value for value, role in _ROLES.items()}

MAX_PRINCIPAL_CHARS = 128


def role_to_proto(role: Role) -> common_pb2.ActorRole.ValueType:
    return _ROLE_PROTO[role]


def role_from_proto(value: common_pb2.ActorRole.ValueType) -> Role | None:
    """The role a proto names (None: unset, or a value this build does not know)."""
    return _ROLES.get(value)


def actor_from_proto(
    msg: common_pb2.Actor, identifiers: Identifiers | None, field: str = "actor"
) -> Actor:
    """The caller of this call. Where credentials are checked (services/_common/auth.py) the
    credential decides: an unset actor means "as my credential says", and a body claiming any
    other role, account or person is refused. Without credentials (in-process tests) the body
    is validated and taken. Citizens and family proxies name themselves by `person` (an ID
    number is hashed here, so only its key and masked form are kept)."""
    caller = current_caller()
    if caller is not None and msg.role == common_pb2.ACTOR_ROLE_UNSPECIFIED:
        if msg.principal or msg.HasField("person"):
            raise InvalidArgument([(f"{field}.role", "set the role, or leave the actor unset")])
        return caller.actor()
    claimed = _actor_from_body(msg, identifiers, field)
    if caller is None:
        return claimed
    return _as_credential(claimed, caller, field)


def _as_credential(claimed: Actor, caller: Caller, field: str) -> Actor:
    """The body's actor when the credential vouches for it; ActorMismatch otherwise."""
    if claimed.role not in caller.roles:
        raise ActorMismatch(
            f"{field} claims the role {claimed.role}, but the credential is {caller.describe()}: "
            "leave the actor unset, or claim what the credential says"
        )
    if caller.person_key is not None:  # a person's token: only themself, as citizen or proxy
        if claimed.person_key != caller.person_key:
            raise ActorMismatch(
                f"{field}.person names someone other than the signed-in person; a family member "
                "acts for a relative by naming themself as family_proxy"
            )
        masked = caller.masked_id_number or claimed.masked_id_number
        return Actor(claimed.role, claimed.principal, caller.person_key, masked)
    if caller.role is Role.SERVICE:
        # A platform service's account is its certificate's name, whatever the body says.
        return Actor(Role.SERVICE, caller.principal)
    if claimed.principal != caller.principal:
        raise ActorMismatch(
            f"{field}.principal claims the account {claimed.principal!r}, but the credential is "
            f"{caller.describe()}"
        )
    return claimed


def _actor_from_body(msg: common_pb2.Actor, identifiers: Identifiers | None, field: str) -> Actor:
    role = _ROLES.get(msg.role)
    if role is None:
        raise InvalidArgument([(f"{field}.role", "set the role the caller acts in")])
    principal = msg.principal.strip()
    if len(principal) > MAX_PRINCIPAL_CHARS:
        raise InvalidArgument([(f"{field}.principal", f"at most {MAX_PRINCIPAL_CHARS} characters")])
    if role in (Role.CITIZEN, Role.FAMILY_PROXY):
        if not msg.HasField("person"):
            raise InvalidArgument([(f"{field}.person", f"a {role} names themself here")])
        who = person_from_proto(msg.person, identifiers, f"{field}.person")
        return Actor(role, principal, who.key, who.masked)
    if not principal:
        raise InvalidArgument([(f"{field}.principal", f"a {role} gives an account id")])
    if _looks_raw(principal):
        raise InvalidArgument([(f"{field}.principal", "an account id, not an ID or phone number")])
    return Actor(role, principal)


def person_from_proto(
    msg: common_pb2.PersonRef, identifiers: Identifiers | None, field: str
) -> Identified:
    """A person reference -> (key, masked). A key reference has no masked form (empty); the
    caller fills it from its own records. `identifiers` may be None where only keys are taken."""
    which = msg.WhichOneof("ref")
    if which == "id_number":
        if identifiers is None:
            raise InvalidArgument([(f"{field}.id_number", "this service takes person_key")])
        return identifiers.person(msg.id_number, f"{field}.id_number")
    if which == "person_key":
        return Identified(check_key(msg.person_key, f"{field}.person_key"), "")
    raise InvalidArgument([(field, "set id_number or person_key")])


def phone_from_proto(
    msg: common_pb2.PhoneRef, identifiers: Identifiers | None, field: str
) -> Identified:
    """A phone reference -> (key, masked); masked is empty for a key reference."""
    which = msg.WhichOneof("ref")
    if which == "phone":
        if identifiers is None:
            raise InvalidArgument([(f"{field}.phone", "this service takes phone_key")])
        return identifiers.phone(msg.phone, f"{field}.phone")
    if which == "phone_key":
        return Identified(check_key(msg.phone_key, f"{field}.phone_key"), "")
    raise InvalidArgument([(field, "set phone or phone_key")])


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(dt.UTC))
    return ts


def _looks_raw(text: str) -> bool:
    return redact(text) != text
