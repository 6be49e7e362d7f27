"""Colour assignment (赋码, R5, R6, R16): the live matcher and the active rule set of one replica.

The engine holds two `healthcode_matcher.Matcher`s: one over the whole rule set (the local
colour) and one over the rules shared with other provinces (R6: what a neighbouring province may
see, so a city-only red never turns a traveller's code red elsewhere). Anything that changes a
verdict - a new index version, a new rule set, a new Asia/Shanghai day - builds new `Verdicts`
aside, off the request path, and swaps them in atomically: a reader sees the old or the new
verdicts, never a mix, and never waits.

A reader takes `matcher.current` once and answers everything from that one `Verdicts` (its
index, plan and day), so the colour, the reasons and the versions it reports always agree.

No grpc here: the servicer turns protos into these calls and the follower feeds index versions.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import healthcode_matcher as hm

from services._common.errors import InvalidArgument, Unavailable
from services._common.sources import get_source
from services.rules import RuleSet, RuleSetError, parse_rule_set

log = logging.getLogger(__name__)

_EPOCH = dt.date(1970, 1, 1)

# (person key) -> {phone key: masked phone} for that person's linked phones. Only asked when a
# rule fired through a phone, to say which phone (R7); the index itself holds no masked text.
PhoneMasks = Callable[[bytes], Mapping[bytes, str]]


def day_to_date(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=day)


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
    stale_sources: tuple[str, ...]


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
    stale_sources: tuple[str, ...]


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
        rule_set_file: Path | None = None,
    ) -> None:
        self._secret = secret
        self._now = now
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
        self._stale: frozenset[str] = frozenset()
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
                self._swap(index, self._rules, hm.day_number(self._now()))
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

    def set_stale_sources(self, names: frozenset[str]) -> None:
        """Sources whose feed is older than the catalogue allows (from the risk index)."""
        self._stale = names

    def tick(self) -> bool:
        """Rebuild the verdicts when the Asia/Shanghai day changed (windows are day-based), and
        activate a pending rule set whose time has come. True if anything was swapped."""
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
            day = hm.day_number(now)
            if swapped or day != current.today:
                self._swap(current.index, self._rules, day)
                return True
        return swapped

    def set_rule_set(self, text: str, filename: str, *, dry_run: bool) -> RuleSetOutcome:
        """Validate, compile and (unless `dry_run`) activate a rule set. On any problem raise
        InvalidArgument with every violation, and keep the active rule set."""
        try:
            rule_set = parse_rule_set(text, filename)
        except RuleSetError as exc:
            raise InvalidArgument(
                [(f"text: {path}" if path else "text", msg) for path, msg in exc.violations]
            ) from None
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
                    draft = hm.Verdicts(current.index, compiled.plan, current.today)
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
                self._swap(current.index, compiled, current.today, draft=draft)
            else:
                self._remember(compiled)
        log.info("rule set %s activated (%d rules)", rule_set.version, len(rule_set.rules))
        return replace(outcome, activated=True)

    def _swap(
        self,
        index: hm.Index,
        rules: CompiledRules,
        day: int,
        draft: hm.Verdicts | None = None,
    ) -> None:
        # Caller holds the write lock. Build both first, then swap: both are ready before
        # either goes live, so the two never lag each other by a build.
        full = draft if draft is not None else hm.Verdicts(index, rules.plan, day)
        shared = hm.Verdicts(index, rules.shared_plan, day)
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

    def evaluate(self, person_key: bytes, *, shared_only: bool = False) -> Assessment:
        """The colour of one person (by 16-byte key) with reasons and remedies."""
        matcher = self._shared_matcher if shared_only else self._matcher
        if matcher is None:
            raise Unavailable(
                "this colour replica has not received an index version from the risk index yet"
            )
        verdicts = matcher.current
        rule_set = self._by_version[verdicts.plan.version]
        index = verdicts.index
        day = day_to_date(verdicts.today)
        stale = tuple(sorted(rule_set.sources() & self._stale))
        person_id = index.person_id_by_key(person_key)
        if person_id is None:
            return Assessment(
                person_key,
                False,
                None,
                (),
                (),
                rule_set.version,
                self._published_version(verdicts),
                day,
                stale,
            )
        verdict = verdicts.evaluate(person_id)
        reasons: tuple[ReasonView, ...] = ()
        remedies: tuple[RemedyView, ...] = ()
        if verdict.rules or verdict.cleared:
            reasons = self._reasons(person_key, verdicts, rule_set, person_id, verdict)
            remedies = tuple(_remedy(rule_set, rule_id) for rule_id in verdict.rules)
        return Assessment(
            person_key=person_key,
            registered=True,
            colour=hm.Colour(verdict.colour),
            reasons=reasons,
            remedies=remedies,
            rule_set_version=rule_set.version,
            index_version=self._published_version(verdicts),
            day=day,
            stale_sources=stale,
        )

    def _reasons(
        self,
        person_key: bytes,
        verdicts: hm.Verdicts,
        rule_set: RuleSet,
        person_id: int,
        verdict: hm.Verdict,
    ) -> tuple[ReasonView, ...]:
        evidence = verdicts.explain(person_id)
        fired = set(verdict.rules)
        cleared = set(verdict.cleared)
        cleared_by: dict[str, str] = {}
        for ev in evidence:
            if ev.role != "fired" and ev.rule_id in cleared:
                cleared_by.setdefault(ev.rule_id, ev.source)
        masks = self._masks_for(person_key, verdicts.index, evidence)
        out: list[ReasonView] = []
        for ev in evidence:
            if ev.role != "fired" or (ev.rule_id not in fired and ev.rule_id not in cleared):
                continue
            rule = rule_set.rule(ev.rule_id)
            out.append(
                ReasonView(
                    rule_id=ev.rule_id,
                    text_zh=rule.text_zh,
                    text_en=rule.text_en,
                    source=ev.source,
                    day=None if ev.day is None else day_to_date(ev.day),
                    masked_phone="" if ev.phone_id is None else masks.get(ev.phone_id, ""),
                    county=ev.county or 0,
                    cleared=ev.rule_id in cleared,
                    cleared_by=cleared_by.get(ev.rule_id, ""),
                )
            )
        # Uncleared rules first: they are what the person needs to read.
        out.sort(key=lambda r: r.cleared)
        return tuple(out)

    def _masks_for(
        self, person_key: bytes, index: hm.Index, evidence: list[hm.Evidence]
    ) -> dict[int, str]:
        if self._phone_masks is None or all(ev.phone_id is None for ev in evidence):
            return {}
        try:
            by_key = self._phone_masks(person_key)
        except Exception:  # noqa: BLE001 - an explanation without the masked phone still helps
            log.warning("masked phones unavailable; reasons will not name the phone")
            return {}
        out: dict[int, str] = {}
        for key, masked in by_key.items():
            phone_id = index.phone_id_by_key(key)
            if phone_id is not None:
                out[phone_id] = masked
        return out

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
                rule_counts={},
                stale_sources=tuple(sorted(rule_set.sources() & self._stale)),
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
            rule_counts=verdicts.rule_counts(),
            stale_sources=tuple(sorted(rule_set.sources() & self._stale)),
        )


def _remedy(rule_set: RuleSet, rule_id: str) -> RemedyView:
    rule = rule_set.rule(rule_id)
    sources = tuple(dict.fromkeys(c.source for c in rule.clears))
    return RemedyView(rule_id, sources, rule.what_clears_zh, rule.what_clears_en)


def _same_rules(a: RuleSet, b: RuleSet) -> bool:
    return replace(a, filename="") == replace(b, filename="")


def source_title(name: str) -> tuple[str, str]:
    """The catalogue's (zh, en) titles of a source, or the name itself when unknown."""
    source = get_source(name)
    return (name, name) if source is None else (source.title_zh, source.title_en)


def run_clock(engine: ColourEngine, stop: threading.Event, interval: float = 5.0) -> None:
    """Call `engine.tick()` until `stop` is set: midnight rollover and timed rule sets."""
    while not stop.wait(interval):
        try:
            engine.tick()
        except Exception:
            log.exception("verdict rebuild failed; the previous verdicts stay")
