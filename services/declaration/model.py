"""The declaration service's domain records (no I/O)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services._common.actors import Role

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


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A change the risk index must hear about, kept until it has acknowledged it. `payload`
    holds keys (hex) and masked forms only."""

    kind: str  # register_person | link_phone | unlink_phone | link_card | ingest_batch
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PendingMessage:
    id: int
    kind: str
    payload: Mapping[str, Any]
    attempts: int
