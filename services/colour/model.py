"""What the colour engine answers with: plain, frozen views, ready for the servicer to convert.

Nothing here computes a colour; `logic`, `engine`, `explanation` and `whatif` build these.
Everything a view holds is safe to show: names, ID numbers and phones are masked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import healthcode_matcher as hm

from services._common.sources import get_source
from services.rules import Rule, RuleSet


@dataclass(frozen=True, slots=True)
class PersonCard:
    """What the declaration service may show of a person: masked name, ID number and phones."""

    masked_name: str
    masked_id_number: str
    phones: Mapping[bytes, str] = field(default_factory=dict)  # phone key -> masked phone


# (person key) -> the person's masked card, from the declaration service. Asked only when a
# rule fired through a phone (R7: which phone) and by Explain (R16); the index holds no text.
PersonDirectory = Callable[[bytes], PersonCard]


def source_title(name: str) -> tuple[str, str]:
    """The catalogue's (zh, en) titles of a source, or the name itself when unknown."""
    source = get_source(name)
    return (name, name) if source is None else (source.title_zh, source.title_en)


@dataclass(frozen=True, slots=True)
class Freshness:
    """How fresh one source's feed is, judged at one moment."""

    source: str
    last_updated: dt.datetime | None  # None: never fed (or not heard of from the risk index)
    max_staleness_hours: int
    stale: bool
    clearing: bool

    @property
    def titles(self) -> tuple[str, str]:
        return source_title(self.source)


@dataclass(frozen=True, slots=True)
class ReasonView:
    """One rule behind a colour, ready to show (R16)."""

    rule_id: str
    text_zh: str
    text_en: str
    source: str
    day: dt.date | None
    masked_phone: str = ""
    county: int = 0
    cleared: bool = False
    cleared_by: str = ""


@dataclass(frozen=True, slots=True)
class RemedyView:
    """What clears one fired rule."""

    rule_id: str
    clearing_sources: tuple[str, ...]
    text_zh: str
    text_en: str


@dataclass(frozen=True, slots=True)
class OverrideView:
    """A manual colour override in force for the person (the support desk's correction after an
    appeal): the colour it gives, and the colour the rules compute underneath."""

    colour: hm.Colour
    computed: hm.Colour
    reason: str
    valid_until: dt.datetime
    set_at: dt.datetime
    actor: str  # masked: "support de***2"
    seq: int  # its entry in the risk index's override log


@dataclass(frozen=True, slots=True)
class Assessment:
    """The colour of one person, why, and on what it was computed."""

    person_key: bytes
    registered: bool
    colour: hm.Colour | None  # None when the person is not in the index
    reasons: tuple[ReasonView, ...]
    remedies: tuple[RemedyView, ...]
    rule_set_version: str
    index_version: int
    day: dt.date
    stale_feeds: tuple[Freshness, ...] = ()
    hour: int | None = None  # the hour number the verdicts were evaluated at (an hour of `day`)
    reasons_shed: bool = False  # reasons and remedies left out under overload
    # A manual override in force: `colour` is its colour; the rules' is `manual.computed`.
    manual: OverrideView | None = None

    @property
    def stale_sources(self) -> tuple[str, ...]:
        return tuple(f.source for f in self.stale_feeds)


@dataclass(frozen=True, slots=True)
class EvidenceView:
    """One row behind a rule (R16): what matched, when, through which phone, where."""

    source: str
    day: dt.date | None
    masked_phone: str = ""
    county: int = 0
    county_level: int = 0  # the county's grading now: 0 none, 1 low, 2 medium, 3 high
    phone_cleared_by: str = ""  # a phone verification took this phone's row out of the rule
    hour: int | None = None  # hourly sources: the hour number of the latest row in the window


@dataclass(frozen=True, slots=True)
class RuleView:
    """One rule that fired or was cleared for a person, with the rows behind it."""

    rule: Rule
    cleared: bool
    evidence: tuple[EvidenceView, ...]
    cleared_by: tuple[EvidenceView, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """The support desk's answer (R16). Everything shown is masked."""

    assessment: Assessment
    masked_name: str
    masked_id_number: str
    masked_phones: tuple[str, ...]
    rules: tuple[RuleView, ...]
    sources: tuple[Freshness, ...]  # every source of the rule set, by name


@dataclass(frozen=True, slots=True)
class RuleChange:
    """How one rule's firing changes among the persons whose colour changes."""

    rule_id: str
    starts: int
    stops: int
    in_active: bool
    in_draft: bool
    differences: tuple[str, ...] = ()


# Persons counted by [from colour][to colour]: 0 green, 1 yellow, 2 red.
Matrix = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]


def changed_in(m: Matrix) -> int:
    """The persons of a matrix whose colour changes."""
    return sum(n for a, row in enumerate(m) for b, n in enumerate(row) if a != b)


@dataclass(frozen=True, slots=True)
class WhatIfOutcome:
    """A draft rule set evaluated beside the active one; nothing activated."""

    active_version: str
    draft: RuleSet
    draft_check_count: int
    index_version: int
    day: dt.date
    person_count: int
    colours: Matrix  # [active colour][draft colour]
    rules: tuple[RuleChange, ...]
    district_source: str  # "" when the index has no usable district source
    districts: tuple[tuple[int, Matrix], ...]  # (county, counts of changed persons), most first
    district_freshness: Freshness | None
    seconds: float

    @property
    def active_counts(self) -> tuple[int, int, int]:
        g, y, r = (sum(row) for row in self.colours)
        return g, y, r

    @property
    def draft_counts(self) -> tuple[int, int, int]:
        g, y, r = (sum(row[c] for row in self.colours) for c in range(3))
        return g, y, r

    @property
    def changed(self) -> int:
        return changed_in(self.colours)

    @property
    def changed_without_district(self) -> int:
        # A person with rows in two districts counts in both; never report a negative.
        placed = sum(changed_in(m) for _, m in self.districts)
        return max(0, self.changed - placed) if self.district_source else self.changed


@dataclass(frozen=True, slots=True)
class RuleSetOutcome:
    """What SetRuleSet did."""

    rule_set: RuleSet
    check_count: int
    counts: tuple[int, int, int]
    previous_counts: tuple[int, int, int]
    activated: bool


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What one replica holds: its rule set, its index version and the colours over it."""

    rule_set_version: str
    rule_ids: tuple[str, ...]
    index_version: int
    index_received_at: dt.datetime | None
    person_count: int
    counts: tuple[int, int, int]
    day: dt.date
    rule_counts: Mapping[str, int]
    stale_sources: tuple[str, ...]  # raising and clearing sources of the active set
    hour: int | None = None  # the hour number the verdicts are for
    deltas_applied: int = 0
    delta_apply_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p50, p99, max (recent)
