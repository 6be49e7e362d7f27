"""Cold-chain tracing (R14, issue 11 item 9): the food-safety tracing platform's exposure events.

An event names a product batch, the stage of the chain (production ... sale), when, and the
people who handled it there (by ID number, or by a phone counted for its holder, R7). Each
handler becomes a `cold_chain_exposure` row through `RiskIndex.ingest_batch`: the feed path's
validation, provenance, idempotency and versions, reused. The batch-to-person link is kept by
person key with the masked forms only (table `cold_chain_links`), so an authorised partner can
list the people a batch reached.

Served by the risk index process (`ColdChainService`). The access table lets partners in; which
kind of partner may do what is checked here (`require_partner_kind`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import grpc
from healthcode.v1 import cold_chain_pb2, cold_chain_pb2_grpc

from services._common import days
from services._common.actors import Actor, Role
from services._common.auth import current_caller
from services._common.convert import actor_from_proto
from services._common.errors import AlreadyExists, InvalidArgument, PermissionDenied
from services._common.identifiers import Identifiers
from services._common.status import grpc_errors
from services.risk_index.logic import RiskIndex, utc_now
from services.risk_index.model import RawRow
from services.risk_index.repository import RiskIndexRepository

logger = logging.getLogger(__name__)

SERVICE_NAME = cold_chain_pb2.DESCRIPTOR.services_by_name["ColdChainService"].full_name
SOURCE = "cold_chain_exposure"
PARTNER_KIND = "cold_chain"
MAX_HANDLERS = 10_000
# Older exposure no longer colours anyone (the rule's window is 14 days); the platform reports
# within days, so a month catches late reports and refuses typos in the year.
MAX_AGE = dt.timedelta(days=30)
MAX_AHEAD = dt.timedelta(minutes=5)
_EVENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
_BATCH = re.compile(r"[A-Za-z0-9_.:/\-]{1,100}")

STAGES: dict[int, str] = {
    cold_chain_pb2.COLD_CHAIN_STAGE_PRODUCTION: "production",
    cold_chain_pb2.COLD_CHAIN_STAGE_PROCESSING: "processing",
    cold_chain_pb2.COLD_CHAIN_STAGE_PACKAGING: "packaging",
    cold_chain_pb2.COLD_CHAIN_STAGE_TRANSPORT: "transport",
    cold_chain_pb2.COLD_CHAIN_STAGE_SALE: "sale",
}


class PartnerKindNotAllowed(PermissionDenied):
    """A partner of another kind called a partner-specific method."""

    reason = "PARTNER_KIND_NOT_ALLOWED"


def partner_kind(actor: Actor) -> str | None:
    """The kind of partner the credential names (hospital, cold_chain, ...); None when no
    credentials are checked (in-process tests, an insecure development run)."""
    caller = current_caller()
    if caller is None or actor.role is not Role.PARTNER:
        return None
    return caller.context


def require_partner_kind(
    actor: Actor, allowed: Collection[Role], kinds: Collection[str], action: str
) -> None:
    """PermissionDenied unless the role may `action` and, for a partner, its kind is one of
    `kinds` (the access table admits partners of every kind)."""
    actor.require(allowed, action)
    kind = partner_kind(actor)
    if kind is not None and kind not in kinds:
        names = ", ".join(sorted(kinds))
        raise PartnerKindNotAllowed(
            f"{action} is for partners of kind {names}; this credential is a {kind or 'unnamed'} "
            "partner"
        )


@dataclass(frozen=True, slots=True)
class Unmatched:
    index: int
    masked: str
    reason: str


@dataclass(frozen=True, slots=True)
class Posted:
    event_id: str
    index_version: int
    linked: int
    unmatched: list[Unmatched]
    replayed: bool


@dataclass(frozen=True, slots=True)
class BatchLink:
    masked_id_number: str
    masked_phone: str
    stage: int
    day: str
    event_id: str


@dataclass(frozen=True, slots=True)
class _Handler:
    person_key: bytes | None  # None: a phone linked to nobody
    masked_id_number: str
    masked_phone: str


POST_ROLES = (Role.PARTNER, Role.ADMIN)
LIST_ROLES = (Role.PARTNER, Role.ADMIN, Role.SUPPORT)


class ColdChain:
    """Exposure events in, exposure rows and batch links out."""

    def __init__(
        self,
        risk_index: RiskIndex,
        repository: RiskIndexRepository,
        identifiers: Identifiers,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._index = risk_index
        self._repo = repository
        self._ids = identifiers
        self._clock = clock

    def post(
        self,
        actor: Actor,
        event_id: str,
        product_batch: str,
        stage: int,
        handlers: Sequence[tuple[str, str]],
        handled_at: dt.datetime | None,
    ) -> Posted:
        """Validate the event, ingest its handlers as exposure rows, keep the links."""
        require_partner_kind(actor, POST_ROLES, {PARTNER_KIND}, "PostExposure")
        now = self._clock()
        violations: list[tuple[str, str]] = []
        if not _EVENT_ID.fullmatch(event_id):
            violations.append(("event_id", "1-100 characters: letters, digits, - _ . :"))
        if not _BATCH.fullmatch(product_batch):
            violations.append(("product_batch", "1-100 characters: letters, digits, - _ . : /"))
        if stage not in STAGES:
            violations.append(("stage", "one of " + ", ".join(STAGES.values())))
        if handled_at is None:
            violations.append(("handled_at", "when the batch was handled is required"))
        elif handled_at > now + MAX_AHEAD:
            violations.append(("handled_at", "is in the future"))
        elif handled_at < now - MAX_AGE:
            violations.append(("handled_at", f"is more than {MAX_AGE.days} days ago"))
        if not handlers:
            violations.append(("handlers", "name at least one person who handled the batch"))
        elif len(handlers) > MAX_HANDLERS:
            violations.append(("handlers", f"at most {MAX_HANDLERS:,} an event; send several"))
        named: list[_Handler] = []
        keys: list[bytes] = []
        for i, (kind, raw) in enumerate(handlers[:MAX_HANDLERS]):
            field = f"handlers[{i}].{kind or 'subject'}"
            try:
                if kind == "id_number":
                    person = self._ids.person(raw, field)
                    named.append(_Handler(person.key, person.masked, ""))
                    keys.append(person.key)
                elif kind == "phone":
                    phone = self._ids.phone(raw, field)
                    named.append(_Handler(None, "", phone.masked))
                    keys.append(phone.key)
                else:
                    violations.append((field, "give an id_number or a phone"))
            except InvalidArgument as bad:
                violations.extend(bad.violations)
        if violations:
            raise InvalidArgument(violations)
        assert handled_at is not None
        day = days.format_day(days.day_number(handled_at))
        digest = _digest(product_batch, stage, day, keys)

        known = self._known(event_id)
        if known is not None:
            if known[0] != digest:
                raise AlreadyExists(
                    f"event {event_id!r} was posted before with other content; use a new event id"
                )
            return known[1]

        # Phones count for their holders (R7); a phone linked to nobody colours nobody.
        resolved: list[_Handler] = []
        unmatched: list[Unmatched] = []
        phone_keys = [k for k, h in zip(keys, named, strict=True) if h.person_key is None]
        holders = self._phone_holders(phone_keys)
        for i, (key, h) in enumerate(zip(keys, named, strict=True)):
            if h.person_key is not None:
                resolved.append(h)
                continue
            holder = holders.get(key)
            if holder is None:
                reason = "this phone number is linked to no registered person"
                unmatched.append(Unmatched(i, h.masked_phone, reason))
            else:
                resolved.append(_Handler(holder[0], holder[1], h.masked_phone))
        people: dict[bytes, _Handler] = {}
        for h in resolved:
            assert h.person_key is not None
            people.setdefault(h.person_key, h)

        version = self._index.accepted_version
        if people:
            rows = [
                RawRow(subject="person_key", value=k, masked=h.masked_id_number, day=day)
                for k, h in people.items()
            ]
            # The tracing platform's rows enter as the platform's own feed: provenance names it.
            feed = Actor(Role.SERVICE, f"cold_chain/{actor.principal or 'operator'}")
            version = self._index.ingest_batch(feed, SOURCE, f"cold-chain:{event_id}", rows).version
        posted = Posted(event_id, version, len(people), unmatched, False)
        with self._repo.transaction() as conn:
            conn.execute(
                "INSERT INTO cold_chain_events (event_id, product_batch, stage, day, digest, "
                "index_version, linked, unmatched, actor_role, actor_principal, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (
                    event_id,
                    product_batch,
                    stage,
                    day,
                    digest,
                    version,
                    len(people),
                    json.dumps([[u.index, u.masked, u.reason] for u in unmatched]),
                    actor.role.value,
                    actor.principal,
                    now.isoformat(),
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO cold_chain_links (product_batch, event_id, person_key, "
                "masked_id_number, masked_phone) VALUES (?, ?, ?, ?, ?)",
                [
                    (product_batch, event_id, k, h.masked_id_number, h.masked_phone)
                    for k, h in people.items()
                ],
            )
        logger.info(
            "cold-chain event %s: batch %s at %s, %d people linked, %d unmatched -> version %d",
            event_id,
            product_batch,
            STAGES[stage],
            len(people),
            len(unmatched),
            version,
        )
        return posted

    def list_people(self, actor: Actor, product_batch: str) -> list[BatchLink]:
        require_partner_kind(actor, LIST_ROLES, {PARTNER_KIND}, "ListBatchPeople")
        if not _BATCH.fullmatch(product_batch):
            raise InvalidArgument(
                [("product_batch", "1-100 characters: letters, digits, - _ . : /")]
            )
        with self._repo.reading() as conn:
            rows = conn.execute(
                "SELECT l.masked_id_number, l.masked_phone, e.stage, e.day, e.event_id "
                "FROM cold_chain_links l JOIN cold_chain_events e USING (event_id) "
                "WHERE l.product_batch = ? ORDER BY e.day, e.stage, e.event_id, "
                "l.masked_id_number",
                (product_batch,),
            ).fetchall()
        return [BatchLink(str(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows]

    # -- internals ---------------------------------------------------------------------------

    def _known(self, event_id: str) -> tuple[bytes, Posted] | None:
        with self._repo.reading() as conn:
            row = conn.execute(
                "SELECT digest, index_version, linked, unmatched FROM cold_chain_events "
                "WHERE event_id = ?",
                (event_id,),
            ).fetchone()
        if row is None:
            return None
        unmatched = [Unmatched(int(i), str(m), str(r)) for i, m, r in json.loads(row[3])]
        return bytes(row[0]), Posted(event_id, int(row[1]), int(row[2]), unmatched, True)

    def _phone_holders(self, phone_keys: Sequence[bytes]) -> dict[bytes, tuple[bytes, str]]:
        """phone key -> (holder's person key, holder's masked ID number), for linked phones."""
        out: dict[bytes, tuple[bytes, str]] = {}
        if not phone_keys:
            return out
        with self._repo.reading() as conn:
            for key in phone_keys:
                row = conn.execute(
                    "SELECT p.holder_key, s.masked_id_number FROM phones p "
                    "JOIN persons s ON s.person_key = p.holder_key WHERE p.phone_key = ?",
                    (key,),
                ).fetchone()
                if row is not None and row[0] is not None:
                    out[key] = (bytes(row[0]), str(row[1]))
        return out


def _digest(product_batch: str, stage: int, day: str, keys: Sequence[bytes]) -> bytes:
    h = hashlib.sha256(f"{product_batch}\0{stage}\0{day}\0".encode())
    for key in sorted(keys):
        h.update(key)
    return h.digest()


class ColdChainServicer(cold_chain_pb2_grpc.ColdChainServiceServicer):
    def __init__(self, cold_chain: ColdChain, identifiers: Identifiers) -> None:
        self._chain = cold_chain
        self._ids = identifiers

    @grpc_errors
    def PostExposure(
        self, request: cold_chain_pb2.PostExposureRequest, context: grpc.ServicerContext
    ) -> cold_chain_pb2.PostExposureResponse:
        actor = actor_from_proto(request.actor, self._ids)
        handlers = [
            (h.WhichOneof("subject") or "", getattr(h, h.WhichOneof("subject") or "id_number"))
            for h in request.handlers
        ]
        handled_at = None
        if request.HasField("handled_at"):
            try:
                handled_at = request.handled_at.ToDatetime(dt.UTC)
            except (ValueError, OverflowError):
                raise InvalidArgument([("handled_at", "not a valid time")]) from None
        posted = self._chain.post(
            actor,
            request.event_id,
            request.product_batch,
            int(request.stage),
            handlers,
            handled_at,
        )
        return cold_chain_pb2.PostExposureResponse(
            event_id=posted.event_id,
            index_version=posted.index_version,
            linked=posted.linked,
            unmatched=[
                cold_chain_pb2.UnmatchedHandler(index=u.index, masked=u.masked, reason=u.reason)
                for u in posted.unmatched
            ],
            replayed=posted.replayed,
        )

    @grpc_errors
    def ListBatchPeople(
        self, request: cold_chain_pb2.ListBatchPeopleRequest, context: grpc.ServicerContext
    ) -> cold_chain_pb2.ListBatchPeopleResponse:
        actor = actor_from_proto(request.actor, self._ids)
        links = self._chain.list_people(actor, request.product_batch)
        return cold_chain_pb2.ListBatchPeopleResponse(
            product_batch=request.product_batch,
            people=[
                cold_chain_pb2.BatchPerson(
                    masked_id_number=link.masked_id_number,
                    masked_phone=link.masked_phone,
                    stage=link.stage,  # type: ignore[arg-type]
                    day=link.day,
                    event_id=link.event_id,
                )
                for link in links
            ],
        )
