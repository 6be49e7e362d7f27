"""DeclarationService over gRPC: proto <-> domain only; the work is in `logic.Declarations`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
from google.protobuf import timestamp_pb2
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
from services._common.errors import InvalidArgument, Unavailable
from services._common.identifiers import Identifiers, mask_name
from services._common.status import grpc_errors
from services.declaration import cards as printed
from services.declaration.cards import PrintedCard, PrintedCards
from services.declaration.logic import Declarations, ProxyInput
from services.declaration.model import (
    ACTIVE,
    EXPIRED,
    GRANT,
    IMPORT,
    REGISTRATION,
    REVOKED,
    SYMPTOMS,
    Declaration,
    DeclarationInput,
    ImportInput,
    ImportOutcome,
    Mandate,
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
        mandate_id=d.mandate_id or 0,
    )
    if d.temperature_celsius is not None:
        msg.temperature_celsius = d.temperature_celsius
    return msg


_BASIS = {
    REGISTRATION: declaration_pb2.MANDATE_BASIS_REGISTRATION,
    IMPORT: declaration_pb2.MANDATE_BASIS_IMPORT,
    GRANT: declaration_pb2.MANDATE_BASIS_GRANT,
}
_STATE = {
    ACTIVE: declaration_pb2.MANDATE_STATE_ACTIVE,
    EXPIRED: declaration_pb2.MANDATE_STATE_EXPIRED,
    REVOKED: declaration_pb2.MANDATE_STATE_REVOKED,
}


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def mandate_to_proto(m: Mandate, now_ms: int) -> declaration_pb2.Mandate:
    """A mandate as answered, its state as of `now_ms`."""
    msg = declaration_pb2.Mandate(
        mandate_id=m.mandate_id,
        proxy=_actor(DomainActor(m.proxy.role, m.proxy.principal, m.proxy.masked_id_number)),
        proxy_person_key=m.proxy.person_key or b"",
        person_key=m.person_key,
        masked_id_number=m.masked_id_number,
        masked_name=mask_name(m.person_name),
        granted_at=timestamp(_from_ms(m.granted_at_ms)),
        basis=_BASIS[m.basis],
        approved_by=_actor(m.approved_by),
        reason=m.reason,
        revoke_reason=m.revoke_reason,
        state=_STATE[m.state(now_ms)],
    )
    if m.valid_until_ms is not None:
        msg.valid_until.CopyFrom(timestamp(_from_ms(m.valid_until_ms)))
    if m.revoked_at_ms is not None:
        msg.revoked_at.CopyFrom(timestamp(_from_ms(m.revoked_at_ms)))
    if m.revoked_by is not None:
        msg.revoked_by.CopyFrom(_actor(m.revoked_by))
    return msg


def _time(ts: timestamp_pb2.Timestamp, field: str) -> dt.datetime:
    try:
        return ts.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument([(field, "a time between the years 1 and 9999")]) from None


def _proxy_input(
    msg: declaration_pb2.MandateProxy, identifiers: Identifiers, field: str
) -> ProxyInput:
    """A named proxy, its person reference hashed here (the rest is checked by the logic)."""
    person = (
        person_from_proto(msg.person, identifiers, f"{field}.person")
        if msg.HasField("person")
        else None
    )
    return ProxyInput(_ROLE_OF.get(msg.role), person, msg.principal)


def _actor(actor: DomainActor) -> declaration_pb2.RecordedActor:
    return declaration_pb2.RecordedActor(
        role=role_to_proto(actor.role),
        principal=actor.principal,
        masked_id_number=actor.masked_id_number,
    )


_CARD_STATE = {
    printed.LIVE: declaration_pb2.PRINTED_CARD_STATE_LIVE,
    printed.REVOKED: declaration_pb2.PRINTED_CARD_STATE_REVOKED,
    printed.EXPIRED: declaration_pb2.PRINTED_CARD_STATE_EXPIRED,
    printed.UNKNOWN: declaration_pb2.PRINTED_CARD_STATE_UNKNOWN,
}


def printed_card_to_proto(c: PrintedCard, now_ms: int) -> declaration_pb2.PrintedCard:
    """A printed card as answered (masked), its state as of `now_ms`."""
    msg = declaration_pb2.PrintedCard(
        card_id=c.card_id,
        short_id=c.short_id,
        person_key=c.person_key,
        masked_name=c.masked_name,
        masked_id_number=c.masked_id_number,
        issued_by=_actor(c.issued_by),
        mandate_id=c.mandate_id or 0,
        revoke_reason=c.revoke_reason,
        state=_CARD_STATE[c.state(now_ms)],
    )
    msg.issued_at.FromMilliseconds(c.issued_at_ms)
    msg.expires_at.FromMilliseconds(c.expires_at_ms)
    if c.revoked_at_ms is not None:
        msg.revoked_at.FromMilliseconds(c.revoked_at_ms)
    if c.revoked_by is not None:
        msg.revoked_by.CopyFrom(_actor(c.revoked_by))
    return msg


class DeclarationServicer(declaration_pb2_grpc.DeclarationServiceServicer):
    def __init__(
        self,
        declarations: Declarations,
        identifiers: Identifiers,
        cards: PrintedCards | None = None,
    ) -> None:
        """`cards`: printed cards (R3); without them the card RPCs answer UNAVAILABLE."""
        self._d = declarations
        self._ids = identifiers
        self._cards = cards

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

    # -- mandates (R3) -----------------------------------------------------------------------

    @grpc_errors
    def GrantMandate(
        self, request: declaration_pb2.GrantMandateRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.GrantMandateResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        proxy = _proxy_input(request.proxy, self._ids, "proxy")
        until = (
            _time(request.valid_until, "valid_until") if request.HasField("valid_until") else None
        )
        mandate, created = self._d.grant_mandate(actor, person, proxy, until, request.reason)
        return declaration_pb2.GrantMandateResponse(
            mandate=mandate_to_proto(mandate, self._d.now_ms()), created=created
        )

    @grpc_errors
    def RevokeMandate(
        self, request: declaration_pb2.RevokeMandateRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.RevokeMandateResponse:
        actor = actor_from_proto(request.actor, self._ids)
        mandate, revoked = self._d.revoke_mandate(actor, request.mandate_id, request.reason)
        return declaration_pb2.RevokeMandateResponse(
            mandate=mandate_to_proto(mandate, self._d.now_ms()), revoked=revoked
        )

    @grpc_errors
    def ListMandates(
        self, request: declaration_pb2.ListMandatesRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.ListMandatesResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = (
            person_from_proto(request.person, self._ids, "person")
            if request.HasField("person")
            else None
        )
        proxy = (
            _proxy_input(request.proxy, self._ids, "proxy") if request.HasField("proxy") else None
        )
        mandates, token = self._d.list_mandates(
            actor,
            person=person,
            proxy=proxy,
            include_inactive=request.include_inactive,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        now = self._d.now_ms()
        return declaration_pb2.ListMandatesResponse(
            mandates=[mandate_to_proto(m, now) for m in mandates], next_page_token=token
        )

    @grpc_errors
    def CheckMandate(
        self, request: declaration_pb2.CheckMandateRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.CheckMandateResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        proxy = _proxy_input(request.proxy, self._ids, "proxy")
        mandate = self._d.check_mandate(actor, proxy, person)
        if mandate is None:
            return declaration_pb2.CheckMandateResponse(active=False)
        return declaration_pb2.CheckMandateResponse(
            active=True, mandate=mandate_to_proto(mandate, self._d.now_ms())
        )

    # -- printed cards (R3, services/declaration/cards.py) -----------------------------------

    def _printed_cards(self) -> PrintedCards:
        if self._cards is None:
            raise Unavailable("printed cards are not set up on this declaration service")
        return self._cards

    @grpc_errors
    def IssuePrintedCard(
        self, request: declaration_pb2.IssuePrintedCardRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.IssuePrintedCardResponse:
        cards = self._printed_cards()
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        issued = cards.issue(actor, person)
        now = cards.now_ms()
        response = declaration_pb2.IssuePrintedCardResponse(
            card=printed_card_to_proto(issued.card, now), token=issued.token
        )
        if issued.replaced is not None:
            response.replaced.CopyFrom(printed_card_to_proto(issued.replaced, now))
        return response

    @grpc_errors
    def RevokePrintedCard(
        self, request: declaration_pb2.RevokePrintedCardRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.RevokePrintedCardResponse:
        cards = self._printed_cards()
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        card, revoked = cards.revoke(actor, person, request.card_id, request.reason)
        return declaration_pb2.RevokePrintedCardResponse(
            card=printed_card_to_proto(card, cards.now_ms()), revoked=revoked
        )

    @grpc_errors
    def ListPrintedCards(
        self, request: declaration_pb2.ListPrintedCardsRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.ListPrintedCardsResponse:
        cards = self._printed_cards()
        actor = actor_from_proto(request.actor, self._ids)
        person = person_from_proto(request.person, self._ids, "person")
        now = cards.now_ms()
        return declaration_pb2.ListPrintedCardsResponse(
            cards=[printed_card_to_proto(c, now) for c in cards.list_cards(actor, person)]
        )

    @grpc_errors
    def CheckPrintedCard(
        self, request: declaration_pb2.CheckPrintedCardRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.CheckPrintedCardResponse:
        cards = self._printed_cards()
        actor = actor_from_proto(request.actor, self._ids)
        state, card = cards.check(actor, request.card_id, request.person_key)
        response = declaration_pb2.CheckPrintedCardResponse(state=_CARD_STATE[state])
        if card is not None:
            response.short_id = card.short_id
            if state == printed.LIVE:
                response.person_key = card.person_key
            if card.revoked_at_ms is not None:
                response.revoked_at.FromMilliseconds(card.revoked_at_ms)
        return response

    @grpc_errors
    def ListCardKeys(
        self, request: declaration_pb2.ListCardKeysRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.ListCardKeysResponse:
        keys = self._printed_cards().card_keys()
        response = declaration_pb2.ListCardKeysResponse()
        for i, key in enumerate(keys):
            published = response.keys.add(
                key_id=key.key_id, ed25519_public_key=key.public_key, signing=i == 0
            )
            published.not_before.FromMilliseconds(key.created_at_ms)
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
