"""Proto <-> domain conversions shared by the servicers (no gRPC here, only messages)."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from healthcode.v1 import common_pb2

from services._common.actors import Actor, Role
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
}
_ROLE_PROTO = {role: value for value, role in _ROLES.items()}

MAX_PRINCIPAL_CHARS = 128


def role_to_proto(role: Role) -> common_pb2.ActorRole.ValueType:
    return _ROLE_PROTO[role]


def actor_from_proto(
    msg: common_pb2.Actor, identifiers: Identifiers | None, field: str = "actor"
) -> Actor:
    """Validate the caller. Citizens and family proxies name themselves by `person` (an ID
    number is hashed here, so only its key and masked form are kept)."""
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
