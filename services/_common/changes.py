"""Index changes as data: what one accepted write does to the matcher index.

The risk index stages one change per accepted write and builds the next version by applying
them, in order, to a builder of the current one. The same changes travel on WatchIndex as the
version's delta, so a replica builds that version from the one it holds in time that grows
with the delta, and knows whom it can touch (`touched_persons`), instead of loading a snapshot
of the whole population. Keys only: no raw identifier is ever in a change.
"""

from __future__ import annotations

import datetime as dt
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import healthcode_matcher as hm
from healthcode.v1 import risk_index_pb2

from services._common.sources import SOURCES

KEY = 16
# What the matcher's batch look-ups give for a key it does not hold.
UNKNOWN = 2**32 - 1


def _keys(data: bytes) -> list[bytes]:
    return [data[i : i + KEY] for i in range(0, len(data), KEY)]


@dataclass(frozen=True, slots=True)
class Persons:
    """People registered (16-byte keys, concatenated)."""

    keys: bytes

    def apply(self, builder: hm.IndexBuilder) -> None:
        for key in _keys(self.keys):
            builder.add_person_key(key)


@dataclass(frozen=True, slots=True)
class Phones:
    """Phones linked to holders; `holders[i]` holds `phones[i]` (keys, concatenated)."""

    phones: bytes
    holders: bytes

    def apply(self, builder: hm.IndexBuilder) -> None:
        for phone, holder in zip(_keys(self.phones), _keys(self.holders), strict=True):
            builder.add_phone_key(phone, builder.add_person_key(holder))


@dataclass(frozen=True, slots=True)
class Unlink:
    """Phones unlinked from their holders (keys, concatenated)."""

    phones: bytes

    def apply(self, builder: hm.IndexBuilder) -> None:
        for phone in _keys(self.phones):
            builder.unlink_phone_key(phone)


@dataclass(frozen=True, slots=True)
class Cards:
    """Transit cards linked to holders; `holders[i]` holds `cards[i]` (keys, concatenated)."""

    cards: bytes
    holders: bytes

    def apply(self, builder: hm.IndexBuilder) -> None:
        for card, holder in zip(_keys(self.cards), _keys(self.holders), strict=True):
            builder.add_card_key(card, builder.add_person_key(holder))


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows of one source: keys (concatenated), and per row its day, or for an hourly source
    its hour (None: undated), and its county (None for a source without counties)."""

    source: str
    keys: bytes
    times: Sequence[int | None]
    counties: Sequence[int] | None = None
    replace: bool = False

    def apply(self, builder: hm.IndexBuilder) -> None:
        if self.replace:
            builder.clear_source(self.source)
        if not self.times:
            return
        counties = None if self.counties is None else list(self.counties)
        if SOURCES[self.source].hourly:
            builder.add_rows_by_key(
                self.source, self.keys, hours=list(self.times), counties=counties
            )
        else:
            builder.add_rows_by_key(self.source, self.keys, list(self.times), counties)


@dataclass(frozen=True, slots=True)
class CountyLevel:
    """A county graded: 1 low, 2 medium, 3 high."""

    county: int
    level: int

    def apply(self, builder: hm.IndexBuilder) -> None:
        builder.set_county_level(self.county, self.level)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A rule set published for every replica: it travels with the index so that every replica
    runs the same rules from the same version. It changes no index entry."""

    text: str
    filename: str

    def apply(self, builder: hm.IndexBuilder) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Override:
    """A manual colour override set (or replaced) or cleared by the support desk (an entry of
    the risk index's override log): every replica answers `colour` for the person while the
    time of the answer is before `valid_until`. It changes no index entry. `colour` is the
    matcher's (0 green, 1 yellow, 2 red), None for a clear; `actor` is masked ("support
    de***2"); `seq` is the log entry's number."""

    person_key: bytes
    colour: int | None
    reason: str
    valid_until: dt.datetime | None
    at: dt.datetime
    actor: str
    seq: int

    @property
    def is_clear(self) -> bool:
        return self.colour is None

    def active_at(self, when: dt.datetime) -> bool:
        """In force at `when` (aware): a set override before its end."""
        return self.valid_until is not None and when < self.valid_until

    def apply(self, builder: hm.IndexBuilder) -> None:
        pass


Change = Persons | Phones | Unlink | Cards | Rows | CountyLevel | RuleSet | Override


def approx_bytes(change: Change) -> int:
    """About what the change costs on WatchIndex, and at least what its data holds in memory:
    its keys, plus 8 bytes a row's time or county (a varint on the wire is shorter)."""
    match change:
        case Persons(keys=keys) | Unlink(phones=keys):
            return len(keys)
        case Phones(phones=a, holders=b) | Cards(cards=a, holders=b):
            return len(a) + len(b)
        case Rows(keys=keys, times=times, counties=counties):
            return len(keys) + 8 * len(times) + 8 * len(counties or ())
        case RuleSet(text=text):
            return len(text)
        case Override(reason=reason):
            return 64 + len(reason)
        case _:
            return 16


def apply_all(builder: hm.IndexBuilder, changes: Iterable[Change]) -> None:
    for change in changes:
        change.apply(builder)


def touched_persons(before: hm.Index, after: hm.Index, changes: Iterable[Change]) -> bytes | None:
    """The person ids of `after` whose verdict the changes can alter, as little-endian u32s
    (what `Verdicts.update` takes), or None when a source was replaced whole (anyone may have
    left it: re-evaluate everyone). People new in `after` are always included; holders are
    looked up in both indexes, since a phone that moved can change its old holder's colour as
    well as its new one's; a re-graded county touches everyone with a row there."""
    out: set[int] = set(range(before.person_count, after.person_count))

    def ids(raw: bytes) -> list[int]:
        found = array("I")
        found.frombytes(raw)
        if sys.byteorder != "little":
            found.byteswap()
        return [i for i in found if i != UNKNOWN]

    def holders(phone_keys: bytes) -> None:
        for index in (before, after):
            phones = array("I", ids(index.phone_ids_by_keys(phone_keys))).tobytes()
            out.update(ids(index.holders_of_phones(phones)))

    for change in changes:
        if isinstance(change, Persons | Cards | RuleSet | Override):
            # New people are counted above; cards carry no rows; a rule set is the engine's
            # to apply (it re-evaluates everyone itself); an override replaces a colour at
            # answer time and changes no verdict.
            continue
        if isinstance(change, Rows) and change.replace:
            return None
        if isinstance(change, CountyLevel):
            out.update(ids(after.persons_with_rows_in_counties([change.county])))
        elif isinstance(change, Phones | Unlink):
            holders(change.phones)
        elif SOURCES[change.source].keyed_by == "phone":
            holders(change.keys)
        else:
            out.update(ids(after.person_ids_by_keys(change.keys)))
    packed = array("I", sorted(out))
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


# -- the wire ----------------------------------------------------------------------------------


def registrations(changes: Iterable[Change]) -> set[bytes]:
    """The keys of the people whose registration a change names: registered, or linked to a
    phone (a display forgets their cached masked record)."""
    keys: set[bytes] = set()
    for change in changes:
        if isinstance(change, Persons):
            keys.update(_keys(change.keys))
        elif isinstance(change, Phones):
            keys.update(_keys(change.holders))
    return keys


def to_proto(from_version: int, changes: Iterable[Change]) -> risk_index_pb2.IndexDelta:
    delta = risk_index_pb2.IndexDelta(from_version=from_version)
    for c in changes:
        entry = delta.changes.add()
        if isinstance(c, Persons):
            entry.persons.person_keys = c.keys
        elif isinstance(c, Phones):
            entry.phones.phone_keys, entry.phones.holder_keys = c.phones, c.holders
        elif isinstance(c, Unlink):
            entry.unlink.phone_keys = c.phones
        elif isinstance(c, Cards):
            entry.cards.card_keys, entry.cards.holder_keys = c.cards, c.holders
        elif isinstance(c, Rows):
            entry.rows.source, entry.rows.keys, entry.rows.replace = c.source, c.keys, c.replace
            entry.rows.times.extend(-1 if t is None else t for t in c.times)
            if c.counties is not None:
                entry.rows.counties.extend(c.counties)
        elif isinstance(c, RuleSet):
            entry.rule_set.text, entry.rule_set.filename = c.text, c.filename
        elif isinstance(c, Override):
            entry.colour_override.CopyFrom(override_to_proto(c))
        else:
            entry.county.county, entry.county.level = c.county, c.level
    return delta


def from_proto(delta: risk_index_pb2.IndexDelta) -> list[Change]:
    """The changes of a delta, checked for shape (ValueError names what is wrong)."""
    out: list[Change] = []
    for i, entry in enumerate(delta.changes):
        which = entry.WhichOneof("change")
        if which == "persons":
            out.append(Persons(_aligned(entry.persons.person_keys, i)))
        elif which == "phones":
            out.append(Phones(*_pairs(entry.phones.phone_keys, entry.phones.holder_keys, i)))
        elif which == "unlink":
            out.append(Unlink(_aligned(entry.unlink.phone_keys, i)))
        elif which == "cards":
            out.append(Cards(*_pairs(entry.cards.card_keys, entry.cards.holder_keys, i)))
        elif which == "rows":
            r = entry.rows
            if r.source not in SOURCES:
                raise ValueError(f"change {i}: unknown source {r.source!r}")
            keys = _aligned(r.keys, i)
            if len(keys) // KEY != len(r.times) or (r.counties and len(r.counties) != len(r.times)):
                raise ValueError(f"change {i}: keys, times and counties differ in length")
            times = [None if t < 0 else int(t) for t in r.times]
            counties = list(r.counties) if SOURCES[r.source].has_county else None
            out.append(Rows(r.source, keys, times, counties, r.replace))
        elif which == "county":
            out.append(CountyLevel(entry.county.county, entry.county.level))
        elif which == "rule_set":
            out.append(RuleSet(entry.rule_set.text, entry.rule_set.filename))
        elif which == "colour_override":
            out.append(override_from_proto(entry.colour_override, f"change {i}"))
        else:
            raise ValueError(f"change {i}: empty")
    return out


def override_to_proto(c: Override) -> risk_index_pb2.OverrideChange:
    out = risk_index_pb2.OverrideChange(
        person_key=c.person_key,
        action=(
            risk_index_pb2.OVERRIDE_ACTION_CLEAR
            if c.colour is None
            else risk_index_pb2.OVERRIDE_ACTION_SET
        ),
        reason=c.reason,
        actor=c.actor,
        seq=c.seq,
    )
    if c.colour is not None:
        out.colour = c.colour + 1  # type: ignore[assignment]  # proto Colour: 1 green ... 3 red
    if c.valid_until is not None:
        out.valid_until.FromDatetime(c.valid_until.astimezone(dt.UTC))
    out.at.FromDatetime(c.at.astimezone(dt.UTC))
    return out


def override_from_proto(msg: risk_index_pb2.OverrideChange, where: str) -> Override:
    """An override change, checked for shape (ValueError names what is wrong)."""
    key = _aligned(msg.person_key, 0) if len(msg.person_key) == KEY else b""
    if not key:
        raise ValueError(f"{where}: an override names one {KEY}-byte person key")
    try:
        at = msg.at.ToDatetime(dt.UTC)
        until = msg.valid_until.ToDatetime(dt.UTC) if msg.HasField("valid_until") else None
    except (ValueError, OverflowError):
        raise ValueError(f"{where}: an override's time is out of range") from None
    if msg.action == risk_index_pb2.OVERRIDE_ACTION_CLEAR:
        return Override(key, None, msg.reason, None, at, msg.actor, msg.seq)
    if msg.action != risk_index_pb2.OVERRIDE_ACTION_SET or not 1 <= msg.colour <= 3:
        raise ValueError(f"{where}: an override sets GREEN, YELLOW or RED, or clears")
    if until is None:
        raise ValueError(f"{where}: a set override has a valid_until")
    return Override(key, int(msg.colour) - 1, msg.reason, until, at, msg.actor, msg.seq)


def _aligned(keys: bytes, i: int) -> bytes:
    if len(keys) % KEY:
        raise ValueError(f"change {i}: keys are {KEY} bytes each")
    return bytes(keys)


def _pairs(a: bytes, b: bytes, i: int) -> tuple[bytes, bytes]:
    if len(a) != len(b):
        raise ValueError(f"change {i}: every key needs its holder")
    return _aligned(a, i), _aligned(b, i)
