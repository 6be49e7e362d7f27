"""Registration and the daily declaration (R2, R3, R7, R11). No gRPC here.

Every change is stored together with the outbox messages the risk index must receive (the
person, phone links, cards, declaration-derived feed rows); the outbox worker delivers them in
order and retries while the risk index is down, so nothing acknowledged here is lost there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from services._common import days
from services._common.actors import PROXY_ROLES, Actor, Role, check_not_self, no_mandate
from services._common.days import check_county, format_day, next_midnight, parse_day
from services._common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services._common.exchange import NO_EXCHANGE, ExchangeHasher, ExchangeHashes
from services._common.identifiers import Identified, Identifiers, check_name
from services._common.logs import redact
from services._common.temperature import body_temperature, is_fever
from services.declaration import wire
from services.declaration.model import (
    GRANT,
    REGISTRATION,
    SYMPTOMS,
    CheckedChunk,
    Declaration,
    DeclarationInput,
    ImportInput,
    ImportOutcome,
    ImportPerson,
    ImportPlan,
    ImportState,
    KnownPerson,
    Mandate,
    NewMandate,
    OutboxMessage,
    Person,
    Proxy,
    RecordedActor,
    Visit,
)
from services.declaration.repository import DeclarationRepository
from services.declaration.wire import RegisterEntry

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

# Who may act for a person: themself, a family proxy, a grid worker (R3).
ACTING_ROLES = (Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER)
# Reading a person's masked record: also operators and platform services.
READING_ROLES = (*ACTING_ROLES, Role.ADMIN, Role.SERVICE, Role.SUPPORT)
PHONE_ROLES = (*ACTING_ROLES, Role.ADMIN, Role.SUPPORT)

MAX_PHONES = 10
MAX_VISITS = 100
MAX_PLACE_CHARS = 200
# Travel and contact history older than this cannot raise a colour any more.
HISTORY_DAYS = 30
MAX_RECENT = 30

# A bulk import is an operator's act: it registers people who are not there to apply, on the
# authority of a list (a community register, a migration). Grid workers and family proxies
# register one person at a time through Register; each row still records which of them
# registered the person (R3).
IMPORT_ROLES = (Role.ADMIN,)
# Who a row may say registered the person.
REGISTRAR_ROLES = (Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER)
# Rows per chunk: one transaction and one RegisterPeople call, which takes at most 50,000.
MAX_IMPORT_ROWS = 50_000
MAX_PRINCIPAL_CHARS = 128

# Mandates (R3, issue 10): a family proxy or grid worker acts for a person only under one.
# Granted by the person themself or an operator; revoked by the person, the proxy or an
# operator; listed by each of them for what concerns them; checked by the platform's services
# (the display service, before a proxy's Show).
GRANT_ROLES = (Role.CITIZEN, Role.ADMIN)
REVOKE_ROLES = (Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER, Role.ADMIN)
LIST_ROLES = (*REVOKE_ROLES, Role.SERVICE, Role.SUPPORT)
CHECK_ROLES = (Role.SERVICE, Role.ADMIN)
MAX_REASON_CHARS = 200
DEFAULT_PAGE = 100
MAX_PAGE = 1000
# Mandate ids are SQLite rowids: a larger uint64 names no mandate.
MAX_MANDATE_ID = 2**63 - 1


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def recorded(actor: Actor) -> RecordedActor:
    return RecordedActor(actor.role, actor.principal, actor.masked_id_number)


def proxy_of(actor: Actor) -> Proxy:
    """The proxy a family proxy or grid worker acts as: a person by key, an account by id."""
    if actor.role is Role.FAMILY_PROXY:
        return Proxy(Role.FAMILY_PROXY, actor.person_key, actor.masked_id_number)
    return Proxy(Role.GRID_WORKER, principal=actor.principal)


def _ms(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class ProxyInput:
    """A proxy as a request names it, not validated yet: a role, and a family member (person
    reference, already hashed) or a grid worker's account id."""

    role: Role | None
    person: Identified | None = None
    principal: str = ""


class Declarations:
    """The declaration service's domain."""

    def __init__(
        self,
        repository: DeclarationRepository,
        identifiers: Identifiers,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        on_outbox: Callable[[], None] = lambda: None,
        exchange: ExchangeHasher = NO_EXCHANGE,
    ) -> None:
        self._repo = repository
        self._ids = identifiers
        self._clock = clock
        # Other provinces (R6): each new person's exchange hashes, computed here where the ID
        # number passes, go to the risk index in the registration's outbox message.
        self._exchange = exchange
        # Wakes the outbox worker: messages go out at once rather than at its next poll.
        self._on_outbox = on_outbox

    # -- registration ------------------------------------------------------------------------

    def register(
        self,
        actor: Actor,
        name: str,
        id_number: str,
        phones: Sequence[str],
        transit_card: str = "",
    ) -> tuple[Person, bool]:
        """Register a person (or replay a registration: adds any new phones, `created=False`)."""
        violations: list[tuple[str, str]] = []
        checked_name = _collect(violations, lambda: check_name(name, "name"))
        person = _collect(violations, lambda: self._ids.person(id_number, "id_number"))
        if len(phones) > MAX_PHONES:
            violations.append(("phones", f"at most {MAX_PHONES} phone numbers"))
        phone_ids: dict[bytes, tuple[int, Identified]] = {}
        for i, raw in enumerate(phones):
            phone = _collect(violations, partial(self._ids.phone, raw, f"phones[{i}]"))
            if phone is not None:
                phone_ids.setdefault(phone.key, (i, phone))
        card = None
        if transit_card.strip():
            card = _collect(violations, lambda: self._ids.card(transit_card, "transit_card"))
        if violations:
            raise InvalidArgument(violations)
        assert person is not None and checked_name is not None
        actor.acts_for(person.key, ACTING_ROLES, "register")
        check_not_self(actor, person.key, "register")
        now = self._clock()

        existing = self._repo.get_person(person.key)
        # A proxy registering someone new gets a mandate for them (recorded with the person);
        # replaying it for someone already registered needs one, like any other act for them.
        mandate = None
        if existing is not None and actor.is_proxy:
            mandate = self._mandate(actor, person.key, now, "register")
        if existing is not None and existing.name != checked_name:
            raise AlreadyExists(
                f"{person.masked} is registered under another name; correct the name or ask "
                "support to change the record"
            )
        known = {p.key for p in existing.phones} if existing is not None else set()
        new_phones: list[tuple[bytes, str]] = []
        for key, (i, phone) in phone_ids.items():
            if key in known:
                continue
            holder = self._repo.phone_holder(key)
            if holder is not None and holder != person.key:
                raise AlreadyExists(
                    f"phones[{i}] ({phone.masked}) is linked to another person; it must be "
                    "removed there first"
                )
            new_phones.append((key, phone.masked))
        if existing is not None and len(known) + len(new_phones) > MAX_PHONES:
            raise FailedPrecondition(f"a person holds at most {MAX_PHONES} phone numbers")
        new_card = None
        if card is not None and (existing is None or existing.card_key != card.key):
            holder = self._repo.card_holder(card.key)
            if holder is not None and holder != person.key:
                raise AlreadyExists("transit_card is linked to another person")
            new_card = (card.key, card.masked)

        masked_id = person.masked
        outbox: list[OutboxMessage] = []
        if existing is None:
            hashes = self._exchange.of(id_number)
            outbox.append(_register_message(person.key, masked_id, hashes))
        outbox += [_link_phone_message(person.key, masked_id, k, m) for k, m in new_phones]
        if new_card is not None:
            outbox.append(_link_card_message(person.key, masked_id, *new_card))
        new_mandate = None
        if existing is None and actor.is_proxy:
            new_mandate = NewMandate(
                self._named(proxy_of(actor)),
                person.key,
                None,
                REGISTRATION,
                recorded(actor),
            )
        stored = self._repo.save_registration(
            key=person.key,
            name=checked_name,
            masked_id_number=masked_id,
            new=existing is None,
            phones=new_phones,
            card=new_card,
            actor=recorded(actor),
            now=now,
            outbox=outbox,
            new_mandate=new_mandate,
            mandate=_held(mandate, now),
        )
        self._on_outbox()
        if existing is None:
            if actor.is_proxy:
                logger.info(
                    "registered %s by %s, with a mandate for them", masked_id, actor.proxy_name()
                )
            else:
                logger.info("registered %s by %s", masked_id, actor.role)
        elif mandate is not None:
            _log_act(actor, mandate, "replayed a registration", masked_id)
        return stored, existing is None

    def add_phone(self, actor: Actor, person: Identified, raw_phone: str) -> Person:
        phone = self._ids.phone(raw_phone, "phone")
        now = self._clock()
        mandate = self._may_act(actor, person.key, PHONE_ROLES, "add a phone", now)
        current = self._registered(person)
        if any(p.key == phone.key for p in current.phones):
            return current  # already linked: adding again is a harmless replay
        if len(current.phones) >= MAX_PHONES:
            raise FailedPrecondition(f"a person holds at most {MAX_PHONES} phone numbers")
        holder = self._repo.phone_holder(phone.key)
        if holder is not None:
            raise AlreadyExists(f"{phone.masked} is linked to another person")
        stored = self._repo.add_phone(
            person.key,
            phone.key,
            phone.masked,
            now,
            [_link_phone_message(person.key, current.masked_id_number, phone.key, phone.masked)],
            mandate=_held(mandate, now),
        )
        self._on_outbox()
        _log_act(actor, mandate, f"linked phone {phone.masked}", current.masked_id_number)
        return stored

    def remove_phone(self, actor: Actor, person: Identified, phone: Identified) -> Person:
        now = self._clock()
        mandate = self._may_act(actor, person.key, PHONE_ROLES, "remove a phone", now)
        current = self._registered(person)
        stored = self._repo.remove_phone(
            person.key,
            phone.key,
            now,
            [_unlink_phone_message(phone.key)],
            mandate=_held(mandate, now),
        )
        if stored is None:
            raise NotFound(f"that phone is not linked to {current.masked_id_number}")
        self._on_outbox()
        _log_act(actor, mandate, "unlinked a phone", current.masked_id_number)
        return stored

    def link_card(self, actor: Actor, person: Identified, raw_card: str) -> Person:
        card = self._ids.card(raw_card, "transit_card")
        now = self._clock()
        mandate = self._may_act(actor, person.key, PHONE_ROLES, "link a transit card", now)
        current = self._registered(person)
        if current.card_key == card.key:
            return current
        holder = self._repo.card_holder(card.key)
        if holder is not None and holder != person.key:
            raise AlreadyExists("transit_card is linked to another person")
        stored = self._repo.set_card(
            person.key,
            (card.key, card.masked),
            now,
            [_link_card_message(person.key, current.masked_id_number, card.key, card.masked)],
            mandate=_held(mandate, now),
        )
        self._on_outbox()
        _log_act(actor, mandate, f"linked transit card {card.masked}", current.masked_id_number)
        return stored

    def get_person(
        self, actor: Actor, person: Identified, recent: int = 0
    ) -> tuple[Person, list[Declaration]]:
        if recent > MAX_RECENT:
            raise InvalidArgument([("recent_declarations", f"at most {MAX_RECENT}")])
        self._may_act(actor, person.key, READING_ROLES, "read a person's record", self._clock())
        current = self._registered(person)
        declarations = self._repo.recent_declarations(person.key, recent) if recent else []
        return current, declarations

    # -- the daily declaration ---------------------------------------------------------------

    def declare(
        self, actor: Actor, person: Identified, data: DeclarationInput
    ) -> tuple[Declaration, dt.datetime]:
        """Store today's declaration and feed its risk rows; (declaration, next opening)."""
        now = self._clock()
        today = days.today(now)
        symptoms, temperature, visits, contact_day = validate_declaration(data, today)
        mandate = self._may_act(actor, person.key, ACTING_ROLES, "declare", now)
        current = self._registered(person)
        opens = next_midnight(now)
        if self._repo.declared_on(person.key, today):
            raise _already_declared(current.masked_id_number, today, opens)

        rows = derived_rows(today, symptoms, temperature, visits, contact_day)
        sources = sorted(rows)
        masked = current.masked_id_number

        def outbox_for(_declaration_id: int) -> list[OutboxMessage]:
            return [
                _batch_message(person.key, masked, today, source, rows[source])
                for source in sources
            ]

        stored = self._repo.save_declaration(
            key=person.key,
            day=today,
            now=now,
            actor=recorded(actor),
            symptoms=symptoms,
            temperature=temperature,
            visits=visits,
            case_contact=contact_day is not None,
            case_contact_day=contact_day,
            derived_sources=sources,
            outbox_for=outbox_for,
            mandate=_held(mandate, now),
        )
        if stored is None:  # a concurrent declaration won the race
            raise _already_declared(masked, today, opens)
        self._on_outbox()
        _log_act(actor, mandate, f"declared for {format_day(today)}", masked)
        return stored, opens

    # -- bulk import (R1) ---------------------------------------------------------------------

    def check_importer(self, actor: Actor) -> None:
        """PermissionDenied unless the actor may import people."""
        actor.require(IMPORT_ROLES, "import people")

    def import_chunk(self, actor: Actor, rows: Sequence[ImportInput]) -> ImportOutcome:
        """Validate a chunk's rows, store the good ones in one transaction with one outbox
        message for the risk index (and one of residence rows), and report the rest by line
        and field. Idempotent by person key: a row already stored changes nothing."""
        return self.store_chunk(actor, self.check_chunk(actor, rows))

    def check_chunk(self, actor: Actor, rows: Sequence[ImportInput]) -> CheckedChunk:
        """The first half of `import_chunk`: every row validated, nothing read or stored."""
        self.check_importer(actor)
        if len(rows) > MAX_IMPORT_ROWS:
            raise ResourceExhausted(
                f"{len(rows)} rows in one message; send at most {MAX_IMPORT_ROWS}",
                [("rows", f"at most {MAX_IMPORT_ROWS} a message")],
            )
        checked = CheckedChunk(len(rows))
        for row in rows:
            try:
                checked.valid.append(validate_import_row(self._ids, row, self._exchange))
            except InvalidArgument as error:
                checked.rejected += 1
                checked.rejections.extend((row.line, f, why) for f, why in error.violations)
        return checked

    def store_chunk(self, actor: Actor, checked: CheckedChunk) -> ImportOutcome:
        """The second half: the valid rows decided against what is stored, and written in one
        transaction (durable on return)."""
        plan = ImportPlan()
        if checked.valid:
            plan = self._repo.import_people(
                checked.valid, plan_import, imported_by=actor.principal, now=self._clock()
            )
            if plan.outbox:
                self._on_outbox()
        rejections = sorted([*checked.rejections, *plan.rejections], key=lambda r: r[0])
        outcome = ImportOutcome(
            imported=len(plan.new_persons),
            already_present=plan.already_present,
            updated=plan.updated,
            rejected=checked.rejected + plan.rejected,
            rejections=rejections,
        )
        logger.info(
            "import by %s: %d rows, %d new, %d already present (%d updated), %d rejected",
            actor.principal,
            checked.rows,
            outcome.imported,
            outcome.already_present,
            outcome.updated,
            outcome.rejected,
        )
        return outcome

    def _registered(self, person: Identified) -> Person:
        found = self._repo.get_person(person.key)
        if found is None:
            raise NotFound("no person is registered with that ID number; Register first")
        return found

    # -- mandates (R3): who may act for whom ---------------------------------------------------

    def _may_act(
        self,
        actor: Actor,
        person_key: bytes,
        allowed: Sequence[Role],
        action: str,
        now: dt.datetime,
    ) -> Mandate | None:
        """PermissionDenied unless the actor may `action` for the person: a citizen only for
        themself, a family proxy or grid worker only under an active mandate (returned, so
        the write can check it again in its transaction and record it). Checked before
        anything is read, so a refused proxy learns nothing about the person."""
        actor.acts_for(person_key, allowed, action)
        if not actor.is_proxy:
            return None
        check_not_self(actor, person_key, action)
        return self._mandate(actor, person_key, now, action)

    def _mandate(self, actor: Actor, person_key: bytes, now: dt.datetime, action: str) -> Mandate:
        found = self._repo.active_mandate(proxy_of(actor), person_key, _ms(now))
        if found is None:
            logger.info("refused: %s may not %s without a mandate", actor.proxy_name(), action)
            raise no_mandate(actor, action)
        return found

    def _named(self, proxy: Proxy) -> Proxy:
        """A family proxy named by key only gets their masked ID number, if registered."""
        if proxy.role is not Role.FAMILY_PROXY or proxy.masked_id_number:
            return proxy
        assert proxy.person_key is not None
        known = self._repo.get_person(proxy.person_key)
        masked = known.masked_id_number if known is not None else ""
        return Proxy(Role.FAMILY_PROXY, proxy.person_key, masked)

    def grant_mandate(
        self,
        actor: Actor,
        person: Identified,
        proxy: ProxyInput,
        valid_until: dt.datetime | None = None,
        reason: str = "",
    ) -> tuple[Mandate, bool]:
        """Let a family member or grid worker act for the person, from now until
        `valid_until` (None: until revoked). By the person themself (CITIZEN) or an operator
        (ADMIN). (mandate, created): the same grant again returns the active one unchanged;
        one with another end replaces it (the old one is revoked, naming the new)."""
        now = self._clock()
        violations: list[tuple[str, str]] = []
        checked = _collect(violations, lambda: check_proxy(proxy, "proxy"))
        if checked is not None and checked.person_key == person.key:
            violations.append(
                ("proxy.person", "a mandate is for someone else: a person acts for themself")
            )
        if valid_until is not None and valid_until <= now:
            violations.append(("valid_until", "must be in the future; leave it unset for no end"))
        why = _collect(violations, lambda: check_reason(reason, "reason"))
        if violations:
            raise InvalidArgument(violations)
        assert checked is not None and why is not None
        actor.require(GRANT_ROLES, "grant a mandate")
        if actor.role is Role.CITIZEN and actor.person_key != person.key:
            raise PermissionDenied(
                "a citizen grants mandates only for themself; an administrator grants others"
            )
        current = self._registered(person)
        mandate, created = self._repo.grant_mandate(
            NewMandate(
                self._named(checked),
                person.key,
                _ms(valid_until) if valid_until is not None else None,
                GRANT,
                recorded(actor),
                why,
            ),
            _ms(now),
        )
        if created:
            until = valid_until.isoformat() if valid_until is not None else "revoked"
            logger.info(
                "mandate %d granted: %s for %s until %s, approved by %s",
                mandate.mandate_id,
                mandate.proxy.name,
                current.masked_id_number,
                until,
                _who(actor),
            )
        return mandate, created

    def revoke_mandate(
        self, actor: Actor, mandate_id: int, reason: str = ""
    ) -> tuple[Mandate, bool]:
        """End a mandate now. By the person acted for (CITIZEN), the proxy themself or an
        operator (ADMIN). (mandate, revoked): revoking one revoked before changes nothing."""
        violations: list[tuple[str, str]] = []
        if mandate_id <= 0:
            violations.append(("mandate_id", "required: the id ListMandates shows"))
        why = _collect(violations, lambda: check_reason(reason, "reason"))
        if violations:
            raise InvalidArgument(violations)
        assert why is not None
        actor.require(REVOKE_ROLES, "revoke a mandate")

        def may(mandate: Mandate) -> None:
            if actor.role is Role.ADMIN:
                return
            if actor.role is Role.CITIZEN and actor.person_key == mandate.person_key:
                return
            if actor.is_proxy and _same_proxy(proxy_of(actor), mandate.proxy):
                return
            raise PermissionDenied(
                f"mandate {mandate_id} may be revoked by the person it is for, its proxy or an "
                "administrator"
            )

        done = None
        if mandate_id <= MAX_MANDATE_ID:
            done = self._repo.revoke_mandate(
                mandate_id, recorded(actor), why, _ms(self._clock()), may
            )
        if done is None:
            raise NotFound(
                f"there is no mandate {mandate_id}; `healthcode mandate list` shows them"
            )
        mandate, revoked = done
        if revoked:
            logger.info(
                "mandate %d revoked: %s for %s, by %s",
                mandate_id,
                mandate.proxy.name,
                mandate.masked_id_number,
                _who(actor),
            )
        return mandate, revoked

    def list_mandates(
        self,
        actor: Actor,
        *,
        person: Identified | None = None,
        proxy: ProxyInput | None = None,
        include_inactive: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Mandate], str]:
        """Mandates in the order they were granted, a page at a time: (page, next page token,
        "" after the last). A citizen sees the mandates for themself (who may act for them); a
        family proxy or grid worker the ones they hold (whom they act for); an operator, the
        support desk or a platform service any, by person, by proxy, or all. Active ones only,
        unless `include_inactive` (revoked and expired ones too: the history)."""
        violations: list[tuple[str, str]] = []
        checked = None
        if proxy is not None:
            checked = _collect(violations, lambda: check_proxy(proxy, "proxy"))
        if page_size > MAX_PAGE:
            violations.append(("page_size", f"at most {MAX_PAGE}"))
        after = 0
        if page_token:
            if not (page_token.isascii() and page_token.isdigit()) or len(page_token) > 18:
                violations.append(("page_token", "pass next_page_token of the previous reply"))
            else:
                after = int(page_token)
        if violations:
            raise InvalidArgument(violations)
        actor.require(LIST_ROLES, "list mandates")
        person_key = person.key if person is not None else None
        if actor.role is Role.CITIZEN:
            if person_key is not None and person_key != actor.person_key:
                raise PermissionDenied(
                    "a citizen sees the mandates for themself only (who may act for them)"
                )
            person_key = actor.person_key
        elif actor.is_proxy:
            own = proxy_of(actor)
            if checked is not None and not _same_proxy(checked, own):
                raise PermissionDenied("a proxy sees the mandates they hold only")
            checked = own
        now = _ms(self._clock())
        limit = page_size or DEFAULT_PAGE
        found = self._repo.list_mandates(
            person_key=person_key,
            proxy=checked,
            active_at_ms=None if include_inactive else now,
            after_id=after,
            limit=limit + 1,
        )
        more = len(found) > limit
        page = found[:limit]
        return page, str(page[-1].mandate_id) if more else ""

    def check_mandate(self, actor: Actor, proxy: ProxyInput, person: Identified) -> Mandate | None:
        """The proxy's mandate for the person active now, or None: what the display service
        asks before a proxy's Show (a revocation counts at once: nothing is cached here)."""
        checked = check_proxy(proxy, "proxy")
        actor.require(CHECK_ROLES, "check mandates")
        return self._repo.active_mandate(checked, person.key, _ms(self._clock()))

    def now_ms(self) -> int:
        """The service clock, Unix ms (a mandate's state is told as of it)."""
        return _ms(self._clock())


def check_proxy(proxy: ProxyInput, field: str) -> Proxy:
    """A proxy as named in a request -> Proxy, or InvalidArgument naming every bad field."""
    violations: list[tuple[str, str]] = []
    principal = proxy.principal.strip()
    if proxy.role not in PROXY_ROLES:
        violations.append((f"{field}.role", "FAMILY_PROXY or GRID_WORKER"))
    elif proxy.role is Role.FAMILY_PROXY:
        if proxy.person is None:
            violations.append((f"{field}.person", "a family proxy is named by their ID number"))
        if principal:
            violations.append((f"{field}.principal", "only with GRID_WORKER"))
    else:
        if proxy.person is not None:
            violations.append((f"{field}.person", "only with FAMILY_PROXY"))
        if not principal:
            violations.append((f"{field}.principal", "a grid worker's account id is required"))
        elif len(principal) > MAX_PRINCIPAL_CHARS or not principal.isprintable():
            violations.append(
                (f"{field}.principal", f"at most {MAX_PRINCIPAL_CHARS} printable characters")
            )
        elif redact(principal) != principal:
            violations.append((f"{field}.principal", "an account id, not an ID or phone number"))
    if violations:
        raise InvalidArgument(violations)
    if proxy.role is Role.FAMILY_PROXY:
        assert proxy.person is not None
        return Proxy(Role.FAMILY_PROXY, proxy.person.key, proxy.person.masked)
    return Proxy(Role.GRID_WORKER, principal=principal)


def check_reason(reason: str, field: str) -> str:
    """A free-text reason, stripped: at most MAX_REASON_CHARS printable characters, no ID or
    phone number (it is stored and shown)."""
    text = reason.strip()
    if len(text) > MAX_REASON_CHARS or not text.isprintable():
        raise InvalidArgument([(field, f"at most {MAX_REASON_CHARS} printable characters")])
    if redact(text) != text:
        raise InvalidArgument([(field, "must not hold an ID or phone number")])
    return text


def _same_proxy(a: Proxy, b: Proxy) -> bool:
    if a.role is not b.role:
        return False
    if a.role is Role.FAMILY_PROXY:
        return a.person_key == b.person_key
    return a.principal == b.principal


def _held(mandate: Mandate | None, now: dt.datetime) -> tuple[int, int] | None:
    """The mandate a proxy's write holds, as the repository checks it: (id, the act's ms)."""
    return None if mandate is None else (mandate.mandate_id, _ms(now))


def _who(actor: Actor) -> str:
    """An actor as logged: role and account id or masked ID number."""
    return f"{actor.role} {actor.principal or actor.masked_id_number}".strip()


def _log_act(actor: Actor, mandate: Mandate | None, what: str, masked: str) -> None:
    """Every act by a proxy names the proxy and the mandate in the service log."""
    if mandate is not None:
        logger.info(
            "%s %s for %s under mandate %d",
            actor.proxy_name(),
            what,
            masked,
            mandate.mandate_id,
        )


def validate_declaration(
    data: DeclarationInput, today: int
) -> tuple[list[str], float | None, list[Visit], int | None]:
    """(symptoms, temperature rounded to 0.1, visits, contact day) or InvalidArgument."""
    violations: list[tuple[str, str]] = []
    symptoms: list[str] = []
    for i, s in enumerate(data.symptoms):
        if s not in SYMPTOMS:
            violations.append((f"symptoms[{i}]", "choose a listed symptom"))
        elif s not in symptoms:
            symptoms.append(s)
    temperature = None
    if data.temperature_celsius is not None:
        temperature = _collect(
            violations,
            partial(body_temperature, data.temperature_celsius, "temperature_celsius"),
        )
    if len(data.visits) > MAX_VISITS:
        violations.append(("visits", f"at most {MAX_VISITS} visits"))
    visits: list[Visit] = []
    for i, (county, day_text, place) in enumerate(data.visits):
        f = f"visits[{i}]"
        c = _collect(violations, partial(check_county, county, f"{f}.county"))
        d = _collect(
            violations,
            partial(parse_day, day_text, f"{f}.day", today_day=today, max_age_days=HISTORY_DAYS),
        )
        p = place.strip()
        if len(p) > MAX_PLACE_CHARS:
            violations.append((f"{f}.place", f"at most {MAX_PLACE_CHARS} characters"))
        elif redact(p) != p:
            violations.append((f"{f}.place", "must not hold an ID or phone number"))
        if c is not None and d is not None:
            visits.append(Visit(c, d, p))
    contact_day: int | None = None
    if data.case_contact:
        if data.case_contact_day.strip():
            contact_day = _collect(
                violations,
                lambda: parse_day(
                    data.case_contact_day,
                    "case_contact_day",
                    today_day=today,
                    max_age_days=HISTORY_DAYS,
                ),
            )
        else:
            contact_day = today
    elif data.case_contact_day.strip():
        violations.append(("case_contact_day", "only with case_contact set"))
    if violations:
        raise InvalidArgument(violations)
    return symptoms, temperature, visits, contact_day


def derived_rows(
    today: int,
    symptoms: Sequence[str],
    temperature: float | None,
    visits: Sequence[Visit],
    contact_day: int | None,
) -> dict[str, list[tuple[int, int]]]:
    """Declaration-derived feed rows by source: (day, county) pairs, county 0 when none."""
    rows: dict[str, list[tuple[int, int]]] = {}
    if is_fever(temperature):
        rows["declared_fever"] = [(today, 0)]
    if symptoms:
        rows["declared_symptoms"] = [(today, 0)]
    if contact_day is not None:
        rows["declared_case_contact"] = [(contact_day, 0)]
    if visits:
        rows["declared_travel"] = sorted({(v.day, v.county) for v in visits})
    return rows


def validate_import_row(
    ids: Identifiers, row: ImportInput, exchange: ExchangeHasher = NO_EXCHANGE
) -> ImportPerson:
    """One import row -> keys, masked forms and exchange hashes, or InvalidArgument naming
    every bad field. Each field is checked once, by a direct call (`_checked`, no closure per
    field): this runs once per imported person."""
    violations: list[tuple[str, str]] = []
    name = _checked(violations, check_name, row.name, "name")
    person = _checked(violations, ids.person, row.id_number, "id_number")
    if len(row.phones) > MAX_PHONES:
        violations.append(("phones", f"at most {MAX_PHONES} phone numbers"))
    phones: dict[bytes, tuple[int, bytes, str]] = {}
    for i, raw in enumerate(row.phones):
        phone = _checked(violations, ids.phone, raw, f"phones[{i}]")
        if phone is not None and phone.key not in phones:
            phones[phone.key] = (i, phone.key, phone.masked)
    card = None
    if row.transit_card.strip():
        card = _checked(violations, ids.card, row.transit_card, "transit_card")
    county = None
    if row.residence_county:
        county = _checked(violations, check_county, row.residence_county, "residence_county")
    role = row.registered_by
    if role not in REGISTRAR_ROLES:
        violations.append(("registered_by", "set CITIZEN, FAMILY_PROXY or GRID_WORKER"))
    principal = row.registrar_principal.strip()
    if role is Role.GRID_WORKER:
        if not principal:
            violations.append(("registrar_principal", "a grid worker's account id is required"))
        elif len(principal) > MAX_PRINCIPAL_CHARS:
            violations.append(("registrar_principal", f"at most {MAX_PRINCIPAL_CHARS} characters"))
        elif redact(principal) != principal:
            violations.append(("registrar_principal", "an account id, not an ID or phone number"))
    elif principal:
        violations.append(("registrar_principal", "only with GRID_WORKER"))
    proxy = None
    if row.registrar_id_number.strip():
        if role is Role.FAMILY_PROXY:
            proxy = _checked(violations, ids.person, row.registrar_id_number, "registrar_id_number")
            if proxy is not None and person is not None and proxy.key == person.key:
                violations.append(
                    ("registrar_id_number", "a family proxy is someone else; use CITIZEN")
                )
        else:
            violations.append(("registrar_id_number", "only with FAMILY_PROXY"))
    if violations:
        raise InvalidArgument(violations)
    assert person is not None and name is not None and role is not None
    if role is Role.CITIZEN:
        by = RecordedActor(role, "", person.masked)
    elif role is Role.FAMILY_PROXY:
        by = RecordedActor(role, "", proxy.masked if proxy is not None else "")
    else:
        by = RecordedActor(role, principal, "")
    return ImportPerson(
        row.line,
        person.key,
        person.masked,
        name,
        tuple(phones.values()),
        (card.key, card.masked) if card is not None else None,
        county,
        by,
        proxy.key if proxy is not None else None,
        exchange.of(row.id_number),
    )


def plan_import(rows: Sequence[ImportPerson], state: ImportState) -> ImportPlan:
    """What a chunk changes, given what is stored (`state`, updated as rows are taken, so a
    person twice in a chunk is new once and present once). A row is taken whole or rejected
    whole: another name for a stored ID number, a phone or card held by someone else, more
    than MAX_PHONES phones. A stored person gains the phones, card and district they lacked."""
    plan = ImportPlan()
    held_before = set(state.card_holders)
    # The risk index hears of each new person (with their exchange hashes) and each new link
    # once per chunk.
    people: dict[bytes, RegisterEntry] = {}
    residence: dict[bytes, tuple[str, int]] = {}
    for row in rows:
        known = state.persons.get(row.key)
        problems: list[tuple[str, str]] = []
        if known is not None and known.name != row.name:
            problems.append(("name", f"{row.masked_id_number} is registered under another name"))
        new_phones: list[tuple[bytes, str]] = []
        for i, key, masked in row.phones:
            holder = state.phone_holders.get(key)
            if holder is None:
                new_phones.append((key, masked))
            elif holder != row.key:
                problems.append((f"phones[{i}]", f"{masked} is linked to another person"))
        phone_count = (known.phone_count if known is not None else 0) + len(new_phones)
        if phone_count > MAX_PHONES:
            problems.append(("phones", f"a person holds at most {MAX_PHONES} phone numbers"))
        new_card = None
        if row.card is not None and (known is None or known.card_key != row.card[0]):
            holder = state.card_holders.get(row.card[0])
            if holder is not None and holder != row.key:
                problems.append(("transit_card", "the card is linked to another person"))
            else:
                new_card = row.card
        new_county = row.residence_county
        if known is not None and known.residence_county == new_county:
            new_county = None
        if problems:
            plan.rejected += 1
            plan.rejections.extend((row.line, f, why) for f, why in problems)
            continue
        if known is None:
            plan.new_persons.append(row)
        else:
            plan.already_present += 1
            if new_phones or new_card is not None or new_county is not None:
                plan.updated += 1
        for key, masked in new_phones:
            plan.new_phones.append((key, row.key, masked))
            state.phone_holders[key] = row.key
        card_key = known.card_key if known is not None else None
        if new_card is not None:
            # Every card assignment (a new person's too) is an update in row order, so a card
            # given up earlier in the chunk is free before the next holder takes it.
            plan.card_updates.append((row.key, *new_card))
            if card_key is not None:
                state.card_holders.pop(card_key, None)
            state.card_holders[new_card[0]] = row.key
            card_key = new_card[0]
        county = known.residence_county if known is not None else None
        if new_county is not None:
            if known is not None:
                plan.residence_updates.append((row.key, new_county))
            residence[row.key] = (row.masked_id_number, new_county)
            county = new_county
        state.persons[row.key] = KnownPerson(row.name, card_key, county, phone_count)
        if known is None or new_phones or new_card is not None:
            hashes = row.exchange_hashes if known is None else ()
            entry = people.setdefault(row.key, (row.masked_id_number, [], [], hashes))
            entry[1].extend(new_phones)
            if new_card is not None:
                entry[2][:] = [new_card]
    _cards_with_new_persons(plan, held_before)
    if people:
        plan.outbox.append(_register_people_message(people))
    if residence:
        plan.outbox.append(_residence_message(residence))
    return plan


def _cards_with_new_persons(plan: ImportPlan, held_before: set[bytes]) -> None:
    """Move to `plan.new_cards` the card updates that can go in with the new person's row: the
    person's only card assignment of the chunk, of a card no one held before it and no other
    row assigns. Every other stays an update, in row order (a card given up earlier in the
    chunk is free only once its former holder's update has run). In a first import that is
    every card: one insert a person instead of an insert and an update."""
    if not plan.card_updates:
        return
    new = {r.key for r in plan.new_persons}
    per_person = Counter(person for person, _, _ in plan.card_updates)
    per_card = Counter(card for _, card, _ in plan.card_updates)
    updates = []
    for person, card, masked in plan.card_updates:
        if (
            person in new
            and per_person[person] == 1
            and per_card[card] == 1
            and card not in held_before
        ):
            plan.new_cards[person] = (card, masked)
        else:
            updates.append((person, card, masked))
    plan.card_updates = updates


def _already_declared(masked: str, today: int, opens: dt.datetime) -> FailedPrecondition:
    when = opens.isoformat()
    return FailedPrecondition(
        f"{masked} has already declared today ({format_day(today)}); the next declaration "
        f"opens at {when} (midnight, Asia/Shanghai)",
        [("DAILY_DECLARATION", f"person:{masked}", f"the next declaration opens at {when}")],
    )


def _collect(violations: list[tuple[str, str]], check: Callable[[], T]) -> T | None:
    try:
        return check()
    except InvalidArgument as error:
        violations.extend(error.violations)
        return None


def _checked(
    violations: list[tuple[str, str]], check: Callable[[V, str], T], value: V, field: str
) -> T | None:
    """`check(value, field)`, or None with its violations added to `violations`."""
    try:
        return check(value, field)
    except InvalidArgument as error:
        violations.extend(error.violations)
        return None


# -- outbox messages (keys in hex and masked forms only) ---------------------------------------


def _register_message(key: bytes, masked: str, hashes: ExchangeHashes = ()) -> OutboxMessage:
    payload: dict[str, Any] = {"person_key": key.hex(), "masked_id_number": masked}
    if hashes:
        payload["exchange_hashes"] = [[province, h.hex()] for province, h in hashes]
    return OutboxMessage("register_person", payload)


def _link_phone_message(key: bytes, masked: str, phone_key: bytes, phone: str) -> OutboxMessage:
    return OutboxMessage(
        "link_phone",
        {
            "person_key": key.hex(),
            "masked_id_number": masked,
            "phone_key": phone_key.hex(),
            "masked_phone": phone,
        },
    )


def _unlink_phone_message(phone_key: bytes) -> OutboxMessage:
    return OutboxMessage("unlink_phone", {"phone_key": phone_key.hex()})


def _link_card_message(key: bytes, masked: str, card_key: bytes, card: str) -> OutboxMessage:
    return OutboxMessage(
        "link_card",
        {
            "person_key": key.hex(),
            "masked_id_number": masked,
            "card_key": card_key.hex(),
            "masked_card": card,
        },
    )


def _batch_message(
    key: bytes, masked: str, today: int, source: str, rows: Sequence[tuple[int, int]]
) -> OutboxMessage:
    # One declaration per person per day, so (person, day, source) names the batch for good:
    # a resend after a crash replays it and the risk index changes nothing.
    return OutboxMessage(
        "ingest_batch",
        {
            "source": source,
            "batch_id": f"declaration:{key.hex()}:{format_day(today)}:{source}",
            "rows": [
                {"person_key": key.hex(), "masked": masked, "day": format_day(d), "county": c}
                for d, c in rows
            ],
        },
    )


def _register_people_message(people: dict[bytes, RegisterEntry]) -> OutboxMessage:
    # One message per chunk, not one per person: the risk index registers them in one change.
    return OutboxMessage("register_people", body=wire.register_people_body(people.items()))


def _residence_message(residence: dict[bytes, tuple[str, int]]) -> OutboxMessage:
    # The `residence` attribute source, keyed by person, county = district, undated. Added to
    # (not replacing) the list: the public-security feed sends the full list with `replace`.
    # The batch id is the rows' digest, so a resend after a crash is a harmless replay.
    digest = hashlib.sha256()
    for key, (_, county) in residence.items():
        digest.update(key + county.to_bytes(4, "big"))
    batch_id = f"import:residence:{digest.hexdigest()[:32]}"
    return OutboxMessage("ingest_batch", body=wire.residence_body(batch_id, residence.items()))
