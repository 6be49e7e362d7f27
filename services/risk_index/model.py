"""The risk index's domain records, shared by the logic and the repository (no I/O here)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services._common.actors import Actor


@dataclass(frozen=True, slots=True)
class RawRow:
    """A feed row as received, before validation. `subject` names the field that was set
    ("id_number", "phone", "person_key", "phone_key", or "" for none)."""

    subject: str
    value: str | bytes
    masked: str = ""
    day: str = ""
    county: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)
    at: dt.datetime | None = None  # when the event happened (hourly sources); aware


@dataclass(frozen=True, slots=True)
class Row:
    """A validated row: keyed, masked, with a day number (None: undated) and county (None).
    Rows of hourly sources also carry the hour number their `at` fell in (None: the feed gave
    only a day, counted from its first hour; see `bucket_hour`)."""

    kind: str  # "person" or "phone"
    key: bytes
    masked: str
    day: int | None
    county: int | None
    attributes: Mapping[str, str] = field(default_factory=dict)
    hour: int | None = None


def bucket_hour(day: int | None, hour: int | None) -> int | None:
    """The hour an hourly source's row counts from: its own, else its day's 00:00 (a row with
    only a day, or stored before rows had hours), else None (undated)."""
    if hour is not None:
        return hour
    return None if day is None else day * 24


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated feed batch, ready to store."""

    batch_id: str
    source: str
    replace: bool
    actor: Actor
    rows: Sequence[Row]

    def digest(self) -> bytes:
        """Content fingerprint: a replay must carry the same rows to count as the same batch."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.source}\0{int(self.replace)}\0".encode())
        # One update for all rows: the same digest as one per part, at a fraction of the calls.
        parts: list[bytes] = []
        for r in self.rows:
            # Only timed rows add an hour: batches digested before hours existed still match.
            hour = "" if r.hour is None else f"h{r.hour}\0"
            attributes = json.dumps(dict(r.attributes), sort_keys=True) if r.attributes else "{}"
            text = f"\0{r.day}\0{r.county}\0{hour}{attributes}\0"
            parts.append(r.kind.encode() + b"\0" + r.key + text.encode())
        h.update(b"".join(parts))
        return h.digest()


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A stored batch's provenance."""

    batch_id: str
    source: str
    digest: bytes
    replace: bool
    actor_role: str
    actor_principal: str
    received_at: dt.datetime
    row_count: int
    version: int


@dataclass(frozen=True, slots=True)
class IngestResult:
    batch_id: str
    version: int
    row_count: int
    replayed: bool
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One published version: its number and when."""

    version: int
    published_at: dt.datetime
    change: str


@dataclass(frozen=True, slots=True)
class KeyedPerson:
    """One person of a bulk registration, by key, with (key, masked) phones and cards."""

    key: bytes
    masked: str
    phones: Sequence[tuple[bytes, str]] = ()
    cards: Sequence[tuple[bytes, str]] = ()
    # (province, exchange hash): kept with the person for the province exchange (R6).
    exchange_hashes: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class RegisteredPeople:
    """What a bulk registration did, and the version that carries it."""

    version: int
    created: int
    linked: int


@dataclass(frozen=True, slots=True)
class SourceStats:
    row_count: int
    batch_count: int
    last_updated: dt.datetime | None


@dataclass(frozen=True, slots=True)
class PhoneLink:
    key: bytes
    masked: str
    holder: bytes | None


@dataclass(frozen=True, slots=True)
class CardLink:
    key: bytes
    masked: str
    holder: bytes


@dataclass(slots=True)
class SourceRows:
    """The live rows of one source, in acceptance order, for a rebuild."""

    source: str
    keys: bytearray = field(default_factory=bytearray)
    days: list[int | None] = field(default_factory=list)
    counties: list[int] = field(default_factory=list)
    hours: list[int | None] = field(default_factory=list)  # as stored (None: no time given)

    def __len__(self) -> int:
        return len(self.days)


@dataclass(frozen=True, slots=True)
class State:
    """Everything the index is built from, as the database holds it."""

    persons: Sequence[bytes]
    phones: Sequence[PhoneLink]
    cards: Sequence[CardLink]
    county_levels: Mapping[int, int]
    rows: Sequence[SourceRows]
    latest: VersionRecord | None


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """One entry of the override log (a manual colour override set or cleared), as stored.
    `colour` is "green", "yellow" or "red" for a set entry, None for a clear; `valid_until` is
    None for a clear. `prev_hash` and `hash` are 32 bytes (services/risk_index/overrides.py)."""

    seq: int
    at: dt.datetime
    action: str  # "set" or "clear"
    person_key: bytes
    masked_id_number: str
    colour: str | None
    reason: str
    valid_until: dt.datetime | None
    actor_role: str
    actor_principal: str
    index_version: int
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """What verifying the override log's hash chain found: `broken_seq` is the first entry
    that fails (0 when `verified`), `problem` says how."""

    verified: bool
    entry_count: int
    head_hash: bytes
    broken_seq: int = 0
    problem: str = ""


@dataclass(frozen=True, slots=True)
class OverridePage:
    """A page of the override log, newest first, with the whole chain's verification."""

    entries: Sequence[OverrideRecord]
    next_before: int | None  # the seq to continue below; None at the end
    check: ChainCheck
