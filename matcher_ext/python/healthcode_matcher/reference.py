"""A plain-Python reference evaluator of rule plans, over pyroaring.

It exists for two reasons: the model tests check the Rust matcher against it, and the benchmark
uses it as the baseline. It reads an index only through the public, portable surface (buckets as
portable roaring bytes, county levels, phone links), so it shares no code with the Rust core.

Semantics (the contract the Rust matcher implements). Days are whole days since 1970-01-01,
Asia/Shanghai; hours are whole hours since 1970-01-01 00:00 Asia/Shanghai (``hour // 24`` is the
day). A source is *daily* (buckets keyed by day) or *hourly* (buckets keyed by hour). A plan is
evaluated on day ``T`` at hour ``H``, an hour of ``T`` (by default its last, ``T * 24 + 23``).

* On a daily source, a check ``{"source": S, "days": N}`` covers the buckets whose day lies in
  ``[T-N+1, T]``; ``"hours"`` is refused there.
* On an hourly source, ``{"source": S, "hours": N}`` covers the buckets whose hour lies in
  ``[H-N+1, H]`` (a row exactly N hours old is out); ``{"source": S, "days": N}`` is the same
  with ``N * 24`` hours. Giving both is refused.
* Either way the undated bucket is always covered (always current), and a check without a window
  covers every bucket. ``min_level`` (county sources only) keeps the counties whose current level
  is at least ``L`` (a county with no level is level 0).

* A person-keyed check holds if the person is in the union of its buckets.
* A phone-keyed check holds if some phone linked to the person is in the union and that phone is
  not in the rule's *phone-clear set* (the union of the rule's phone-keyed ``"clears"`` checks).
* ``"match": "any"`` (the default) needs one check to hold, ``"all"`` needs every check.
* The person is *person-cleared* if they are in one of the rule's person-keyed ``"clears"``.
* ``matched_raw`` ignores phone clears, ``matched`` applies them; ``fired = matched and not
  person-cleared``; ``cleared = matched_raw and not fired``.
* The colour is the most severe colour (yellow 1, red 2) of the fired rules, green (0) if none;
  bit ``i`` of ``fired_mask`` / ``cleared_mask`` is rule ``i`` in plan order.

Two forms:

* :meth:`ReferenceEvaluator.evaluate` answers one person: each check's window union is computed
  once when the evaluator is built, so a person costs one membership test per check (one per
  linked phone for phone-keyed checks).
* :meth:`ReferenceEvaluator.evaluate_batch` answers a whole set of persons with bitmap algebra:
  phone-keyed unions are mapped once to the bitmap of their holders, then every rule is a few
  unions, intersections and differences over the batch.

>>> from pyroaring import BitMap
>>> view = MemoryIndexView(person_count=3)
>>> view.add_source("confirmed", "person")
>>> view.add_rows("confirmed", [1], day=100)
>>> rules = [{"id": "r-confirmed", "colour": "red", "checks": [{"source": "confirmed"}]}]
>>> ref = ReferenceEvaluator(view, rules, today=100)
>>> ref.evaluate(1)
ReferenceVerdict(colour=2, fired_mask=1, cleared_mask=0)
>>> ref.evaluate_batch(BitMap([0, 1, 2])).colour_counts()
(2, 0, 1)

An hourly source: a negative test 48 hours old no longer clears "within 48 hours".

>>> view.add_source("nat_negative", "person", hourly=True)
>>> view.add_rows("nat_negative", [1], hour=100 * 24 + 10 - 48)
>>> rules[0]["clears"] = [{"source": "nat_negative", "hours": 48}]
>>> ReferenceEvaluator(view, rules, today=100, hour=100 * 24 + 9).evaluate(1)
ReferenceVerdict(colour=0, fired_mask=0, cleared_mask=1)
>>> ReferenceEvaluator(view, rules, today=100, hour=100 * 24 + 10).evaluate(1)
ReferenceVerdict(colour=2, fired_mask=1, cleared_mask=0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from pyroaring import BitMap

__all__ = [
    "COLOUR_CODES",
    "BatchVerdicts",
    "IndexView",
    "MemoryIndexView",
    "ReferenceEvaluator",
    "ReferenceVerdict",
]

#: Rule colours as they appear in a plan, and their severity codes.
COLOUR_CODES: Mapping[str, int] = {"yellow": 1, "red": 2}


class IndexView(Protocol):
    """What the reference reads from an index. `healthcode_matcher.Index` satisfies it, and so
    does :class:`MemoryIndexView` (a pure-Python model used by the tests).

    `source_bitmap(name, day, None)` on a county source is the union of that day's buckets over
    every county; the reference relies on it when a check has no ``min_level``. On an hourly
    source `source_days` lists hours and `source_bitmap` takes an hour in `day`.
    """

    @property
    def person_count(self) -> int: ...

    def sources(self) -> list[tuple[str, str, bool]]: ...

    def source_days(self, name: str) -> list[int | None]: ...

    def source_is_hourly(self, name: str) -> bool: ...

    def source_counties(self, name: str) -> list[int]: ...

    def source_bitmap(
        self, name: str, day: int | None = None, county: int | None = None
    ) -> bytes: ...

    def county_levels(self) -> dict[int, int]: ...

    def phones_of(self, person_id: int) -> list[int]: ...

    def holder_of_phone(self, phone_id: int) -> int | None: ...


class ReferenceVerdict(NamedTuple):
    """The verdict of one person: colour and rule bit masks (bit i = rule i in plan order)."""

    colour: int
    fired_mask: int
    cleared_mask: int


@dataclass(slots=True)
class _Check:
    """One compiled check: the persons (or phones) its window covers."""

    source: str
    phone_keyed: bool
    members: BitMap  # the window union; for phone checks, minus the rule's phone-clear set
    members_raw: BitMap  # the window union, ignoring phone clears
    # Phone checks in batch form: the persons holding a phone of `members` / `members_raw`.
    holders: BitMap | None = None
    holders_raw: BitMap | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    rule_id: str
    colour: int
    match_all: bool
    checks: tuple[_Check, ...]
    person_clears: tuple[BitMap, ...]


@dataclass(slots=True)
class BatchVerdicts:
    """The verdicts of a batch of persons as sets: one bitmap per rule and per colour."""

    persons: BitMap
    rule_ids: list[str]
    fired: list[BitMap]  # per rule, plan order: persons for whom it fired
    cleared: list[BitMap]  # per rule: persons for whom it matched but was cleared
    red: BitMap
    yellow: BitMap  # yellow and not red

    def colour_counts(self) -> tuple[int, int, int]:
        """(green, yellow, red) over the batch, like `Verdicts.colour_counts`."""
        red, yellow = len(self.red), len(self.yellow)
        return len(self.persons) - red - yellow, yellow, red

    def rule_counts(self) -> dict[str, int]:
        """Persons for whom each rule fired (after clearing), like `Verdicts.rule_counts`."""
        return {rule_id: len(bm) for rule_id, bm in zip(self.rule_ids, self.fired, strict=True)}

    def colour(self, person_id: int) -> int:
        """The colour of one person of the batch."""
        if person_id in self.red:
            return 2
        return 1 if person_id in self.yellow else 0

    def colours(self, persons: Iterable[int]) -> bytes:
        """One colour byte per person, in the order given (like `Verdicts.evaluate_many`)."""
        red, yellow = self.red, self.yellow
        return bytes(2 if p in red else 1 if p in yellow else 0 for p in persons)

    def verdicts(self) -> dict[int, ReferenceVerdict]:
        """Every person's verdict with its masks (slow: for tests, not for the benchmark)."""
        fired_masks: dict[int, int] = {}
        cleared_masks: dict[int, int] = {}
        for bit, (fired, cleared) in enumerate(zip(self.fired, self.cleared, strict=True)):
            for person in fired:
                fired_masks[person] = fired_masks.get(person, 0) | (1 << bit)
            for person in cleared:
                cleared_masks[person] = cleared_masks.get(person, 0) | (1 << bit)
        return {
            person: ReferenceVerdict(
                self.colour(person), fired_masks.get(person, 0), cleared_masks.get(person, 0)
            )
            for person in self.persons
        }


class ReferenceEvaluator:
    """A rule plan (plain data, as given to `healthcode_matcher.Plan`) evaluated over an index
    on day ``today`` at ``hour`` (an hour of ``today``, by default its last), the hour that ends
    the windows of hourly sources.

    Building the evaluator reads every bucket the plan needs and computes each check's window
    union once; :meth:`evaluate` and :meth:`evaluate_batch` then only test membership.
    """

    def __init__(
        self,
        index: IndexView,
        rules: Sequence[Mapping[str, Any]],
        today: int,
        hour: int | None = None,
    ) -> None:
        if hour is None:
            hour = today * 24 + 23
        elif hour // 24 != today:
            raise ValueError(f"hour {hour} is not an hour of day {today}")
        self._index = index
        self.today = today
        self.hour = hour
        self._traits = {name: (keyed, has_county) for name, keyed, has_county in index.sources()}
        self._hourly = {name: index.source_is_hourly(name) for name in self._traits}
        self._levels = index.county_levels()
        self._unions: dict[tuple[str, int | None, int | None], BitMap] = {}
        self.rule_ids: list[str] = []
        self._rules: list[_Rule] = [self._compile(rule) for rule in rules]
        self.has_phone_checks = any(c.phone_keyed for r in self._rules for c in r.checks)

    # -- compiling ---------------------------------------------------------------------------

    def _compile(self, rule: Mapping[str, Any]) -> _Rule:
        rule_id = str(rule["id"])
        colour_name = str(rule.get("colour"))
        if colour_name not in COLOUR_CODES:
            raise ValueError(f"rule {rule_id!r}: colour must be 'yellow' or 'red'")
        match = rule.get("match", "any")
        if match not in ("any", "all"):
            raise ValueError(f"rule {rule_id!r}: match must be 'any' or 'all'")
        person_clears: list[BitMap] = []
        phone_clears: list[BitMap] = []
        for check in rule.get("clears", []):
            union, phone_keyed = self._check_union(rule_id, check)
            (phone_clears if phone_keyed else person_clears).append(union)
        phone_clear_set = _union(phone_clears)
        checks: list[_Check] = []
        for check in rule["checks"]:
            union, phone_keyed = self._check_union(rule_id, check)
            members = union - phone_clear_set if phone_keyed and phone_clear_set else union
            checks.append(_Check(str(check["source"]), phone_keyed, members, union))
        if not checks:
            raise ValueError(f"rule {rule_id!r}: at least one check is needed")
        self.rule_ids.append(rule_id)
        return _Rule(
            rule_id, COLOUR_CODES[colour_name], match == "all", tuple(checks), tuple(person_clears)
        )

    def _check_union(self, rule_id: str, check: Mapping[str, Any]) -> tuple[BitMap, bool]:
        source = str(check["source"])
        if source not in self._traits:
            raise ValueError(f"rule {rule_id!r}: unknown source {source!r}")
        keyed, has_county = self._traits[source]
        days = check.get("days")
        hours = check.get("hours")
        min_level = check.get("min_level")
        if min_level is not None and not has_county:
            raise ValueError(f"rule {rule_id!r}: min_level on {source!r}, not a county source")
        if hours is not None and not self._hourly[source]:
            raise ValueError(f"rule {rule_id!r}: hours on {source!r}, not an hourly source")
        if hours is not None and days is not None:
            raise ValueError(f"rule {rule_id!r}: give days or hours on {source!r}, not both")
        return self.window_union(source, days, min_level, hours=hours), keyed == "phone"

    def window_span(self, source: str, days: int | None, hours: int | None = None) -> int | None:
        """The window of a check in the unit of the source's buckets (days on a daily source,
        hours on an hourly one); None: no window, every bucket."""
        if self._hourly[source]:
            return hours if days is None else days * 24
        return days

    def window_end(self, source: str) -> int:
        """The newest bucket a window reaches: today, or the evaluation hour (hourly)."""
        return self.hour if self._hourly[source] else self.today

    def window_union(
        self,
        source: str,
        days: int | None,
        min_level: int | None,
        *,
        hours: int | None = None,
    ) -> BitMap:
        """The members of `source` over the window of `days` (or `hours`, hourly sources only)
        ending now (every bucket if neither) plus the undated bucket, restricted to counties of
        level >= `min_level`."""
        span = self.window_span(source, days, hours)
        key = (source, span, min_level)
        cached = self._unions.get(key)
        if cached is not None:
            return cached
        _, has_county = self._traits[source]
        end = self.window_end(source)
        lowest = None if span is None else end - span + 1

        def in_window(bucket: int | None) -> bool:
            return bucket is None or lowest is None or lowest <= bucket <= end

        source_days = [day for day in self._index.source_days(source) if in_window(day)]
        parts: list[BitMap] = []
        if has_county and min_level:
            for county in self._index.source_counties(source):
                if self._levels.get(county, 0) >= min_level:
                    parts.extend(self._bucket(source, day, county) for day in source_days)
        else:
            # Every county counts: a day's bucket with county=None is the union over counties.
            parts.extend(self._bucket(source, day, None) for day in source_days)
        union = _union(parts)
        self._unions[key] = union
        return union

    def _bucket(self, source: str, bucket: int | None, county: int | None) -> BitMap:
        return BitMap.deserialize(self._index.source_bitmap(source, bucket, county))

    def _holders_of(self, phones: BitMap) -> BitMap:
        """Persons holding at least one phone of `phones`."""
        holder_of_phone = self._index.holder_of_phone
        holders = BitMap()
        for phone in phones:
            holder = holder_of_phone(phone)
            if holder is not None:
                holders.add(holder)
        return holders

    # -- one person ----------------------------------------------------------------------------

    def evaluate(self, person_id: int, phones: Iterable[int] | None = None) -> ReferenceVerdict:
        """The verdict of one person. `phones` overrides the index's links (tests)."""
        if phones is None:
            linked = self._index.phones_of(person_id) if self.has_phone_checks else []
        else:
            linked = list(phones)
        colour = fired_mask = cleared_mask = 0
        # The hot loop of the baseline: plain membership tests, stopping as soon as a rule's
        # outcome is known (any: a check holds; all: a check fails even ignoring phone clears).
        for bit, rule in enumerate(self._rules):
            match_all = rule.match_all
            matched_raw = matched = match_all
            for check in rule.checks:
                if check.phone_keyed:
                    hit_raw = hit = False
                    for phone in linked:
                        if phone in check.members_raw:
                            hit_raw = True
                            if phone in check.members:
                                hit = True
                                break
                else:
                    hit_raw = hit = person_id in check.members
                if match_all:
                    if not hit_raw:
                        matched_raw = matched = False
                        break
                    matched = matched and hit
                elif hit:
                    matched_raw = matched = True
                    break
                elif hit_raw:
                    matched_raw = True
            if not matched_raw:
                continue
            fired = matched
            if fired:
                for clear in rule.person_clears:
                    if person_id in clear:
                        fired = False
                        break
            if fired:
                fired_mask |= 1 << bit
                colour = max(colour, rule.colour)
            else:
                cleared_mask |= 1 << bit
        return ReferenceVerdict(colour, fired_mask, cleared_mask)

    def colour(self, person_id: int) -> int:
        """Only the colour of one person."""
        return self.evaluate(person_id).colour

    # -- a batch -------------------------------------------------------------------------------

    def prepare_batch(self) -> None:
        """Map every phone-keyed union to the persons holding its phones, once (otherwise the
        first batch does it). This is the only per-phone work of the batch form."""
        # Rules often share a union (the cache makes their bitmaps the same object): map once.
        # Keyed by id(): every bitmap here stays alive in its check for the evaluator's life.
        done: dict[int, BitMap] = {}
        for rule in self._rules:
            for check in rule.checks:
                if check.phone_keyed and check.holders is None:
                    for phones in (check.members_raw, check.members):
                        if id(phones) not in done:
                            done[id(phones)] = self._holders_of(phones)
                    check.holders_raw = done[id(check.members_raw)]
                    check.holders = done[id(check.members)]

    def evaluate_batch(self, persons: BitMap) -> BatchVerdicts:
        """The verdicts of every person in `persons`, as bitmaps per rule and per colour."""
        self.prepare_batch()
        fired_per_rule: list[BitMap] = []
        cleared_per_rule: list[BitMap] = []
        red_parts: list[BitMap] = []
        yellow_parts: list[BitMap] = []
        for rule in self._rules:
            hits: list[BitMap] = []
            hits_raw: list[BitMap] = []
            for check in rule.checks:
                if check.holders is not None and check.holders_raw is not None:
                    hits.append(check.holders)
                    hits_raw.append(check.holders_raw)
                else:
                    hits.append(check.members)
                    hits_raw.append(check.members)
            if rule.match_all:
                matched = BitMap.intersection(persons, *hits)
                matched_raw = BitMap.intersection(persons, *hits_raw)
            else:
                matched = persons & _union(hits)
                matched_raw = persons & _union(hits_raw)
            fired = matched - _union(list(rule.person_clears)) if rule.person_clears else matched
            fired_per_rule.append(fired)
            cleared_per_rule.append(matched_raw - fired)
            (red_parts if rule.colour == 2 else yellow_parts).append(fired)
        red = _union(red_parts)
        yellow = _union(yellow_parts) - red
        return BatchVerdicts(
            persons, list(self.rule_ids), fired_per_rule, cleared_per_rule, red, yellow
        )


def _union(bitmaps: Sequence[BitMap]) -> BitMap:
    if not bitmaps:
        return BitMap()
    if len(bitmaps) == 1:
        return bitmaps[0]
    return BitMap.union(*bitmaps)


@dataclass
class MemoryIndexView:
    """A pure-Python index (persons 0..person_count-1, phones, buckets, county levels) that
    satisfies :class:`IndexView`: the tests build a scenario here and in the Rust index and check
    that both give the same verdicts."""

    person_count: int
    _traits: dict[str, tuple[str, bool]] = field(default_factory=dict)
    _hourly: set[str] = field(default_factory=set)
    _buckets: dict[str, dict[tuple[int | None, int | None], BitMap]] = field(default_factory=dict)
    _levels: dict[int, int] = field(default_factory=dict)
    _holder: dict[int, int] = field(default_factory=dict)
    _phones: dict[int, set[int]] = field(default_factory=dict)  # holder -> their phones

    def add_source(
        self, name: str, keyed_by: str, has_county: bool = False, hourly: bool = False
    ) -> None:
        """Declare a source keyed by "person" or "phone", bucketed by day or by hour."""
        if keyed_by not in ("person", "phone"):
            raise ValueError(f"keyed_by must be 'person' or 'phone', not {keyed_by!r}")
        self._traits[name] = (keyed_by, has_county)
        if hourly:
            self._hourly.add(name)
        else:
            self._hourly.discard(name)
        self._buckets.setdefault(name, {})

    def add_rows(
        self,
        name: str,
        ids: Iterable[int],
        day: int | None = None,
        counties: Iterable[int] | None = None,
        hour: int | None = None,
    ) -> None:
        """Add dense ids on `day` of a daily source or at `hour` of an hourly one (neither:
        undated); a county source needs one county per id."""
        _, has_county = self._traits[name]
        hourly = name in self._hourly
        if hourly and day is not None:
            raise ValueError(f"source {name!r} is hourly: give an hour, not a day")
        if not hourly and hour is not None:
            raise ValueError(f"source {name!r} is daily: give a day, not an hour")
        bucket = hour if hourly else day
        buckets = self._buckets[name]
        if has_county:
            if counties is None:
                raise ValueError(f"source {name!r} needs counties")
            for member, county in zip(ids, counties, strict=True):
                buckets.setdefault((county, bucket), BitMap()).add(member)
        else:
            buckets.setdefault((None, bucket), BitMap()).update(ids)

    def remove_rows(self, name: str, ids: Iterable[int]) -> None:
        """Remove dense ids from every bucket of a source."""
        gone = BitMap(ids)
        for bucket in self._buckets[name].values():
            bucket.difference_update(gone)

    def clear_source(self, name: str) -> None:
        """Drop every row of a source (it stays defined)."""
        self._buckets[name].clear()

    def link_phone(self, phone_id: int, holder: int | None) -> None:
        """Link a phone to its holder (one holder; None unlinks it)."""
        old = self._holder.pop(phone_id, None)
        if old is not None:
            self._phones[old].discard(phone_id)
        if holder is not None:
            self._holder[phone_id] = holder
            self._phones.setdefault(holder, set()).add(phone_id)

    def set_county_level(self, county: int, level: int) -> None:
        """Set a county's current risk level (0 none .. 3 high)."""
        self._levels[county] = level

    def sources(self) -> list[tuple[str, str, bool]]:
        return [(name, keyed, has_county) for name, (keyed, has_county) in self._traits.items()]

    def source_days(self, name: str) -> list[int | None]:
        """Bucket times holding rows: days, or hours on an hourly source (None: undated)."""
        days = {day for (_, day), bm in self._buckets[name].items() if bm}
        return sorted(days, key=lambda d: (d is not None, d or 0))

    def source_is_hourly(self, name: str) -> bool:
        if name not in self._traits:
            raise KeyError(f"unknown source {name!r}")
        return name in self._hourly

    def source_counties(self, name: str) -> list[int]:
        return sorted({c for (c, _), bm in self._buckets[name].items() if c is not None and bm})

    def source_bitmap(self, name: str, day: int | None = None, county: int | None = None) -> bytes:
        """One day's bucket (an hour's on an hourly source); for a county source one county's,
        or with county=None the union over counties (as the Rust index does)."""
        _, has_county = self._traits[name]
        if has_county and county is None:
            parts = [bm for (_, d), bm in self._buckets[name].items() if d == day]
            return _union(parts).serialize()
        return self._buckets[name].get((county, day), BitMap()).serialize()

    def county_levels(self) -> dict[int, int]:
        return dict(self._levels)

    def phones_of(self, person_id: int) -> list[int]:
        return sorted(self._phones.get(person_id, ()))

    def holder_of_phone(self, phone_id: int) -> int | None:
        return self._holder.get(phone_id)
