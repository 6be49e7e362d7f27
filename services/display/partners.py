"""PartnerService: bus scanners (R11) and hospital triage (R13), beside DisplayService.

Both go through the display desk (services/display/logic.py), so a partner's call is checked,
coloured live and logged durably before the reply like any scan: a bus scan as a scan (a code
token) or a look-up (a transit card) with context `bus`, its vehicle and route; a triage as a
look-up with context `hospital`, by the partner that asked. Each answers only what its partner
needs: a decision or a group, the colour and the masked name; never reasons or sources.

Who may call: a partner of the right kind (its certificate `partner/bus_operator/<name>` or
`partner/hospital/<name>`), or a verifier whose token names the matching workplace. A partner of
another kind (a hospital calling the bus RPC) is PERMISSION_DENIED, reason WRONG_PARTNER. A
development run without credentials has no caller to check: the request body's role decides.

Transit cards (R11: elderly and disabled passengers' real-name cards skip the code). The risk
index links a card's keyed hash to its holder, and this process's replica of the matcher holds
the links: the matcher answers the holder's dense id and, from it, the person key (`CardHolders`).
A card the index links to nobody is NOT_FOUND, CARD_NOT_LINKED; a display without a replica
(HEALTHCODE_DISPLAY_COLOUR=service) holds no links and asks the passenger for a code
(UNAVAILABLE, CARD_HOLDER_UNKNOWN_HERE).

Consent (issue 11, item 11; services/declaration/consent.py): a look-up by name (a triage, a
transit card) is asked of the declaration service first (`ConsentPeer`, CheckPartnerAccess),
which records it for the holder and refuses a partner the holder has withdrawn access from
(PERMISSION_DENIED, CONSENT_REVOKED) or a purpose not the partner kind's own
(PURPOSE_NOT_ALLOWED). The answer is never cached (each look-up is a row of the holder's record,
and a withdrawal counts at the next look-up); if the declaration service cannot answer, the
look-up fails UNAVAILABLE. A code token the holder presents is consent by presentation: not
asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import healthcode_matcher as hm
from healthcode.v1 import common_pb2, consent_pb2, consent_pb2_grpc, partners_pb2, partners_pb2_grpc

from services._common.actors import Actor, Role
from services._common.auth import Caller, current_caller
from services._common.convert import actor_from_proto, person_from_proto
from services._common.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from services._common.identifiers import Identifiers
from services._common.logs import redact
from services._common.purposes import KIND_OF_WORKPLACE, ConsentRevoked, PurposeNotAllowed
from services._common.status import grpc_errors, reason_of
from services.display.logic import DisplayDesk, Place, Scanned, ScanSite
from services.display.servicer import place_of
from services.display.store import LOOKUP

logger = logging.getLogger(__name__)

SERVICE_NAME = partners_pb2.DESCRIPTOR.services_by_name["PartnerService"].full_name

PARTNER_ROLES = frozenset({Role.VERIFIER, Role.PARTNER})
BUS, HOSPITAL = "bus", "hospital"
_MAX_BUS_TEXT = 64

_COLOUR = (common_pb2.COLOUR_GREEN, common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_RED)


class WrongPartner(PermissionDenied):
    """A partner (or verifier) of another kind called an RPC meant for one kind."""

    reason = "WRONG_PARTNER"


class CardNotLinked(NotFound):
    """The transit card is linked to no one: not a real-name card, or never linked."""

    reason = "CARD_NOT_LINKED"


class CardHolderUnknownHere(Unavailable):
    """The matcher links the card, but this process has not learnt its holder's key."""

    reason = "CARD_HOLDER_UNKNOWN_HERE"


# --- transit cards ---------------------------------------------------------------------------


class CardHolders:
    """Real-name transit cards -> their holders' person keys, from this process's replica of the
    matcher: `index()` is the replica's current index (None without a replica)."""

    def __init__(self, index: Callable[[], hm.Index | None]) -> None:
        self._index = index

    def holder(self, card_key: bytes) -> bytes:
        """The holder's person key; CardNotLinked or CardHolderUnknownHere otherwise."""
        index = self._index()
        if index is None:
            raise CardHolderUnknownHere(
                "this display reads colours from the colour service and holds no card links "
                "(HEALTHCODE_DISPLAY_COLOUR=replica holds them): the passenger shows a code"
            )
        holder_id = index.card_holder_by_key(card_key)
        key = index.person_key(holder_id) if holder_id is not None else None
        if key is None:
            raise CardNotLinked(
                "this transit card is not linked to anyone (a plain stored-value card is not "
                "real-name): the passenger shows their health code instead"
            )
        return key


# --- consent ---------------------------------------------------------------------------------

_PURPOSE = {BUS: consent_pb2.PARTNER_PURPOSE_BUS, "triage": consent_pb2.PARTNER_PURPOSE_TRIAGE}
_REFUSALS: dict[str, type[PermissionDenied]] = {
    ConsentRevoked.reason: ConsentRevoked,
    PurposeNotAllowed.reason: PurposeNotAllowed,
}
_SERVICE_ACTOR = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="display")


def partner_kind(caller: Caller | None, default: str) -> str:
    """The partner kind a look-up is made as: a partner's own, the kind a verifier's workplace
    stands for; `default` (the RPC's kind) in a development run without credentials."""
    if caller is None:
        return default
    if caller.role is Role.PARTNER:
        return caller.context
    return KIND_OF_WORKPLACE.get(caller.context, default)


class ConsentPeer:
    """CheckPartnerAccess at the declaration service, each call with a deadline; never cached."""

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._stub = consent_pb2_grpc.ConsentServiceStub(channel)
        self._timeout = timeout_s

    def check(self, actor: Actor, person_key: bytes, kind: str, purpose: str, where: Place) -> None:
        """Returns when the partner may look the person up (recorded there); raises the
        refusal (ConsentRevoked, PurposeNotAllowed, NotFound) or Unavailable otherwise."""
        request = consent_pb2.CheckPartnerAccessRequest(
            actor=_SERVICE_ACTOR,
            person=common_pb2.PersonRef(person_key=person_key),
            partner=consent_pb2.PartnerRef(principal=f"{actor.role}:{actor.principal}", kind=kind),
            purpose=_PURPOSE[purpose],
            place=where.place,
        )
        try:
            self._stub.CheckPartnerAccess(request, timeout=self._timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            message = error.details() if isinstance(error, grpc.Call) else ""
            refusal = _REFUSALS.get(reason_of(error))
            if code == grpc.StatusCode.PERMISSION_DENIED and refusal is not None:
                raise refusal(
                    message or "the holder's consent does not cover this look-up"
                ) from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(message or "no person is registered with that ID number") from None
            # Never allowed silently: without the holder's answer there is no look-up.
            raise Unavailable(
                f"the declaration service could not confirm the holder's consent ({code.name}): "
                "nothing was looked up; try again in a moment"
            ) from None


# --- triage ----------------------------------------------------------------------------------

# The one-line category a triage nurse is told, by the source a rule matched; the first that
# applies wins, most serious first. Not the rule, its days, places or the source itself.
TRIAGE_CATEGORIES: tuple[tuple[str, frozenset[str]], ...] = (
    ("confirmed or suspected case", frozenset({"confirmed", "suspected"})),
    ("fever or symptoms", frozenset({"declared_fever", "declared_symptoms", "fever_clinic"})),
    (
        "close contact",
        frozenset(
            {
                "close_contact",
                "secondary_contact",
                "declared_case_contact",
                "inbound_co_traveller",
                "rail_co_passenger",
                "flight_co_passenger",
            }
        ),
    ),
    (
        "quarantine or sealed compound",
        frozenset({"home_quarantine", "sealed_compound", "grassroots_screening"}),
    ),
    (
        "travel from a risk area",
        frozenset(
            {
                "declared_travel",
                "telecom_roaming",
                "inbound_traveller",
                "province_red",
                "province_yellow",
            }
        ),
    ),
    ("cold-chain exposure", frozenset({"cold_chain_exposure"})),
)
NOT_GREEN = "health code not green"


@dataclass(frozen=True, slots=True)
class Triaged:
    key_group: bool
    category: str  # empty for the general group


def triage_group(colour: int, sources: Sequence[str], corrected_to_green: bool = False) -> Triaged:
    """The triage group (预检分诊): key when the code is not green, or when a fever or an
    epidemiological history is on record (`sources`: those of every rule that fired, cleared
    ones too: a close contact cleared by a negative test is still seen with protection). A code
    the support desk corrected to green after an appeal counts as green with no history (the
    history was found wrong)."""
    if colour == 0 and corrected_to_green:
        return Triaged(False, "")
    seen = set(sources)
    for category, members in TRIAGE_CATEGORIES:
        if seen & members:
            return Triaged(True, category)
    if colour != 0:
        return Triaged(True, NOT_GREEN)
    return Triaged(False, "")


# --- the desk --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusScanned:
    scanned: Scanned
    alert: bool
    masked_card: str = ""


def partner_check(caller: Caller | None, kind: str, context: str, action: str) -> None:
    """WrongPartner unless the caller is a partner of `kind` or a verifier working in
    `context` (no caller: a development run, where the body's role was checked)."""
    if caller is None:
        return
    if caller.role is Role.PARTNER and caller.context == kind:
        return
    if caller.role is Role.VERIFIER and caller.context == context:
        return
    raise WrongPartner(
        f"{action} is for {kind} partners and verifiers working at a {context}; the "
        f"credential is {caller.describe()}"
    )


def _bus_text(value: str, field: str) -> str:
    text = value.strip()
    if not text or len(text) > _MAX_BUS_TEXT or not text.isprintable():
        raise InvalidArgument([(field, f"1-{_MAX_BUS_TEXT} printable characters")])
    return redact(text)


class PartnerDesk:
    """Bus scans and triage look-ups through the display desk."""

    def __init__(
        self,
        desk: DisplayDesk,
        cards: CardHolders,
        identifiers: Identifiers,
        consent: ConsentPeer | None = None,
    ) -> None:
        """`consent`: asked before each look-up by name (the service always has one; None only
        in tests of the desk alone)."""
        self._desk = desk
        self._cards = cards
        self._identifiers = identifiers
        self._consent = consent

    def _ask_consent(
        self,
        actor: Actor,
        person_key: bytes,
        kind: str,
        purpose: str,
        where: Place,
        site: ScanSite,
    ) -> None:
        if self._consent is None:
            return
        try:
            self._consent.check(actor, person_key, kind, purpose, where)
        except PermissionDenied as refused:
            # Every attempt is in the display log too, with why (no person: it was refused).
            self._desk.record_refusal(
                LOOKUP, refused.reason or "PERMISSION_DENIED", actor, where, site
            )
            raise

    def bus_scan(
        self,
        actor: Actor,
        *,
        token: str | None,
        transit_card: str | None,
        temperature: float | None,
        vehicle: str,
        route: str,
        device_id: str,
        kind: str = "bus_operator",
    ) -> BusScanned:
        actor.require(PARTNER_ROLES, "scan passengers at a bus")
        violations: list[tuple[str, str]] = []
        site_fields = {}
        for field, value in (("vehicle", vehicle), ("route", route)):
            try:
                site_fields[field] = _bus_text(value, field)
            except InvalidArgument as bad:
                violations.extend(bad.violations)
        if (token is None) == (transit_card is None):
            violations.append(("rider", "give the scanned code token or the transit card"))
        if violations:
            raise InvalidArgument(violations)
        site = ScanSite(BUS, site_fields["vehicle"], site_fields["route"])
        where = Place(
            _bus_text(device_id, "device_id") if device_id.strip() else site.vehicle,
            f"bus route {site.route}, vehicle {site.vehicle}",
        )
        masked_card = ""
        if token is not None:
            scanned = self._desk.scan(actor, token, where, temperature, site)
        else:
            card = self._identifiers.card(transit_card or "", "transit_card")
            masked_card = card.masked
            try:
                holder = self._cards.holder(card.key)
            except (CardNotLinked, CardHolderUnknownHere) as refused:
                self._desk.record_refusal(LOOKUP, refused.reason, actor, where, site)
                raise
            actor.require(PARTNER_ROLES, "scan transit cards")
            self._ask_consent(actor, holder, kind, BUS, where, site)
            scanned = self._desk.look_up(
                actor, holder, where, temperature, site,
                roles=PARTNER_ROLES, action="scan transit cards",
            )  # fmt: skip
        alert = scanned.temperature_alert or scanned.live.colour != 0
        return BusScanned(scanned, alert, masked_card)

    def triage(
        self, actor: Actor, patient_key: bytes, where: Place, kind: str = "hospital"
    ) -> tuple[Scanned, Triaged]:
        actor.require(PARTNER_ROLES, "triage patients")
        self._ask_consent(actor, patient_key, kind, "triage", where, ScanSite(HOSPITAL))
        scanned = self._desk.look_up(
            actor, patient_key, where, None, ScanSite(HOSPITAL),
            roles=PARTNER_ROLES, action="triage patients",
        )  # fmt: skip
        verdict = scanned.live.detail
        sources: list[str] = []
        corrected = False
        if verdict is not None:
            sources = [r.source for r in verdict.reasons]
            corrected = verdict.HasField("manual_override")
        colour = scanned.live.colour if scanned.live.colour is not None else 2
        return scanned, triage_group(colour, sources, corrected)


# --- the service -----------------------------------------------------------------------------


class PartnerServicer(partners_pb2_grpc.PartnerServiceServicer):
    def __init__(self, desk: PartnerDesk, identifiers: Identifiers) -> None:
        self._desk = desk
        self._identifiers = identifiers

    @grpc_errors
    def BusScan(
        self, request: partners_pb2.BusScanRequest, context: grpc.ServicerContext
    ) -> partners_pb2.BusScanResponse:
        caller = current_caller()
        partner_check(caller, "bus_operator", BUS, "BusScan")
        actor = actor_from_proto(request.actor, self._identifiers)
        which = request.WhichOneof("rider")
        done = self._desk.bus_scan(
            actor,
            token=request.token if which == "token" else None,
            transit_card=request.transit_card if which == "transit_card" else None,
            temperature=(
                request.temperature_celsius if request.HasField("temperature_celsius") else None
            ),
            vehicle=request.vehicle,
            route=request.route,
            device_id=request.device_id,
            kind=partner_kind(caller, "bus_operator"),
        )
        s = done.scanned
        return partners_pb2.BusScanResponse(
            decision=(
                partners_pb2.BUS_DECISION_ALERT if done.alert else partners_pb2.BUS_DECISION_PASS
            ),
            colour=_COLOUR[s.live.colour if s.live.colour is not None else 2],
            masked_name=s.holder.masked_name,
            fever=s.temperature_alert,
            scan_id=s.scan_id,
            masked_card=done.masked_card,
        )

    @grpc_errors
    def Triage(
        self, request: partners_pb2.TriageRequest, context: grpc.ServicerContext
    ) -> partners_pb2.TriageResponse:
        caller = current_caller()
        partner_check(caller, "hospital", HOSPITAL, "Triage")
        actor = actor_from_proto(request.actor, self._identifiers)
        if not request.HasField("patient"):
            raise InvalidArgument([("patient", "give the patient's ID number")])
        key = person_from_proto(request.patient, self._identifiers, "patient").key
        scanned, triaged = self._desk.triage(
            actor, key, place_of(request.desk, "desk"), partner_kind(caller, "hospital")
        )
        return partners_pb2.TriageResponse(
            group=(
                partners_pb2.TRIAGE_GROUP_KEY
                if triaged.key_group
                else partners_pb2.TRIAGE_GROUP_GENERAL
            ),
            colour=_COLOUR[scanned.live.colour if scanned.live.colour is not None else 2],
            masked_name=scanned.holder.masked_name,
            reason_category=triaged.category,
            lookup_id=scanned.scan_id,
        )
