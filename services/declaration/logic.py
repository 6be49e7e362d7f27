"""Registration and the daily declaration (R2, R3, R7, R11). No gRPC here.

Every change is stored together with the outbox messages the risk index must receive (the
person, phone links, cards, declaration-derived feed rows); the outbox worker delivers them in
order and retries while the risk index is down, so nothing acknowledged here is lost there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from services._common import days
from services._common.actors import Actor, Role
from services._common.days import check_county, format_day, next_midnight, parse_day
from services._common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services._common.identifiers import Identified, Identifiers, check_name
from services._common.logs import redact
from services._common.temperature import body_temperature, is_fever
from services.declaration.model import (
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
    OutboxMessage,
    Person,
    RecordedActor,
    Visit,
)
from services.declaration.repository import DeclarationRepository

logger = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

# Who may act for a person: themself, a family proxy, a grid worker (R3).
ACTING_ROLES = (Role.CITIZEN, Role.FAMILY_PROXY, Role.GRID_WORKER)
# Reading a person's masked record: also operators and platform services.
READING_ROLES = (*ACTING_ROLES, Role.ADMIN, Role.SERVICE)
PHONE_ROLES = (*ACTING_ROLES, Role.ADMIN)

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


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def recorded(actor: Actor) -> RecordedActor:
    return RecordedActor(actor.role, actor.principal, actor.masked_id_number)


class Declarations:
    """The declaration service's domain."""

    def __init__(
        self,
        repository: DeclarationRepository,
        identifiers: Identifiers,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self._repo = repository
        self._ids = identifiers
        self._clock = clock
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

        existing = self._repo.get_person(person.key)
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
            outbox.append(_register_message(person.key, masked_id))
        outbox += [_link_phone_message(person.key, masked_id, k, m) for k, m in new_phones]
        if new_card is not None:
            outbox.append(_link_card_message(person.key, masked_id, *new_card))
        stored = self._repo.save_registration(
            key=person.key,
            name=checked_name,
            masked_id_number=masked_id,
            new=existing is None,
            phones=new_phones,
            card=new_card,
            actor=recorded(actor),
            now=self._clock(),
            outbox=outbox,
        )
        self._on_outbox()
        if existing is None:
            logger.info("registered %s by %s", masked_id, actor.role)
        return stored, existing is None

    def add_phone(self, actor: Actor, person: Identified, raw_phone: str) -> Person:
        phone = self._ids.phone(raw_phone, "phone")
        actor.acts_for(person.key, PHONE_ROLES, "add a phone")
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
            self._clock(),
            [_link_phone_message(person.key, current.masked_id_number, phone.key, phone.masked)],
        )
        self._on_outbox()
        return stored

    def remove_phone(self, actor: Actor, person: Identified, phone: Identified) -> Person:
        actor.acts_for(person.key, PHONE_ROLES, "remove a phone")
        current = self._registered(person)
        stored = self._repo.remove_phone(
            person.key, phone.key, self._clock(), [_unlink_phone_message(phone.key)]
        )
        if stored is None:
            raise NotFound(f"that phone is not linked to {current.masked_id_number}")
        self._on_outbox()
        return stored

    def link_card(self, actor: Actor, person: Identified, raw_card: str) -> Person:
        card = self._ids.card(raw_card, "transit_card")
        actor.acts_for(person.key, PHONE_ROLES, "link a transit card")
        current = self._registered(person)
        if current.card_key == card.key:
            return current
        holder = self._repo.card_holder(card.key)
        if holder is not None and holder != person.key:
            raise AlreadyExists("transit_card is linked to another person")
        stored = self._repo.set_card(
            person.key,
            (card.key, card.masked),
            self._clock(),
            [_link_card_message(person.key, current.masked_id_number, card.key, card.masked)],
        )
        self._on_outbox()
        return stored

    def get_person(
        self, actor: Actor, person: Identified, recent: int = 0
    ) -> tuple[Person, list[Declaration]]:
        actor.acts_for(person.key, READING_ROLES, "read a person's record")
        if recent > MAX_RECENT:
            raise InvalidArgument([("recent_declarations", f"at most {MAX_RECENT}")])
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
        actor.acts_for(person.key, ACTING_ROLES, "declare")
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
        )
        if stored is None:  # a concurrent declaration won the race
            raise _already_declared(masked, today, opens)
        self._on_outbox()
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
                checked.valid.append(validate_import_row(self._ids, row))
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


def validate_import_row(ids: Identifiers, row: ImportInput) -> ImportPerson:
    """One import row -> keys and masked forms, or InvalidArgument naming every bad field.
    Each field is checked once, by a direct call (`_checked`, no closure per field): this runs
    once per imported person."""
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
    )


def plan_import(rows: Sequence[ImportPerson], state: ImportState) -> ImportPlan:
    """What a chunk changes, given what is stored (`state`, updated as rows are taken, so a
    person twice in a chunk is new once and present once). A row is taken whole or rejected
    whole: another name for a stored ID number, a phone or card held by someone else, more
    than MAX_PHONES phones. A stored person gains the phones, card and district they lacked."""
    plan = ImportPlan()
    # The risk index hears of each new person and each new link once per chunk.
    people: dict[bytes, tuple[str, list[tuple[bytes, str]], list[tuple[bytes, str]]]] = {}
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
            entry = people.setdefault(row.key, (row.masked_id_number, [], []))
            entry[1].extend(new_phones)
            if new_card is not None:
                entry[2][:] = [new_card]
    if people:
        plan.outbox.append(_register_people_message(people))
    if residence:
        plan.outbox.append(_residence_message(residence))
    return plan


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


def _register_message(key: bytes, masked: str) -> OutboxMessage:
    return OutboxMessage("register_person", {"person_key": key.hex(), "masked_id_number": masked})


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


def _register_people_message(
    people: dict[bytes, tuple[str, list[tuple[bytes, str]], list[tuple[bytes, str]]]],
) -> OutboxMessage:
    # One message per chunk, not one per person: the risk index registers them in one change.
    return OutboxMessage(
        "register_people",
        {
            "people": [
                [
                    key.hex(),
                    masked,
                    [[k.hex(), m] for k, m in phones],
                    [[k.hex(), m] for k, m in cards],
                ]
                for key, (masked, phones, cards) in people.items()
            ]
        },
        compact=True,
    )


def _residence_message(residence: dict[bytes, tuple[str, int]]) -> OutboxMessage:
    # The `residence` attribute source, keyed by person, county = district, undated. Added to
    # (not replacing) the list: the public-security feed sends the full list with `replace`.
    # The batch id is the rows' digest, so a resend after a crash is a harmless replay.
    digest = hashlib.sha256()
    for key, (_, county) in residence.items():
        digest.update(key + county.to_bytes(4, "big"))
    return OutboxMessage(
        "ingest_batch",
        {
            "source": "residence",
            "batch_id": f"import:residence:{digest.hexdigest()[:32]}",
            "rows": [
                {"person_key": key.hex(), "masked": masked, "day": "", "county": county}
                for key, (masked, county) in residence.items()
            ],
        },
        compact=True,
    )
