"""Colour assignment (赋码, R5, R6, R16): the live matcher and the active rule set of one replica.

The engine holds two `healthcode_matcher.Matcher`s: one over the whole rule set (the local
colour) and one over the rules shared with other provinces (R6: what a neighbouring province may
see, so a city-only red never turns a traveller's code red elsewhere). Anything that changes a
verdict - a new index version, a new rule set, a new Asia/Shanghai hour (windows of hourly
sources, "a negative test within 48 hours", end with the current hour; daily windows with the
current day) - builds new `Verdicts` aside, off the request path, and swaps them in atomically: a
reader sees the old or the new verdicts, never a mix, and never waits.

A reader takes `matcher.current` once and answers everything from that one `Verdicts` (its
index, plan, day and hour), so the colour, the reasons and the versions it reports always agree.

Freshness (issue 4, part 8): the follower tells the engine when each feed was last updated;
staleness is judged at answer time against the catalogue's `max_staleness_hours`, so a feed that
stalls turns stale by the clock even if no new index version ever arrives. A verdict depends on
every risk-raising source of the plan it was evaluated with (any of them could add risk: a green
that rests on a stalled feed is flagged) and on the clearing sources of the rules that fired (a
stalled lab feed can hold a person yellow). Until the risk index has told the replica anything,
every source counts as stale: not knowing is not fresh.

No grpc here: the servicer turns protos into these calls and the follower feeds index versions.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import healthcode_matcher as hm

from services._common.days import hour_number
from services._common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services._common.sources import SOURCES, get_source
from services.rules import Check, Rule, RuleSet, RuleSetError, parse_rule_set

log = logging.getLogger(__name__)

_EPOCH = dt.date(1970, 1, 1)

# (person key) -> {phone key: masked phone} for that person's linked phones. Only asked when a
# rule fired through a phone, to say which phone (R7); the index itself holds no masked text.
PhoneMasks = Callable[[bytes], Mapping[bytes, str]]

# The what-if districts come from this attribute source unless the request names another.
DEFAULT_DISTRICT_SOURCE = "residence"


@dataclass(frozen=True, slots=True)
class PersonCard:
    """What the declaration service may show of a person: masked name, ID number and phones."""

    masked_name: str
    masked_id_number: str
    phones: Mapping[bytes, str] = field(default_factory=dict)  # phone key -> masked phone


# (person key) -> the person's masked card, from the declaration service (Explain, R16).
PersonDirectory = Callable[[bytes], PersonCard]


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


def day_to_date(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=day)


def evidence_day(ev: hm.Evidence) -> dt.date | None:
    """The date of a row behind a rule: its day, or for an hourly source its hour's date."""
    if ev.hour is not None:
        return day_to_date(ev.hour // 24)
    return None if ev.day is None else day_to_date(ev.day)


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """A rule set with its two compiled plans (all rules, shared rules only)."""

    rule_set: RuleSet
    plan: hm.Plan
    shared: RuleSet
    shared_plan: hm.Plan
    text: str


def compile_rules(rule_set: RuleSet, text: str = "") -> CompiledRules:
    """Compile both plans; InvalidArgument if the matcher refuses one (it names the rule)."""
    shared = rule_set.shared_only()
    try:
        plan = hm.Plan(rule_set.plan_rules(), rule_set.version)
        shared_plan = hm.Plan(shared.plan_rules(), shared.version)
    except hm.PlanError as exc:
        raise InvalidArgument([("text", str(exc))]) from None
    return CompiledRules(rule_set, plan, shared, shared_plan, text)


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


Matrix = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class WhatIfOutcome:
    """A draft rule set evaluated beside the active one; nothing activated."""

    active_version: str
    draft: RuleSet
    draft_check_count: int
    index_version: int
    day: dt.date
    person_count: int
    colours: Matrix  # [active colour][draft colour], 0 green 1 yellow 2 red
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
        return sum(n for a, row in enumerate(self.colours) for b, n in enumerate(row) if a != b)

    @property
    def changed_without_district(self) -> int:
        # A person with rows in two districts counts in both; never report a negative.
        placed = sum(changed_in(m) for _, m in self.districts)
        return max(0, self.changed - placed) if self.district_source else self.changed


def changed_in(m: Matrix) -> int:
    return sum(n for a, row in enumerate(m) for b, n in enumerate(row) if a != b)


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


def _now() -> dt.datetime:
    return dt.datetime.now(hm.SHANGHAI)


class ColourEngine:
    """One replica's verdicts. Thread-safe: readers never lock; writers serialise."""

    def __init__(
        self,
        secret: bytes,
        rules: CompiledRules,
        *,
        now: Callable[[], dt.datetime] = _now,
        phone_masks: PhoneMasks | None = None,
        people: PersonDirectory | None = None,
        rule_set_file: Path | None = None,
    ) -> None:
        self._secret = secret
        self._now = now
        self._people = people
        if phone_masks is None and people is not None:
            directory = people

            def phone_masks(key: bytes) -> Mapping[bytes, str]:
                return directory(key).phones

        self._phone_masks = phone_masks
        self._rule_set_file = rule_set_file
        self._write_lock = threading.Lock()
        self._rules = rules
        self._pending: CompiledRules | None = None
        # Rule sets by plan version, so a reader finds the texts of the plan it evaluated with,
        # even if a new rule set was activated a microsecond later. Versions name one text each.
        self._by_version: dict[str, RuleSet] = {}
        self._remember(rules)
        self._index_received_at: dt.datetime | None = None
        # Source -> when its latest batch was accepted (None: never). None until the risk index
        # has answered once: then every source counts as stale.
        self._feed_times: Mapping[str, dt.datetime | None] | None = None
        # Freshness of the whole catalogue, recomputed at most once a second or on new feed
        # times: Evaluate is the display hot path. Keyed by (second, feed-times generation).
        self._feed_generation = 0
        self._fresh_cache: tuple[tuple[int, int], Mapping[str, Freshness]] | None = None
        # Raising sources by rule-set version (every verdict depends on them).
        self._raising: dict[str, frozenset[str]] = {}
        # A what-if evaluates the whole population once more: one at a time per replica.
        self._what_if_lock = threading.Lock()
        # None until the first index version arrives: a plan can only be evaluated over an
        # index that defines its sources, and "no data" must never be answered as green.
        self._matcher: hm.Matcher | None = None
        self._shared_matcher: hm.Matcher | None = None
        # The risk index numbers its versions (durably, across its restarts); the Index object
        # carries its own build counter, which need not agree. Replies quote the risk index's
        # number, looked up by the build counter of the verdicts a reader holds: the new one and
        # the one before (for readers still on it) are kept.
        self._published: dict[int, int] = {}

    # -- what changes verdicts --------------------------------------------------------------

    @property
    def has_index(self) -> bool:
        return self._matcher is not None

    @property
    def index_version(self) -> int:
        """The risk index's number of the version held (0: none yet)."""
        return 0 if self._matcher is None else self._published_version(self._matcher.current)

    def _published_version(self, verdicts: hm.Verdicts) -> int:
        built = verdicts.index.version
        return self._published.get(built, built)

    @property
    def rules(self) -> CompiledRules:
        return self._rules

    def install_index(self, index: hm.Index, version: int | None = None) -> bool:
        """Build verdicts for a new index version aside, then swap them in. `version` is the
        risk index's number for it (default: the index's own). False if it is the version
        already held (a reconnect that resent it). An index the active rules cannot run on (a
        source they check is not defined) raises InvalidOperation and changes nothing."""
        published = index.version if version is None else version
        with self._write_lock:
            if self._matcher is not None:
                current = self._matcher.current
                held = self._published_version(current)
                if published == held:
                    return False
                if published < held:
                    # The risk index is the source of truth: a lower version means it was
                    # restored or rebuilt, and following it is right. Say so: it is unusual.
                    log.warning("index version went back from %d to %d", held, published)
                previous = {current.index.version: held}
            else:
                previous = {}
            self._published = {**previous, index.version: published}
            try:
                self._swap(index, self._rules, self._now())
            except BaseException:
                self._published = previous
                raise
            self._index_received_at = self._now()
        log.info(
            "index version %d installed (%d persons, %d phones)",
            published,
            index.person_count,
            index.phone_count,
        )
        return True

    def set_feed_times(self, last_updated: Mapping[str, dt.datetime | None]) -> None:
        """When each source's latest batch was accepted (from RiskIndexService.ListSources). A
        source missing from the mapping counts as never fed."""
        self._feed_times = dict(last_updated)
        self._feed_generation += 1

    def freshness(self, names: Iterable[str] | None = None) -> tuple[Freshness, ...]:
        """The freshness of the named sources (default: the whole catalogue), by name, now."""
        catalogue = self._catalogue_freshness()
        wanted = catalogue if names is None else set(names)
        return tuple(catalogue[n] for n in sorted(wanted) if n in catalogue)

    def _catalogue_freshness(self) -> Mapping[str, Freshness]:
        now = self._now()
        key = (int(now.timestamp()), self._feed_generation)
        cached = self._fresh_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        times = self._feed_times
        out: dict[str, Freshness] = {}
        for name, source in SOURCES.items():
            last = None if times is None else times.get(name)
            limit = dt.timedelta(hours=source.max_staleness_hours)
            stale = last is None or now - last > limit
            out[name] = Freshness(name, last, source.max_staleness_hours, stale, source.clearing)
        self._fresh_cache = (key, out)  # one tuple: readers see the old or the new pair
        return out

    def _stale_feeds(self, names: Iterable[str]) -> tuple[Freshness, ...]:
        return tuple(f for f in self.freshness(names) if f.stale)

    def _depends_on(self, rule_set: RuleSet, fired: Sequence[str]) -> frozenset[str]:
        raising = self._raising.get(rule_set.version)
        if raising is None:
            raising = self._raising[rule_set.version] = depends_on(rule_set, ())
        if not fired:
            return raising
        return raising | depends_on(rule_set, fired)

    def tick(self) -> bool:
        """Rebuild the verdicts when the Asia/Shanghai hour changed (windows of hourly sources
        end with the current hour, daily ones with the current day), and activate a pending
        rule set whose time has come. True if anything was swapped."""
        now = self._now()
        with self._write_lock:
            swapped = False
            pending = self._pending
            if pending is not None and pending.rule_set.is_active(now):
                self._pending = None
                self._rules = pending
                swapped = True
                log.info("rule set %s now valid: activated", pending.rule_set.version)
            if self._matcher is None:
                return swapped
            current = self._matcher.current
            if swapped or hour_number(now) != current.hour:
                self._swap(current.index, self._rules, now)
                return True
        return swapped

    def set_rule_set(self, text: str, filename: str, *, dry_run: bool) -> RuleSetOutcome:
        """Validate, compile and (unless `dry_run`) activate a rule set. On any problem raise
        InvalidArgument with every violation, and keep the active rule set."""
        rule_set = _parse(text, filename)
        compiled = compile_rules(rule_set, text)
        with self._write_lock:
            known = self._by_version.get(rule_set.version)
            if known is not None and not _same_rules(known, rule_set):
                raise InvalidArgument(
                    [
                        (
                            "text: version",
                            (
                                f"version {rule_set.version!r} already names a different "
                                "rule set; give the changed rule set a new version"
                            ),
                        )
                    ]
                )
            draft: hm.Verdicts | None = None
            counts = previous = (0, 0, 0)
            if self._matcher is not None:
                current = self._matcher.current
                # Evaluating the draft over the whole population answers "how many people
                # does this change turn yellow" before it goes live.
                try:
                    draft = hm.Verdicts(current.index, compiled.plan, current.today, current.hour)
                except (hm.InvalidOperation, hm.PlanError) as exc:
                    raise InvalidArgument([("text", str(exc))]) from None
                counts, previous = draft.colour_counts(), current.colour_counts()
            outcome = RuleSetOutcome(rule_set, compiled.plan.check_count, counts, previous, False)
            if dry_run:
                return outcome
            self._persist(text)
            if not rule_set.is_active(self._now()):
                self._pending = compiled
                log.info(
                    "rule set %s accepted, valid from %s", rule_set.version, rule_set.valid_from
                )
                return outcome
            self._pending = None
            self._rules = compiled
            if self._matcher is not None:
                current = self._matcher.current
                self._swap(current.index, compiled, current, draft=draft)
            else:
                self._remember(compiled)
        log.info("rule set %s activated (%d rules)", rule_set.version, len(rule_set.rules))
        return replace(outcome, activated=True)

    def _swap(
        self,
        index: hm.Index,
        rules: CompiledRules,
        when: dt.datetime | hm.Verdicts,
        draft: hm.Verdicts | None = None,
    ) -> None:
        """Evaluate `rules` over `index` at `when` (a moment, or the day and hour of verdicts
        held) and swap them in. Caller holds the write lock."""
        if isinstance(when, hm.Verdicts):
            day, hour = when.today, when.hour
        else:
            hour = hour_number(when)
            day = hour // 24
        # Build both first, then swap: both are ready before either goes live, so the two never
        # lag each other by a build.
        full = draft if draft is not None else hm.Verdicts(index, rules.plan, day, hour)
        shared = hm.Verdicts(index, rules.shared_plan, day, hour)
        self._remember(rules)
        if self._matcher is None or self._shared_matcher is None:
            self._matcher, self._shared_matcher = hm.Matcher(full), hm.Matcher(shared)
            return
        self._matcher.swap(full)
        self._shared_matcher.swap(shared)

    def _remember(self, rules: CompiledRules) -> None:
        self._by_version[rules.rule_set.version] = rules.rule_set
        self._by_version[rules.shared.version] = rules.shared

    def _persist(self, text: str) -> None:
        # A restarted replica comes back with the rule set it acknowledged, not the default.
        if self._rule_set_file is None:
            return
        path = self._rule_set_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # -- reading ------------------------------------------------------------------------------

    def _verdicts(self, shared_only: bool) -> hm.Verdicts:
        matcher = self._shared_matcher if shared_only else self._matcher
        if matcher is None:
            raise Unavailable(
                "this colour replica has not received an index version from the risk index yet"
            )
        return matcher.current

    def evaluate(self, person_key: bytes, *, shared_only: bool = False) -> Assessment:
        """The colour of one person (by 16-byte key) with reasons and remedies."""
        verdicts = self._verdicts(shared_only)
        return self._assess(verdicts, person_key, self._phone_masks)[0]

    def _assess(
        self, verdicts: hm.Verdicts, person_key: bytes, phone_masks: PhoneMasks | None
    ) -> tuple[Assessment, hm.Verdict | None, list[hm.Evidence], dict[int, str]]:
        """The assessment from one `Verdicts`, with what Explain needs beside it."""
        rule_set = self._by_version[verdicts.plan.version]
        index = verdicts.index
        day = day_to_date(verdicts.today)
        person_id = index.person_id_by_key(person_key)
        if person_id is None:
            return (
                Assessment(
                    person_key,
                    False,
                    None,
                    (),
                    (),
                    rule_set.version,
                    self._published_version(verdicts),
                    day,
                    self._stale_feeds(self._depends_on(rule_set, ())),
                    verdicts.hour,
                ),
                None,
                [],
                {},
            )
        verdict = verdicts.evaluate(person_id)
        reasons: tuple[ReasonView, ...] = ()
        remedies: tuple[RemedyView, ...] = ()
        evidence: list[hm.Evidence] = []
        masks: dict[int, str] = {}
        if verdict.rules or verdict.cleared:
            evidence = verdicts.explain(person_id)
            masks = self._masks_for(person_key, index, evidence, phone_masks)
            reasons = _reasons(rule_set, verdict, evidence, masks)
            remedies = tuple(_remedy(rule_set, rule_id) for rule_id in verdict.rules)
        assessment = Assessment(
            person_key=person_key,
            registered=True,
            colour=hm.Colour(verdict.colour),
            reasons=reasons,
            remedies=remedies,
            rule_set_version=rule_set.version,
            index_version=self._published_version(verdicts),
            day=day,
            stale_feeds=self._stale_feeds(self._depends_on(rule_set, verdict.rules)),
            hour=verdicts.hour,
        )
        return assessment, verdict, evidence, masks

    def explain(
        self, person_key: bytes, *, shared_only: bool = False, masked_id_number: str = ""
    ) -> Explanation:
        """Every rule that fired or was cleared for the person, the rows behind each (source,
        day, masked phone, county and its grading), what clears it, and the freshness of every
        source of the rule set (R16). One `Verdicts` answers all of it."""
        verdicts = self._verdicts(shared_only)
        card = self._card(person_key)
        phone_masks: PhoneMasks | None = self._phone_masks
        if card is not None:
            phones = card.phones

            def phone_masks(_: bytes) -> Mapping[bytes, str]:
                return phones

        assessment, verdict, evidence, masks = self._assess(verdicts, person_key, phone_masks)
        rule_set = self._by_version[verdicts.plan.version]
        rules: tuple[RuleView, ...] = ()
        if verdict is not None:
            levels = verdicts.index.county_levels() if evidence else {}
            rules = _rule_views(rule_set, verdict, evidence, masks, levels)
        return Explanation(
            assessment=assessment,
            masked_name="" if card is None else card.masked_name,
            masked_id_number=masked_id_number or ("" if card is None else card.masked_id_number),
            masked_phones=() if card is None else tuple(card.phones.values()),
            rules=rules,
            sources=self.freshness(rule_set.sources()),
        )

    def _card(self, person_key: bytes) -> PersonCard | None:
        if self._people is None:
            return None
        try:
            return self._people(person_key)
        except Exception:  # noqa: BLE001 - an explanation without the name still helps
            log.warning("person record unavailable; the explanation will not name the person")
            return None

    def _masks_for(
        self,
        person_key: bytes,
        index: hm.Index,
        evidence: list[hm.Evidence],
        phone_masks: PhoneMasks | None,
    ) -> dict[int, str]:
        if phone_masks is None or all(ev.phone_id is None for ev in evidence):
            return {}
        try:
            by_key = phone_masks(person_key)
        except Exception:  # noqa: BLE001 - an explanation without the masked phone still helps
            log.warning("masked phones unavailable; reasons will not name the phone")
            return {}
        out: dict[int, str] = {}
        for key, masked in by_key.items():
            phone_id = index.phone_id_by_key(key)
            if phone_id is not None:
                out[phone_id] = masked
        return out

    def what_if(
        self,
        text: str,
        filename: str,
        *,
        shared_only: bool = False,
        district_source: str = "",
    ) -> WhatIfOutcome:
        """Evaluate a draft rule set over the whole population beside the active one and count
        the transitions per colour pair, per rule and per district. Nothing is activated or
        remembered: the draft's plan is dropped when this returns."""
        draft_set = _parse(text, filename)
        compiled = compile_rules(draft_set, text)
        draft_set = compiled.shared if shared_only else compiled.rule_set
        plan = compiled.shared_plan if shared_only else compiled.plan
        if not self._what_if_lock.acquire(blocking=False):
            raise ResourceExhausted(
                "a what-if is already running on this replica (each one evaluates the whole "
                "population); try again when it has finished"
            )
        try:
            active = self._verdicts(shared_only)
            index = active.index
            districts_from = self._district_source(index, district_source)
            start = time.perf_counter()
            try:
                draft = hm.Verdicts(index, plan, active.today, active.hour)
            except (hm.InvalidOperation, hm.PlanError) as exc:
                raise InvalidArgument([("text", str(exc))]) from None
            counted = active.transitions(draft, districts_from or None)
            seconds = time.perf_counter() - start
        finally:
            self._what_if_lock.release()
        active_set = self._by_version[active.plan.version]
        in_active = set(active_set.rule_ids)
        in_draft = set(draft_set.rule_ids)
        order = list(dict.fromkeys([*active_set.rule_ids, *draft_set.rule_ids]))
        per_rule: Mapping[str, tuple[int, int]] = counted["rules"]
        rules = tuple(
            RuleChange(
                r,
                *per_rule.get(r, (0, 0)),
                r in in_active,
                r in in_draft,
                rule_differences(
                    active_set.rule(r) if r in in_active else None,
                    draft_set.rule(r) if r in in_draft else None,
                ),
            )
            for r in order
        )
        districts = sorted(
            ((int(county), _matrix(m)) for county, m in counted["districts"].items()),
            key=lambda d: (-changed_in(d[1]), d[0]),
        )
        log.info(
            "what-if %s -> %s over %d persons: %d change colour (%.2f s)",
            active_set.version,
            draft_set.version,
            index.person_count,
            changed_in(_matrix(counted["colours"])),
            seconds,
        )
        return WhatIfOutcome(
            active_version=active_set.version,
            draft=draft_set,
            draft_check_count=draft_set.check_count,
            index_version=self._published_version(active),
            day=day_to_date(active.today),
            person_count=index.person_count,
            colours=_matrix(counted["colours"]),
            rules=rules,
            district_source=districts_from,
            districts=tuple(districts),
            district_freshness=(self.freshness([districts_from])[0] if districts_from else None),
            seconds=seconds,
        )

    @staticmethod
    def _district_source(index: hm.Index, requested: str) -> str:
        """The attribute source to count districts by; "" when the default one is missing."""
        name = requested.strip() or DEFAULT_DISTRICT_SOURCE
        source = get_source(name)
        if source is None or not source.attribute or not source.has_county:
            why = (
                f"{name!r} is not an attribute source with counties; districts come from one "
                f"such as {DEFAULT_DISTRICT_SOURCE!r}"
            )
            raise InvalidArgument([("district_source", why)])
        defined = {n: (keyed, county) for n, keyed, county in index.sources()}
        if defined.get(name) != ("person", True):
            if requested.strip():
                raise InvalidArgument(
                    [("district_source", f"the index this replica holds has no {name!r} source")]
                )
            return ""
        return name

    def status(self) -> ReplicaStatus:
        if self._matcher is None:
            rule_set = self._rules.rule_set
            return ReplicaStatus(
                rule_set_version=rule_set.version,
                rule_ids=rule_set.rule_ids,
                index_version=0,
                index_received_at=None,
                person_count=0,
                counts=(0, 0, 0),
                day=day_to_date(hm.day_number(self._now())),
                hour=hour_number(self._now()),
                rule_counts={},
                stale_sources=tuple(f.source for f in self._stale_feeds(rule_set.sources())),
            )
        verdicts = self._matcher.current
        rule_set = self._by_version[verdicts.plan.version]
        return ReplicaStatus(
            rule_set_version=rule_set.version,
            rule_ids=rule_set.rule_ids,
            index_version=self._published_version(verdicts),
            index_received_at=self._index_received_at,
            person_count=verdicts.index.person_count,
            counts=verdicts.colour_counts(),
            day=day_to_date(verdicts.today),
            hour=verdicts.hour,
            rule_counts=verdicts.rule_counts(),
            stale_sources=tuple(f.source for f in self._stale_feeds(rule_set.sources())),
        )


def _remedy(rule_set: RuleSet, rule_id: str) -> RemedyView:
    rule = rule_set.rule(rule_id)
    sources = tuple(dict.fromkeys(c.source for c in rule.clears))
    return RemedyView(rule_id, sources, rule.what_clears_zh, rule.what_clears_en)


def _parse(text: str, filename: str) -> RuleSet:
    """Parse rule-set TOML; InvalidArgument with every violation (file, rule id, field)."""
    try:
        return parse_rule_set(text, filename)
    except RuleSetError as exc:
        raise InvalidArgument(
            [(f"text: {path}" if path else "text", msg) for path, msg in exc.violations]
        ) from None


def depends_on(rule_set: RuleSet, fired: Iterable[str]) -> frozenset[str]:
    """The sources a verdict depends on: every risk-raising source of the rule set (any of them
    could add risk, so even a green depends on them) and the clearing sources of the rules that
    fired and were not cleared (a stalled clearing feed can keep a person coloured)."""
    out = {c.source for r in rule_set.rules for c in r.checks}
    for rule_id in fired:
        out.update(c.source for c in rule_set.rule(rule_id).clears)
    return frozenset(out)


def rule_differences(active: Rule | None, draft: Rule | None) -> tuple[str, ...]:
    """What a draft changes in one rule, in words for the policy desk."""
    if active is None:
        return ("added",)
    if draft is None:
        return ("removed",)
    out = []
    for name in ("colour", "scope", "match", "window"):
        was, now = getattr(active, name), getattr(draft, name)
        if was != now:
            out.append(f"{name} {was or 'none'} -> {now or 'none'}")
    for name in ("checks", "clears"):
        was, now = _describe(getattr(active, name)), _describe(getattr(draft, name))
        if was != now:
            out.append(f"{name} {was or 'none'} -> {now or 'none'}")
    if (active.text_en, active.text_zh) != (draft.text_en, draft.text_zh):
        out.append("text")
    if (active.what_clears_en, active.what_clears_zh) != (
        draft.what_clears_en,
        draft.what_clears_zh,
    ):
        out.append("what clears it (text)")
    return tuple(out)


def _describe(checks: Iterable[Check]) -> str:
    parts = []
    for c in checks:
        part = c.source
        if c.window is not None:
            part += f" {c.window}"
        if c.min_level is not None:
            part += f" level>={c.min_level}"
        parts.append(part)
    return ", ".join(parts)


def _phone_clearer(rule: Rule) -> str:
    """The phone-keyed clearing source of a rule (the matcher reports only that a phone was
    cleared, not by which row)."""
    for c in rule.clears:
        source = get_source(c.source)
        if source is not None and source.keyed_by == "phone":
            return c.source
    return ""


def _reasons(
    rule_set: RuleSet, verdict: hm.Verdict, evidence: list[hm.Evidence], masks: Mapping[int, str]
) -> tuple[ReasonView, ...]:
    fired = set(verdict.rules)
    cleared = set(verdict.cleared)
    cleared_by: dict[str, str] = {}
    for ev in evidence:
        if ev.role == "cleared" and ev.rule_id in cleared:
            cleared_by.setdefault(ev.rule_id, ev.source)
    for ev in evidence:
        if ev.role == "phone_cleared" and ev.rule_id in cleared:
            cleared_by.setdefault(ev.rule_id, _phone_clearer(rule_set.rule(ev.rule_id)))
    out: list[ReasonView] = []
    for ev in evidence:
        if ev.rule_id not in fired and ev.rule_id not in cleared:
            continue
        # A rule cleared phone by phone has no "fired" rows left: its phone rows are the
        # reason it once fired, and the person must see which phone was cleared (R7).
        phone_row = ev.role == "phone_cleared" and ev.rule_id in cleared
        if ev.role != "fired" and not phone_row:
            continue
        rule = rule_set.rule(ev.rule_id)
        out.append(
            ReasonView(
                rule_id=ev.rule_id,
                text_zh=rule.text_zh,
                text_en=rule.text_en,
                source=ev.source,
                day=evidence_day(ev),
                masked_phone="" if ev.phone_id is None else masks.get(ev.phone_id, ""),
                county=ev.county or 0,
                cleared=ev.rule_id in cleared,
                cleared_by=cleared_by.get(ev.rule_id, ""),
            )
        )
    # Uncleared rules first: they are what the person needs to read.
    out.sort(key=lambda r: r.cleared)
    return tuple(out)


def _rule_views(
    rule_set: RuleSet,
    verdict: hm.Verdict,
    evidence: list[hm.Evidence],
    masks: Mapping[int, str],
    levels: Mapping[int, int],
) -> tuple[RuleView, ...]:
    """Every rule that fired or was cleared, counting ones first, each in rule-set order."""
    rows: dict[str, list[EvidenceView]] = {}
    clears: dict[str, list[EvidenceView]] = {}
    for ev in evidence:
        rule = rule_set.rule(ev.rule_id)
        view = EvidenceView(
            source=ev.source,
            day=evidence_day(ev),
            masked_phone="" if ev.phone_id is None else masks.get(ev.phone_id, ""),
            county=ev.county or 0,
            county_level=0 if ev.county is None else levels.get(ev.county, 0),
            hour=ev.hour,
        )
        if ev.role == "fired":
            rows.setdefault(ev.rule_id, []).append(view)
        elif ev.role == "phone_cleared":
            view = replace(view, phone_cleared_by=_phone_clearer(rule))
            rows.setdefault(ev.rule_id, []).append(view)
        else:
            clears.setdefault(ev.rule_id, []).append(view)
    counting = set(verdict.rules)
    shown = counting | set(verdict.cleared)
    out = [
        RuleView(
            rule=rule,
            cleared=rule.id not in counting,
            evidence=tuple(rows.get(rule.id, ())),
            cleared_by=tuple(clears.get(rule.id, ())),
        )
        for rule in rule_set.rules
        if rule.id in shown
    ]
    # What counts first, the most severe first; rule-set order otherwise (a stable sort).
    out.sort(key=lambda v: (v.cleared, v.rule.colour != "red"))
    return tuple(out)


def _matrix(rows: list[list[int]]) -> Matrix:
    a, b, c = (tuple(int(n) for n in row) for row in rows)
    return (a, b, c)  # type: ignore[return-value]


def _same_rules(a: RuleSet, b: RuleSet) -> bool:
    return replace(a, filename="") == replace(b, filename="")


def source_title(name: str) -> tuple[str, str]:
    """The catalogue's (zh, en) titles of a source, or the name itself when unknown."""
    source = get_source(name)
    return (name, name) if source is None else (source.title_zh, source.title_en)


def run_clock(engine: ColourEngine, stop: threading.Event, interval: float = 5.0) -> None:
    """Call `engine.tick()` until `stop` is set: the hourly rebuild (windows move with the
    Asia/Shanghai hour) and timed rule sets."""
    while not stop.wait(interval):
        try:
            engine.tick()
        except Exception:
            log.exception("verdict rebuild failed; the previous verdicts stay")
