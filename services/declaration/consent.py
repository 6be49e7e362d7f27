"""Consent for partner look-ups (GB/T 38962, "authorising a third party"; issue 11, item 11;
docs/partners.md, "Consent"): the declaration service, which holds people and mandates, records
every partner look-up and answers whether a partner may look a person up.

A partner that names a person itself (a hospital triaging a patient by ID number, a bus reading a
real-name transit card) looks them up without the holder presenting anything. So:

- Purpose limitation: each partner kind has one purpose of its own (a hospital triages, a bus
  operator reads transit cards, an exam organiser checks its candidate list). A look-up for
  another purpose is PERMISSION_DENIED, reason PURPOSE_NOT_ALLOWED.
- The holder's say: the holder (or a proxy under a mandate, or the support desk) may withdraw a
  partner's access; from then on that partner's look-ups of them are PERMISSION_DENIED, reason
  CONSENT_REVOKED, with a message the partner's staff can act on. Restoring gives it back.
- The record: every look-up asked about, answered or refused, is a row the holder sees
  (ListPartnerAccess), written in the transaction that decided it. Rows are never deleted;
  withdrawals and restorations are rows too (the latest per partner is in force).

A scan of a code the holder presents is consent by presentation and never comes here, nor does
an exam organiser's list check (a bulk check with its own CSV report; the colour service only
checks the organiser's kind, `check_purpose`).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from healthcode.v1 import consent_pb2, consent_pb2_grpc, declaration_pb2

from services._common.actors import Actor, Role, check_not_self, no_mandate
from services._common.auth import PARTNER_KINDS
from services._common.convert import actor_from_proto, person_from_proto, role_to_proto
from services._common.errors import InvalidArgument, NotFound, PermissionDenied
from services._common.identifiers import Identified, Identifiers, mask_name
from services._common.logs import redact
from services._common.purposes import (
    BUS,
    EXAM,
    TRIAGE,
    ConsentRevoked,
    PurposeNotAllowed,
    check_purpose,
)
from services._common.status import grpc_errors
from services.declaration.logic import proxy_of, recorded
from services.declaration.model import RecordedActor
from services.declaration.repository import DeclarationRepository, _active

logger = logging.getLogger(__name__)

SERVICE_NAME = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name

# Who sees and changes a person's consents: the holder, a proxy under a mandate, the support desk.
HOLDER_ROLES = (Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER, Role.SUPPORT)
CHECK_ROLES = (Role.SERVICE,)
LIST_LIMIT, MAX_LIST = 100, 1000
MAX_PLACE = 200
_PRINCIPAL = re.compile(r"(partner|verifier):[^\s:][^:]{0,70}")

_PURPOSE_PROTO = {
    TRIAGE: consent_pb2.PARTNER_PURPOSE_TRIAGE,
    BUS: consent_pb2.PARTNER_PURPOSE_BUS,
    EXAM: consent_pb2.PARTNER_PURPOSE_EXAM,
}
_PURPOSE_OF_PROTO = {v: k for k, v in _PURPOSE_PROTO.items()}

# What the partner's staff are told when the holder has withdrawn consent, by kind.
_WITHDRAWN = {
    "hospital": "the holder has withdrawn consent for look-ups by this hospital: ask them to "
    "show their health code (or scan their printed card) instead",
    "bus_operator": "the passenger has withdrawn consent for look-ups of their transit card by "
    "this bus operator: ask them to show their health code instead",
}
_WITHDRAWN_OTHER = (
    "the holder has withdrawn consent for look-ups by this partner: ask them to show their "
    "health code instead"
)


@dataclass(frozen=True, slots=True)
class Partner:
    principal: str  # partner:<name> or verifier:<account>
    kind: str


@dataclass(frozen=True, slots=True)
class Access:
    """One look-up as recorded."""

    access_id: int
    partner: Partner
    purpose: str
    place: str
    at_ms: int
    refusal: str  # "" when answered


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A partner's access withdrawn now: since when, by whom."""

    partner: str
    at_ms: int
    by: RecordedActor
    mandate_id: int | None


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """What ListPartnerAccess answers."""

    person_name: str
    masked_id_number: str
    accesses: list[Access]
    withdrawn: dict[str, Withdrawal]


def check_partner(principal: str, field: str = "partner") -> str:
    """A partner as named in requests: `partner:<name>` or `verifier:<account>`, printable, no
    raw number."""
    text = principal.strip()
    if not _PRINCIPAL.fullmatch(text) or not text.isprintable():
        raise InvalidArgument(
            [(field, "name the partner as ListPartnerAccess shows it, e.g. partner:ruijin")]
        )
    if redact(text) != text:
        raise InvalidArgument([(field, "must not hold an ID or phone number")])
    return text


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _withdrawn(conn: sqlite3.Connection, person_key: bytes, partner: str) -> bool:
    row = conn.execute(
        "SELECT revoked FROM consent_changes WHERE person_key = ? AND partner = ? "
        "ORDER BY change_id DESC LIMIT 1",
        (person_key, partner),
    ).fetchone()
    return row is not None and int(row[0]) == 1


def _withdrawals(conn: sqlite3.Connection, person_key: bytes) -> dict[str, Withdrawal]:
    """The partners whose access is withdrawn now (the latest change per partner)."""
    latest: dict[str, Withdrawal | None] = {}
    for r in conn.execute(
        "SELECT partner, revoked, at_ms, by_role, by_principal, by_masked, mandate_id "
        "FROM consent_changes WHERE person_key = ? ORDER BY change_id",
        (person_key,),
    ).fetchall():
        latest[r[0]] = (
            Withdrawal(r[0], int(r[2]), RecordedActor(Role(r[3]), r[4], r[5]), r[6])
            if int(r[1]) == 1
            else None
        )
    return {p: w for p, w in latest.items() if w is not None}


def _person(conn: sqlite3.Connection, person_key: bytes) -> tuple[str, str]:
    row = conn.execute(
        "SELECT name, masked_id_number FROM persons WHERE person_key = ?", (person_key,)
    ).fetchone()
    if row is None:
        raise NotFound("no person is registered with that ID number; Register first")
    return str(row[0]), str(row[1])


class Consents:
    """Partner look-ups: checked and recorded; listed, withdrawn and restored by the holder."""

    def __init__(
        self, repository: DeclarationRepository, *, clock_ms: Callable[[], int] = _now_ms
    ) -> None:
        self._repo = repository
        self._clock_ms = clock_ms

    def _may(
        self, conn: sqlite3.Connection, actor: Actor, person_key: bytes, action: str, now_ms: int
    ) -> int | None:
        """PermissionDenied unless the actor may `action` for the person, read in the caller's
        transaction; the mandate id a proxy acts under."""
        actor.acts_for(person_key, HOLDER_ROLES, action)
        if not actor.is_proxy:
            return None
        check_not_self(actor, person_key, action)
        mandate = _active(conn, proxy_of(actor), person_key, now_ms)
        if mandate is None:
            logger.info("refused: %s may not %s without a mandate", actor.proxy_name(), action)
            raise no_mandate(actor, action)
        return mandate.mandate_id

    def check(
        self, actor: Actor, person_key: bytes, partner: Partner, purpose: str, place: str = ""
    ) -> int:
        """Whether `partner` may look the person up for `purpose` now; the access id when it
        may. The look-up is recorded, answered or refused, in the transaction that decides."""
        actor.require(CHECK_ROLES, "check a partner's access")
        violations: list[tuple[str, str]] = []
        try:
            check_partner(partner.principal, "partner.principal")
        except InvalidArgument as bad:
            violations.extend(bad.violations)
        if partner.kind not in PARTNER_KINDS:
            violations.append(("partner.kind", f"one of {', '.join(sorted(PARTNER_KINDS))}"))
        if purpose not in _PURPOSE_PROTO:
            violations.append(("purpose", "triage, bus or exam"))
        where = redact(place.strip())
        if len(where) > MAX_PLACE or not where.isprintable():
            violations.append(("place", f"at most {MAX_PLACE} printable characters"))
        if violations:
            raise InvalidArgument(violations)
        refusal: PermissionDenied | None = None
        try:
            check_purpose(partner.kind, purpose, partner.principal)
        except PurposeNotAllowed as wrong:
            refusal = wrong
        now = self._clock_ms()
        with self._repo.transaction() as conn:
            _, masked = _person(conn, person_key)
            if refusal is None and _withdrawn(conn, person_key, partner.principal):
                refusal = ConsentRevoked(_WITHDRAWN.get(partner.kind, _WITHDRAWN_OTHER))
            cursor = conn.execute(
                "INSERT INTO partner_access (person_key, partner, partner_kind, purpose, place, "
                "at_ms, refusal) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    person_key,
                    partner.principal,
                    partner.kind,
                    purpose,
                    where,
                    now,
                    refusal.reason if refusal is not None else "",
                ),
            )
            access_id = int(cursor.lastrowid or 0)
        # Raised after the commit: a refused look-up stays on the holder's record.
        if refusal is not None:
            logger.info(
                "partner look-up of %s by %s for %s refused: %s",
                masked,
                partner.principal,
                purpose,
                refusal.reason,
            )
            raise refusal
        return access_id

    def list_access(self, actor: Actor, person_key: bytes, limit: int = LIST_LIMIT) -> AccessRecord:
        """The person's partner look-ups, newest first, and the partners withdrawn now."""
        now = self._clock_ms()
        with self._repo.reading() as conn:
            self._may(conn, actor, person_key, "see who looked them up", now)
            name, masked = _person(conn, person_key)
            rows = conn.execute(
                "SELECT access_id, partner, partner_kind, purpose, place, at_ms, refusal "
                "FROM partner_access WHERE person_key = ? ORDER BY at_ms DESC, access_id DESC "
                "LIMIT ?",
                (person_key, limit),
            ).fetchall()
            withdrawn = _withdrawals(conn, person_key)
        accesses = [
            Access(int(r[0]), Partner(r[1], r[2]), r[3], r[4], int(r[5]), r[6]) for r in rows
        ]
        return AccessRecord(name, masked, accesses, withdrawn)

    def set_consent(
        self, actor: Actor, person_key: bytes, partner: str, *, revoke: bool
    ) -> tuple[Withdrawal | None, bool]:
        """Withdraw (`revoke`) or restore a partner's access: (the withdrawal in force after,
        changed). Doing what is already so changes nothing."""
        action = "withdraw a partner's access" if revoke else "restore a partner's access"
        principal = check_partner(partner)
        now = self._clock_ms()
        with self._repo.transaction() as conn:
            mandate_id = self._may(conn, actor, person_key, action, now)
            _, masked = _person(conn, person_key)
            if _withdrawn(conn, person_key, principal) == revoke:
                return _withdrawals(conn, person_key).get(principal), False
            by = recorded(actor)
            conn.execute(
                "INSERT INTO consent_changes (person_key, partner, revoked, at_ms, by_role, "
                "by_principal, by_masked, mandate_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    person_key,
                    principal,
                    int(revoke),
                    now,
                    by.role.value,
                    by.principal,
                    by.masked_id_number,
                    mandate_id,
                ),
            )
            after = _withdrawals(conn, person_key).get(principal)
        logger.info(
            "%s: %s for %s by %s%s",
            "access withdrawn" if revoke else "access restored",
            principal,
            masked,
            f"{actor.role} {actor.principal or actor.masked_id_number}".strip(),
            f" under mandate {mandate_id}" if mandate_id is not None else "",
        )
        return after, True


# --- the service -----------------------------------------------------------------------------


def _recorded_to_proto(by: RecordedActor) -> declaration_pb2.RecordedActor:
    return declaration_pb2.RecordedActor(
        role=role_to_proto(by.role), principal=by.principal, masked_id_number=by.masked_id_number
    )


def _withdrawal_to_proto(w: Withdrawal) -> consent_pb2.RevokedPartner:
    msg = consent_pb2.RevokedPartner(principal=w.partner, mandate_id=w.mandate_id or 0)
    msg.revoked_at.FromMilliseconds(w.at_ms)
    msg.revoked_by.CopyFrom(_recorded_to_proto(w.by))
    return msg


_HolderRequest = (
    consent_pb2.ListPartnerAccessRequest
    | consent_pb2.RevokePartnerAccessRequest
    | consent_pb2.RestorePartnerAccessRequest
)


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, consents: Consents, identifiers: Identifiers) -> None:
        self._consents = consents
        self._ids = identifiers

    def _person(self, actor: Actor, request: _HolderRequest) -> Identified:
        """The request's person; a citizen may leave it unset (themself)."""
        if not request.HasField("person"):
            if actor.role is Role.CITIZEN and actor.person_key is not None:
                return Identified(actor.person_key, actor.masked_id_number)
            raise InvalidArgument([("person", "name the person (ID number or person key)")])
        return person_from_proto(request.person, self._ids, "person")

    @grpc_errors
    def CheckPartnerAccess(
        self, request: consent_pb2.CheckPartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.CheckPartnerAccessResponse:
        actor = actor_from_proto(request.actor, self._ids)
        if not request.HasField("person"):
            raise InvalidArgument([("person", "name the person looked up")])
        person = person_from_proto(request.person, self._ids, "person")
        access_id = self._consents.check(
            actor,
            person.key,
            Partner(request.partner.principal, request.partner.kind),
            _PURPOSE_OF_PROTO.get(request.purpose, ""),
            request.place,
        )
        return consent_pb2.CheckPartnerAccessResponse(access_id=access_id)

    @grpc_errors
    def ListPartnerAccess(
        self, request: consent_pb2.ListPartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.ListPartnerAccessResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = self._person(actor, request)
        if request.page_size > MAX_LIST:
            raise InvalidArgument([("page_size", f"1-{MAX_LIST}, or 0 for {LIST_LIMIT}")])
        record = self._consents.list_access(actor, person.key, request.page_size or LIST_LIMIT)
        reply = consent_pb2.ListPartnerAccessResponse(
            masked_name=mask_name(record.person_name), masked_id_number=record.masked_id_number
        )
        for a in record.accesses:
            msg = reply.accesses.add(
                access_id=a.access_id,
                partner=consent_pb2.PartnerRef(principal=a.partner.principal, kind=a.partner.kind),
                purpose=_PURPOSE_PROTO.get(a.purpose, consent_pb2.PARTNER_PURPOSE_UNSPECIFIED),
                place=a.place,
                allowed=not a.refusal,
                refusal=a.refusal,
                partner_revoked=a.partner.principal in record.withdrawn,
            )
            msg.at.FromMilliseconds(a.at_ms)
        reply.revoked.extend(_withdrawal_to_proto(w) for w in record.withdrawn.values())
        return reply

    @grpc_errors
    def RevokePartnerAccess(
        self, request: consent_pb2.RevokePartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.RevokePartnerAccessResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = self._person(actor, request)
        after, changed = self._consents.set_consent(actor, person.key, request.partner, revoke=True)
        reply = consent_pb2.RevokePartnerAccessResponse(changed=changed)
        if after is not None:
            reply.revoked.CopyFrom(_withdrawal_to_proto(after))
        return reply

    @grpc_errors
    def RestorePartnerAccess(
        self, request: consent_pb2.RestorePartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.RestorePartnerAccessResponse:
        actor = actor_from_proto(request.actor, self._ids)
        person = self._person(actor, request)
        _, changed = self._consents.set_consent(actor, person.key, request.partner, revoke=False)
        return consent_pb2.RestorePartnerAccessResponse(changed=changed)
