"""The declaration service's domain records (no I/O)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services._common.actors import Role, proxy_person_label

# Symptom names as stored; the proto's Symptom enum maps onto them one to one.
SYMPTOMS = (
    "fever",
    "cough",
    "fatigue",
    "sore_throat",
    "shortness_of_breath",
    "loss_of_smell_or_taste",
    "diarrhoea",
)


@dataclass(frozen=True, slots=True)
class RecordedActor:
    """Who acted, as stored: never a raw number."""

    role: Role
    principal: str
    masked_id_number: str = ""


@dataclass(frozen=True, slots=True)
class Phone:
    key: bytes
    masked: str
    linked_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Person:
    key: bytes
    name: str
    masked_id_number: str
    phones: Sequence[Phone]
    card_key: bytes | None
    masked_card: str
    registered_by: RecordedActor
    registered_at: dt.datetime
    last_declared_day: int | None
    residence_county: int | None = None  # the district lived in, from a bulk import
    imported_by: str = ""  # the operator whose bulk import stored the person; "" if Register


# -- mandates (R3: who may act for whom) -------------------------------------------------------

# Why a mandate exists: the proxy registered the person (Register), a bulk import row named the
# proxy as registrar, or it was granted (GrantMandate).
REGISTRATION = "registration"
IMPORT = "import"
GRANT = "grant"
BASES = (REGISTRATION, IMPORT, GRANT)

# A mandate's state at a given time.
ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Proxy:
    """Who holds a mandate: a family member (a person: key and masked ID number) or a grid
    worker (an account id). Never a raw number."""

    role: Role  # FAMILY_PROXY or GRID_WORKER
    person_key: bytes | None = None  # a family proxy
    masked_id_number: str = ""  # a family proxy's, masked ("" when only the key is known)
    principal: str = ""  # a grid worker

    @property
    def name(self) -> str:
        """As told and logged: `family_proxy 11**************2X`, `grid_worker grid-0042`."""
        if self.role is Role.FAMILY_PROXY:
            return f"{self.role} {proxy_person_label(self.masked_id_number, self.person_key)}"
        return f"{self.role} {self.principal}"


@dataclass(frozen=True, slots=True)
class Mandate:
    """A proxy's mandate to act for one person, as recorded: granted (when, by whom, on what
    basis), possibly time-boxed, possibly revoked (when, by whom, why)."""

    mandate_id: int
    proxy: Proxy
    person_key: bytes
    masked_id_number: str  # the person's
    person_name: str  # the person's name (masked when shown)
    granted_at_ms: int
    valid_until_ms: int | None  # None: open-ended
    basis: str  # REGISTRATION | IMPORT | GRANT
    approved_by: RecordedActor
    reason: str = ""
    revoked_at_ms: int | None = None
    revoked_by: RecordedActor | None = None
    revoke_reason: str = ""

    def state(self, at_ms: int) -> str:
        """ACTIVE, EXPIRED or REVOKED at `at_ms` (Unix ms)."""
        if self.revoked_at_ms is not None and self.revoked_at_ms <= at_ms:
            return REVOKED
        if self.granted_at_ms > at_ms:
            return EXPIRED  # not yet in force (only a clock set back sees this)
        if self.valid_until_ms is not None and self.valid_until_ms <= at_ms:
            return EXPIRED
        return ACTIVE

    def active(self, at_ms: int) -> bool:
        return self.state(at_ms) == ACTIVE


@dataclass(frozen=True, slots=True)
class NewMandate:
    """A mandate about to be recorded (the repository assigns the id)."""

    proxy: Proxy
    person_key: bytes
    valid_until_ms: int | None
    basis: str
    approved_by: RecordedActor
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Visit:
    county: int
    day: int
    place: str = ""


@dataclass(frozen=True, slots=True)
class DeclarationInput:
    """A daily declaration as received, fields still raw (validated by the logic)."""

    symptoms: Sequence[str] = ()
    temperature_celsius: float | None = None
    visits: Sequence[tuple[int, str, str]] = ()  # (county, "YYYY-MM-DD", place)
    case_contact: bool = False
    case_contact_day: str = ""


@dataclass(frozen=True, slots=True)
class Declaration:
    declaration_id: int
    person_key: bytes
    day: int
    declared_at: dt.datetime
    declared_by: RecordedActor
    symptoms: Sequence[str]
    temperature_celsius: float | None
    visits: Sequence[Visit]
    case_contact: bool
    case_contact_day: int | None
    derived_sources: Sequence[str]
    mandate_id: int | None = None  # the mandate a proxy declared under; None otherwise


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A change the risk index must hear about, kept until it has acknowledged it. `payload`
    holds keys (hex) and masked forms only; a bulk import's messages are `body` instead, the
    serialized request they become (`wire`), with `payload` empty."""

    kind: str  # register_person | link_phone | unlink_phone | link_card | ingest_batch |
    # register_people (a bulk import's chunk)
    payload: Mapping[str, Any] = field(default_factory=dict)
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A stored message. A bulk import's chunk is stored as the request it becomes (`body`,
    serialized protobuf; `payload` empty): no JSON to decode, no hex keys to convert back."""

    id: int
    kind: str
    payload: Mapping[str, Any]
    attempts: int
    body: bytes | None = None


# -- bulk import -------------------------------------------------------------------------------


# The per-row records are named tuples, not frozen dataclasses: as immutable, and a fraction
# of the cost to build, which counts at millions of rows.


class ImportInput(NamedTuple):
    """One row of a bulk import as received, fields still raw (validated by the logic)."""

    line: int
    id_number: str
    name: str
    phones: Sequence[str] = ()
    transit_card: str = ""
    residence_county: int = 0  # 0: unknown
    registered_by: Role | None = None  # None: not set (refused)
    registrar_principal: str = ""
    registrar_id_number: str = ""


class ImportPerson(NamedTuple):
    """A validated import row: keys and masked forms only."""

    line: int
    key: bytes
    masked_id_number: str
    name: str
    phones: Sequence[tuple[int, bytes, str]]  # (index in the row, key, masked), distinct
    card: tuple[bytes, str] | None
    residence_county: int | None
    registered_by: RecordedActor
    # With FAMILY_PROXY and the family member's ID number: their key (for the mandate that
    # a new person's row records); None otherwise.
    registrar_key: bytes | None = None
    # (province, exchange hash) for the province exchange, computed from the row's ID number.
    exchange_hashes: tuple[tuple[str, bytes], ...] = ()


class KnownPerson(NamedTuple):
    """What the import needs to know of a person already stored."""

    name: str
    card_key: bytes | None
    residence_county: int | None
    phone_count: int


@dataclass
class ImportState:
    """The stored facts a chunk's rows touch, read in the chunk's write transaction."""

    persons: dict[bytes, KnownPerson]
    phone_holders: dict[bytes, bytes]  # phone key -> person key
    card_holders: dict[bytes, bytes]  # card key -> person key


@dataclass
class ImportPlan:
    """What a chunk writes: new persons, links for known ones, the outbox, and the counts."""

    new_persons: list[ImportPerson] = field(default_factory=list)
    new_phones: list[tuple[bytes, bytes, str]] = field(default_factory=list)  # phone, person, m
    card_updates: list[tuple[bytes, bytes, str]] = field(default_factory=list)  # person, card, m
    # A new person's card that no other row of the chunk gives or takes, and no one held
    # before: written with the person, not as an update after (person -> card, masked).
    new_cards: dict[bytes, tuple[bytes, str]] = field(default_factory=dict)
    residence_updates: list[tuple[bytes, int]] = field(default_factory=list)  # person, county
    outbox: list[OutboxMessage] = field(default_factory=list)
    already_present: int = 0
    updated: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str, str]] = field(default_factory=list)  # line, field, why


@dataclass
class CheckedChunk:
    """A chunk after validation: the good rows, and the rest by line and field."""

    rows: int
    valid: list[ImportPerson] = field(default_factory=list)
    rejected: int = 0
    rejections: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """One chunk's result."""

    imported: int
    already_present: int
    updated: int
    rejected: int
    rejections: Sequence[tuple[int, str, str]]  # (line, field, why), in line order
