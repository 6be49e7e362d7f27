"""DeclarationService over gRPC: proto <-> domain only; the work is in `logic.Declarations`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from healthcode.v1 import declaration_pb2, declaration_pb2_grpc

from services._common.actors import Actor, Role
from services._common.convert import (
    actor_from_proto,
    person_from_proto,
    phone_from_proto,
    role_to_proto,
    timestamp,
)
from services._common.days import format_day
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers, mask_name
from services._common.status import grpc_errors
from services.declaration.logic import Declarations
from services.declaration.model import (
    SYMPTOMS,
    Declaration,
    DeclarationInput,
    ImportInput,
    ImportOutcome,
    Person,
)
from services.declaration.model import RecordedActor as DomainActor

SERVICE_NAME = declaration_pb2.DESCRIPTOR.services_by_name["DeclarationService"].full_name
# Rejections listed in one ImportPeople reply; the rest are counted.
MAX_LISTED_REJECTIONS = 1000
_ROLE_OF = {role_to_proto(role): role for role in Role}

# Proto enum value <-> stored name; SYMPTOM_FEVER is 1, in the order of model.SYMPTOMS.
_SYMPTOM_NAME = {i + 1: name for i, name in enumerate(SYMPTOMS)}
_SYMPTOM_VALUE = {name: value for value, name in _SYMPTOM_NAME.items()}
assert all(
    declaration_pb2.Symptom.Value(f"SYMPTOM_{name.upper()}") == value
    for name, value in _SYMPTOM_VALUE.items()
)


def person_to_proto(person: Person) -> declaration_pb2.Person:
    return declaration_pb2.Person(
        person_key=person.key,
        masked_name=mask_name(person.name),
        masked_id_number=person.masked_id_number,
        phones=[
            declaration_pb2.LinkedPhone(
                phone_key=p.key, masked_phone=p.masked, linked_at=timestamp(p.linked_at)
            )
            for p in person.phones
        ],
        masked_transit_card=person.masked_card,
        registered_by=_actor(person.registered_by),
        registered_at=timestamp(person.registered_at),
        last_declared_day=(
            format_day(person.last_declared_day) if person.last_declared_day is not None else ""
        ),
        residence_county=person.residence_county or 0,
    )


def declaration_to_proto(d: Declaration) -> declaration_pb2.Declaration:
    msg = declaration_pb2.Declaration(
        declaration_id=d.declaration_id,
        day=format_day(d.day),
        declared_at=timestamp(d.declared_at),
        declared_by=_actor(d.declared_by),
        symptoms=[_SYMPTOM_VALUE[s] for s in d.symptoms],  # type: ignore[misc]
        visits=[
            declaration_pb2.Visit(county=v.county, day=format_day(v.day), place=v.place)
            for v in d.visits
        ],
        case_contact=d.case_contact,
        case_contact_day=format_day(d.case_contact_day) if d.case_contact_day is not None else "",
        derived_sources=list(d.derived_sources),
    )
    if d.temperature_celsius is not None:
        msg.temperature_celsius = d.temperature_celsius
    return msg


def _actor(actor: DomainActor) -> declaration_pb2.RecordedActor:
    return declaration_pb2.RecordedActor(
        role=role_to_proto(actor.role),
        principal=actor.principal,
        masked_id_number=actor.masked_id_number,
    )


class DeclarationServicer(declaration_pb2_grpc.DeclarationServiceServicer):
    def __init__(self, declarations: Declarations, identifiers: Identifiers) -> None:
        self._d = declarations
        self._ids = identifiers

    @grpc_errors
    def Register(
        self, request: declaration_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.RegisterResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person, created = self._d.register(
            actor, request.name, request.id_number, list(request.phones), request.transit_card
        )
        return declaration_pb2.RegisterResponse(person=person_to_proto(person), created=created)

    @grpc_errors
    def Declare(
        self, request: declaration_pb2.DeclareRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.DeclareResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        data = DeclarationInput(
            symptoms=[_SYMPTOM_NAME.get(s, "") for s in request.symptoms],
            temperature_celsius=(
                request.temperature_celsius if request.HasField("temperature_celsius") else None
            ),
            visits=[(v.county, v.day, v.place) for v in request.visits],
            case_contact=request.case_contact,
            case_contact_day=request.case_contact_day,
        )
        declaration, opens = self._d.declare(actor, person, data)
        return declaration_pb2.DeclareResponse(
            declaration=declaration_to_proto(declaration), next_opens_at=timestamp(opens)
        )

    @grpc_errors
    def AddPhone(
        self, request: declaration_pb2.AddPhoneRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.AddPhoneResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        stored = self._d.add_phone(actor, person, request.phone)
        return declaration_pb2.AddPhoneResponse(person=person_to_proto(stored))

    @grpc_errors
    def RemovePhone(
        self, request: declaration_pb2.RemovePhoneRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.RemovePhoneResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        phone = phone_from_proto(request.phone, self._ids, "phone")
        stored = self._d.remove_phone(actor, person, phone)
        return declaration_pb2.RemovePhoneResponse(person=person_to_proto(stored))

    @grpc_errors
    def LinkTransitCard(
        self, request: declaration_pb2.LinkTransitCardRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.LinkTransitCardResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        stored = self._d.link_card(actor, person, request.transit_card)
        return declaration_pb2.LinkTransitCardResponse(person=person_to_proto(stored))

    @grpc_errors
    def GetPerson(
        self, request: declaration_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.GetPersonResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        stored, declarations = self._d.get_person(actor, person, request.recent_declarations)
        return declaration_pb2.GetPersonResponse(
            person=person_to_proto(stored),
            declarations=[declaration_to_proto(d) for d in declarations],
        )

    @grpc_errors
    def ImportPeople(
        self,
        request_iterator: Iterator[declaration_pb2.ImportPeopleRequest],
        context: grpc.ServicerContext,
    ) -> declaration_pb2.ImportPeopleResponse:
        # Each chunk is stored (durably) before the next message is read; the reply, after
        # the last, therefore only ever acknowledges what is stored. (Validating the next
        # chunk while the last is written was measured: no faster, so not done.)
        response = declaration_pb2.ImportPeopleResponse()
        actor: Actor | None = None
        first = b""
        for request in request_iterator:
            if actor is None:
                if not request.HasField("actor"):
                    raise InvalidArgument([("actor", "the first message names the importer")])
                actor = actor_from_proto(request.actor, self._ids)
                self._d.check_importer(actor)
                first = request.actor.SerializeToString(deterministic=True)
            elif request.HasField("actor") and (
                request.actor.SerializeToString(deterministic=True) != first
            ):
                raise InvalidArgument([("actor", "one importer per stream; leave it unset")])
            if not request.rows:
                continue
            _count(response, self._d.import_chunk(actor, [_import_input(r) for r in request.rows]))
            response.last_line = max(response.last_line, max(r.line for r in request.rows))
        if actor is None:
            raise InvalidArgument([("actor", "the first message names the importer")])
        return response


def _count(response: declaration_pb2.ImportPeopleResponse, outcome: ImportOutcome) -> None:
    """Add one stored chunk to the reply."""
    response.chunks += 1
    response.imported += outcome.imported
    response.already_present += outcome.already_present
    response.updated += outcome.updated
    response.rejected += outcome.rejected
    room = MAX_LISTED_REJECTIONS - len(response.rejections)
    for line, field, why in outcome.rejections[: max(room, 0)]:
        response.rejections.add(line=line, field=field, reason=why)
    response.rejections_not_listed += max(len(outcome.rejections) - max(room, 0), 0)


def _import_input(row: declaration_pb2.ImportRow) -> ImportInput:
    # Positional, and the phones container as it is (read once, by the validation): this runs
    # once per imported person.
    return ImportInput(
        row.line,
        row.id_number,
        row.name,
        row.phones,
        row.transit_card,
        row.residence_county,
        _ROLE_OF.get(row.registered_by),
        row.registrar_principal,
        row.registrar_id_number,
    )
