"""One replica's verdicts (赋码, R5, R6): the live matcher over the latest index and the active
rule set. Who may ask is decided in `logic`; this only answers.

The engine holds two `healthcode_matcher.Matcher`s: one over the whole rule set (the local
colour) and one over the rules shared with other provinces (R6: what a neighbouring province may
see, so a city-only red never turns a traveller's code red elsewhere). Anything that changes a
verdict - a new index version, a new rule set, a new Asia/Shanghai hour (windows of hourly
sources, "a negative test within 48 hours", end with the current hour; daily windows with the
current day) - builds new `Verdicts` aside, off the request path, and swaps them in atomically: a
reader sees the old or the new verdicts, never a mix, and never waits.

A reader takes `matcher.current` once and answers everything from that one `Verdicts` (its
index, plan, day and hour), so the colour, the reasons and the versions it reports always agree.
An index's version is the risk index's number for it (version 0 is the empty index).

Manual colour overrides (the support desk's corrections after an appeal, issue 10) come through
the risk index like everything else: set and cleared in index deltas, and all of them on a
stream's first version. The engine keeps those in force by person key and applies them to every
local answer (Evaluate, Show and Scan through a display's replica, Explain, the packed batches):
an override replaces the computed colour while the time of the answer is before its
`valid_until` (so it ends exactly then, with no timer) and adds its reason first; Explain still
lists what the rules computed underneath. Answers for other provinces (`shared_only`), counts
and what-ifs are the rules' alone.

No grpc here: the servicer turns protos into calls and the follower feeds index versions.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import healthcode_matcher as hm

from services._common import changes
from services._common.days import day_date, hour_number, now_shanghai
from services._common.deadline import bounded
from services._common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services._common.memory import BULK_BYTES, FreedMemory
from services.colour import explanation
from services.colour.freshness import FeedFreshness
from services.colour.model import (
    Assessment,
    Explanation,
    Freshness,
    OverrideView,
    PersonCard,
    PersonDirectory,
    ReasonView,
    RemedyView,
    ReplicaStatus,
    RuleSetOutcome,
    RuleView,
    WhatIfOutcome,
)
from services.colour.rulestore import CompiledRules, RuleSetStore, compile_rules, parse_rules
from services.colour.whatif import what_if

log = logging.getLogger(__name__)

# The most entries one batch of `ColourEngine.colours` may carry (EvaluateStream's limit).
MAX_BATCH_ENTRIES = 100_000
# A batch's colour bytes besides the Colour numbers (1 green, 2 yellow, 3 red).
NOT_REGISTERED = 0
INVALID_ENTRY = 255


@dataclass(frozen=True, slots=True)
class BatchColours:
    """A batch's answer from one `Verdicts`: one byte per entry (the Colour number, or
    NOT_REGISTERED, or INVALID_ENTRY), the invalid entries as (position, what is wrong), and
    what every entry was evaluated on."""

    colours: bytes
    problems: list[tuple[int, str]]
    index_version: int
    rule_set_version: str
    today: int  # day number
    hour: int  # hour number
    stale_sources: tuple[str, ...]  # the rule set's risk-raising sources that are stale


class ColourEngine:
    """One replica's verdicts. Thread-safe: readers never lock; writers serialise."""

    def __init__(
        self,
        secret: bytes,
        rules: CompiledRules,
        *,
        now: Callable[[], dt.datetime] = now_shanghai,
        people: PersonDirectory | None = None,
        rule_set_file: Path | None = None,
        shared_verdicts: bool = True,
    ) -> None:
        """`shared_verdicts=False`: keep no verdicts over the rules shared with other provinces
        (a display's replica, which never answers `shared_only`): each version costs one
        evaluation, not two."""
        self._secret = secret
        self._keeps_shared = shared_verdicts
        self._now = now
        self._people = people
        self._write_lock = threading.Lock()
        self._rules = RuleSetStore(rules, rule_set_file)
        self._feeds = FeedFreshness(now)
        self._index_received_at: dt.datetime | None = None
        # A what-if evaluates the whole population once more: one at a time per replica.
        self._what_if_lock = threading.Lock()
        # None until the first index version arrives: a plan can only be evaluated over an
        # index that defines its sources, and "no data" must never be answered as green.
        self._matcher: hm.Matcher | None = None
        self._shared_matcher: hm.Matcher | None = None
        # Notified on every installed version: readers waiting to read their writes.
        self._installed = threading.Condition()
        # How long the recent deltas took to apply (seconds), and how many were applied.
        self._apply_times: deque[float] = deque(maxlen=1000)
        self._deltas_applied = 0
        self._freed = FreedMemory()
        # Manual colour overrides by person key (perhaps expired: checked at answer time), and
        # the latest override log entry they reflect. Replaced whole, never changed in place,
        # so a reader takes the dict once without a lock; empty costs the hot path nothing.
        self._overrides: dict[bytes, changes.Override] = {}
        self._override_seq = 0
        # (the overrides dict it was built from, when the first of them ends, what a batch
        # takes): batches reuse it until either changes.
        self._batch_cache: (
            tuple[dict[bytes, changes.Override], dt.datetime | None, dict[bytes, int] | None] | None
        ) = None

    # -- what changes verdicts --------------------------------------------------------------

    @property
    def has_index(self) -> bool:
        return self._matcher is not None

    @property
    def index_version(self) -> int:
        """The version of the index held (0 before the first one, and for the empty index)."""
        return 0 if self._matcher is None else self._matcher.current.index.version

    @property
    def index(self) -> hm.Index | None:
        """The index version held (None before the first)."""
        return None if self._matcher is None else self._matcher.current.index

    @property
    def rules(self) -> CompiledRules:
        return self._rules.active

    def install_index(self, index: hm.Index) -> bool:
        """Build verdicts for a new index version aside, then swap them in. False if it is the
        version already held (a reconnect that resent it). An index the active rules cannot
        run on (a source they check is not defined) raises InvalidOperation, changing nothing."""
        with self._write_lock:
            if self._matcher is not None:
                held = self._matcher.current.index.version
                if index.version == held:
                    return False
                if index.version < held:
                    # The risk index is the source of truth: a lower version means it was
                    # restored or rebuilt, and following it is right. Say so: it is unusual.
                    log.warning("index version went back from %d to %d", held, index.version)
            self._swap(index, self._rules.active, self._now())
            self._index_received_at = self._now()
        with self._installed:
            self._installed.notify_all()
        log.info(
            "index version %d installed (%d persons, %d phones)",
            index.version,
            index.person_count,
            index.phone_count,
        )
        self._freed.after_change(BULK_BYTES)  # a whole index replaced the one held
        return True

    def apply_changes(self, delta: Sequence[changes.Change], version: int) -> bool:
        """Build `version` from the version held plus `delta` (a WatchIndex delta), and swap
        in its verdicts. False if the replica holds that version or a later one already."""
        start = time.perf_counter()
        with self._write_lock:
            if self._matcher is None:
                raise hm.InvalidOperation("a delta needs an index to apply to: load a snapshot")
            current = self._matcher.current
            before = current.index
            if version <= before.version:
                return False
            builder = before.builder()
            changes.apply_all(builder, delta)
            index = builder.finish(version=version)
            # Before the new verdicts go live: a reader of `version` sees its overrides.
            self._take_overrides(delta)
            now = self._now()
            rules_changed = False
            for change in delta:
                if isinstance(change, changes.RuleSet):
                    rules_changed |= self._adopt_rule_set(change.text, change.filename, now)
            touched = changes.touched_persons(before, index, delta)
            shared = self._shared_matcher
            if (
                rules_changed
                or touched is None
                or (self._keeps_shared and shared is None)
                or hour_number(now) != current.hour
            ):
                self._swap(index, self._rules.active, now)  # everyone, at the new hour
            else:
                # Only the people the delta can change are evaluated again; everyone else keeps
                # their verdict (shared with the previous version, not copied).
                full = current.update(index, touched)
                shared_only = None if shared is None else shared.current.update(index, touched)
                self._matcher.swap(full)
                if shared is not None and shared_only is not None:
                    shared.swap(shared_only)
            self._index_received_at = self._now()
            self._apply_times.append(time.perf_counter() - start)
            self._deltas_applied += 1
        with self._installed:
            self._installed.notify_all()
        log.debug("index version %d applied (%d changes)", version, len(delta))
        del before, current, index  # the version replaced, freed unless a reader still holds it
        self._freed.after_change(sum(map(changes.approx_bytes, delta)))
        return True

    # -- manual overrides ---------------------------------------------------------------------

    def _take_overrides(self, delta: Iterable[changes.Change]) -> None:
        """Apply the override changes of a delta that are newer than those held. Caller holds
        the write lock."""
        updated: dict[bytes, changes.Override] | None = None
        for change in delta:
            if not isinstance(change, changes.Override) or change.seq <= self._override_seq:
                continue
            if updated is None:
                updated = dict(self._overrides)
            if change.is_clear:
                updated.pop(change.person_key, None)
            else:
                updated[change.person_key] = change
            self._override_seq = change.seq
        if updated is not None:
            self._overrides = updated

    def replace_overrides(self, active: Iterable[changes.Override], last_seq: int) -> None:
        """Hold exactly these overrides, reflecting the override log up to `last_seq` (a
        stream's first version carries them; a replica's own snapshot keeps them)."""
        with self._write_lock:
            self._overrides = {o.person_key: o for o in active if not o.is_clear}
            self._override_seq = last_seq

    def overrides(self) -> tuple[list[changes.Override], int]:
        """The overrides held (oldest first) and the latest log entry they reflect."""
        with self._write_lock:
            return sorted(self._overrides.values(), key=lambda o: o.seq), self._override_seq

    def _override_of(self, person_key: bytes) -> changes.Override | None:
        """The person's override in force now, if any."""
        held = self._overrides
        if not held:
            return None
        found = held.get(person_key)
        return found if found is not None and found.active_at(self._now()) else None

    def _batch_overrides(self, shared_only: bool) -> dict[bytes, int] | None:
        """The overrides in force now as a batch takes them (person key -> wire colour), or
        None: then the batch runs exactly as without overrides. Built once per set of
        overrides held, and again only when the first of them ends."""
        held = self._overrides
        if shared_only or not held:
            return None
        now = self._now()
        cached = self._batch_cache
        if cached is not None and cached[0] is held and (cached[1] is None or now < cached[1]):
            return cached[2]
        active = [o for o in held.values() if o.colour is not None and o.active_at(now)]
        wire = {o.person_key: o.colour + 1 for o in active if o.colour is not None}
        first_end = min((o.valid_until for o in active if o.valid_until is not None), default=None)
        self._batch_cache = (held, first_end, wire or None)
        return wire or None

    def _prune_overrides(self, now: dt.datetime) -> None:
        """Forget overrides that have ended (answers ignore them already). Caller holds the
        write lock."""
        if any(not o.active_at(now) for o in self._overrides.values()):
            self._overrides = {k: o for k, o in self._overrides.items() if o.active_at(now)}

    def follow_rule_set(self, text: str, filename: str) -> bool:
        """Run the rule set the risk index says is published (a stream's first version names
        it), unless it is the one held already. True if the verdicts were rebuilt."""
        with self._write_lock:
            now = self._now()
            if not self._adopt_rule_set(text, filename, now) or self._matcher is None:
                return False
            current = self._matcher.current
            self._swap(current.index, self._rules.active, now)
            return True

    def seconds_to_pending_rule_set(self) -> float:
        """Until the pending rule set's `valid_from` (infinity if none is pending)."""
        pending = self._rules.pending
        if pending is None or pending.rule_set.valid_from is None:
            return math.inf
        return max(0.0, (pending.rule_set.valid_from - self._now()).total_seconds())

    def _adopt_rule_set(self, text: str, filename: str, now: dt.datetime) -> bool:
        """Take a published rule set as active (True) or pending; nothing if it is the one
        held. A rule set the risk index accepted but this replica cannot run (an older
        replica) is logged and skipped: the replica keeps answering with the rules it has.
        Caller holds the write lock."""
        held = [self._rules.active, *([self._rules.pending] if self._rules.pending else [])]
        if any(rules.text == text for rules in held):
            return False
        try:
            compiled = compile_rules(parse_rules(text, filename), text)
            self._rules.check_version(compiled.rule_set)
        except (InvalidArgument, ValueError) as exc:
            log.error(
                "published rule set %s cannot run here, keeping the active one: %s", filename, exc
            )
            return False
        active = self._rules.accept(compiled, now)
        log.info(
            "published rule set %s %s",
            compiled.rule_set.version,
            "activated" if active else f"valid from {compiled.rule_set.valid_from}",
        )
        return active

    def wait_for_version(self, version: int, timeout_s: float) -> None:
        """Return once the replica holds index version `version` or a later one (read your
        writes); Unavailable if it does not within `timeout_s`."""
        if version <= self.index_version:
            return
        with self._installed:
            # No longer than the caller waits for the answer.
            if self._installed.wait_for(lambda: self.index_version >= version, bounded(timeout_s)):
                return
        raise Unavailable(
            f"this colour replica holds index version {self.index_version}; version {version} "
            "has not reached it yet: try again in a moment"
        )

    def set_feed_times(self, last_updated: Mapping[str, dt.datetime | None]) -> None:
        """When each source's latest batch was accepted (from RiskIndexService.ListSources)."""
        self._feeds.set_feed_times(last_updated)

    def freshness(self, names: Iterable[str] | None = None) -> tuple[Freshness, ...]:
        """The freshness of the named sources (default: the whole catalogue), by name, now."""
        return self._feeds.of(names)

    def tick(self) -> bool:
        """Rebuild the verdicts when the Asia/Shanghai hour changed (windows of hourly sources
        end with the current hour, daily ones with the current day), and activate a pending
        rule set whose time has come. True if anything was swapped."""
        now = self._now()
        with self._write_lock:
            self._prune_overrides(now)
            activated = self._rules.activate_due(now)
            if self._matcher is None:
                return activated
            current = self._matcher.current
            if activated or hour_number(now) != current.hour:
                self._swap(current.index, self._rules.active, now)
                return True
        return activated

    def set_rule_set(self, text: str, filename: str, *, dry_run: bool) -> RuleSetOutcome:
        """Validate, compile and (unless `dry_run`) activate a rule set. On any problem raise
        InvalidArgument with every violation, and keep the active rule set."""
        compiled = compile_rules(parse_rules(text, filename), text)
        rule_set = compiled.rule_set
        with self._write_lock:
            self._rules.check_version(rule_set)
            draft: hm.Verdicts | None = None
            counts = previous = (0, 0, 0)
            if self._matcher is not None:
                current = self._matcher.current
                # Evaluating the draft over the whole population answers "how many people
                # does this change turn yellow" before it goes live.
                draft = self._evaluate_draft(current, compiled.plan)
                counts, previous = draft.colour_counts(), current.colour_counts()
            outcome = RuleSetOutcome(rule_set, compiled.plan.check_count, counts, previous, False)
            if dry_run or not self._rules.accept(compiled, self._now()):
                return outcome
            if self._matcher is not None:
                current = self._matcher.current
                self._swap(current.index, compiled, (current.today, current.hour), draft=draft)
        log.info("rule set %s activated (%d rules)", rule_set.version, len(rule_set.rules))
        return RuleSetOutcome(rule_set, compiled.plan.check_count, counts, previous, True)

    @staticmethod
    def _evaluate_draft(current: hm.Verdicts, plan: hm.Plan) -> hm.Verdicts:
        try:
            return hm.Verdicts(current.index, plan, current.today, current.hour)
        except (hm.InvalidOperation, hm.PlanError) as exc:
            raise InvalidArgument([("text", str(exc))]) from None

    def _swap(
        self,
        index: hm.Index,
        rules: CompiledRules,
        when: dt.datetime | tuple[int, int | None],
        draft: hm.Verdicts | None = None,
    ) -> None:
        """Evaluate `rules` over `index` at `when` (a moment, or the (day, hour) of verdicts
        held) and swap them in. Caller holds the write lock."""
        if isinstance(when, dt.datetime):
            hour: int | None = hour_number(when)
            day = hour_number(when) // 24
        else:
            day, hour = when
        # Build both first, then swap: both are ready before either goes live, so the two never
        # lag each other by a build.
        full = draft if draft is not None else hm.Verdicts(index, rules.plan, day, hour)
        shared = hm.Verdicts(index, rules.shared_plan, day, hour) if self._keeps_shared else None
        if self._matcher is None:
            self._matcher = hm.Matcher(full)
        else:
            self._matcher.swap(full)
        if shared is not None:
            if self._shared_matcher is None:
                self._shared_matcher = hm.Matcher(shared)
            else:
                self._shared_matcher.swap(shared)

    # -- reading ------------------------------------------------------------------------------

    def _verdicts(self, shared_only: bool) -> hm.Verdicts:
        if shared_only and not self._keeps_shared:
            raise FailedPrecondition(
                "this replica keeps no verdicts for other provinces (a display's); "
                "ask the colour service with shared_only"
            )
        matcher = self._shared_matcher if shared_only else self._matcher
        if matcher is None:
            raise Unavailable(
                "this colour replica has not received an index version from the risk index yet"
            )
        return matcher.current

    def evaluate(
        self, person_key: bytes, *, shared_only: bool = False, reasons: bool = True
    ) -> Assessment:
        """The colour of one person (by 16-byte key) with reasons and remedies; without them
        when `reasons` is False (an overloaded display sheds them, marking the answer)."""
        verdicts = self._verdicts(shared_only)
        return self._assess(
            verdicts, person_key, self._people, with_reasons=reasons, manual=not shared_only
        )[0]

    def colours(
        self,
        *,
        id_numbers: Sequence[str] | None = None,
        person_keys: bytes | None = None,
        shared_only: bool = False,
    ) -> BatchColours:
        """The colours of a batch (R12: an exam's candidate list) from one `Verdicts`: raw ID
        numbers (validated as the edge does; an invalid one is a problem of its entry) or
        concatenated 16-byte person keys, not both. Only colours: no reasons, no explanation.
        More than MAX_BATCH_ENTRIES raises ResourceExhausted; keys that are not a whole number
        of 16 bytes raise InvalidArgument. The validation, hashing and look-ups run in the
        matcher with the GIL released; so does replacing the colours of the registered people
        with a manual override in force (not for `shared_only`; nothing at all without one)."""
        if id_numbers is not None and person_keys is not None:
            raise InvalidArgument(
                [("person_keys", "a batch is id_numbers or person_keys, not both")]
            )
        field, count = (
            ("id_numbers", len(id_numbers))
            if id_numbers is not None
            else ("person_keys", len(person_keys or b"") // 16)
        )
        if count > MAX_BATCH_ENTRIES:
            raise ResourceExhausted(
                f"a batch holds at most {MAX_BATCH_ENTRIES:,} entries, this one has {count:,}; "
                "split it over several messages",
                [(field, f"{count} entries > {MAX_BATCH_ENTRIES}")],
            )
        verdicts = self._verdicts(shared_only)
        manual = self._batch_overrides(shared_only)
        problems: list[tuple[int, str]] = []
        if id_numbers is not None:
            text = "\n".join(id_numbers)
            if text.count("\n") != max(0, len(id_numbers) - 1):
                # A line break inside an entry would split it: it is whitespace to the
                # validation (trimmed at the ends, refused inside), and so is a space.
                text = "\n".join(n.replace("\n", " ") for n in id_numbers)
            colours, problems = verdicts.colours_of_id_numbers(text.encode(), manual)
        else:
            keys = person_keys or b""
            if len(keys) % 16:
                raise InvalidArgument(
                    [("person_keys", f"16-byte keys, concatenated: {len(keys)} bytes is not")]
                )
            colours = verdicts.colours_of_keys(keys, manual)
        rule_set = self._rules.by_version(verdicts.plan.version)
        return BatchColours(
            colours=colours,
            problems=problems,
            index_version=verdicts.index.version,
            rule_set_version=rule_set.version,
            today=verdicts.today,
            hour=verdicts.hour,
            stale_sources=tuple(f.source for f in self._feeds.stale_for(rule_set)),
        )

    def _assess(
        self,
        verdicts: hm.Verdicts,
        person_key: bytes,
        phones: Mapping[bytes, str] | PersonDirectory | None,
        *,
        with_reasons: bool = True,
        manual: bool = True,
    ) -> tuple[Assessment, hm.Verdict | None, list[hm.Evidence], dict[int, str]]:
        """The assessment from one `Verdicts`, with what Explain needs beside it. With
        `manual`, a registered person's override in force replaces the colour and its reason
        comes first (the rules' reasons follow: what holds once it ends)."""
        rule_set = self._rules.by_version(verdicts.plan.version)
        index = verdicts.index
        person_id = index.person_id_by_key(person_key)
        verdict = None if person_id is None else verdicts.evaluate(person_id)
        reasons: tuple[ReasonView, ...] = ()
        remedies: tuple[RemedyView, ...] = ()
        evidence: list[hm.Evidence] = []
        masks: dict[int, str] = {}
        fired = verdict is not None and bool(verdict.rules or verdict.cleared)
        if fired and person_id is not None and verdict is not None and with_reasons:
            evidence = verdicts.explain(person_id)
            masks = explanation.phone_masks(person_key, index, evidence, phones)
            reasons = explanation.reasons(rule_set, verdict, evidence, masks)
            remedies = tuple(explanation.remedy(rule_set, r) for r in verdict.rules)
        colour = None if verdict is None else hm.Colour(verdict.colour)
        override = None
        if manual and colour is not None:
            found = self._override_of(person_key)
            if found is not None and found.colour is not None and found.valid_until is not None:
                override = OverrideView(
                    colour=hm.Colour(found.colour),
                    computed=colour,
                    reason=found.reason,
                    valid_until=found.valid_until,
                    set_at=found.at,
                    actor=found.actor,
                    seq=found.seq,
                )
                colour = override.colour
                if with_reasons:
                    reasons = (explanation.override_reason(override), *reasons)
        assessment = Assessment(
            person_key=person_key,
            registered=verdict is not None,
            colour=colour,
            reasons=reasons,
            remedies=remedies,
            rule_set_version=rule_set.version,
            index_version=index.version,
            day=day_date(verdicts.today),
            stale_feeds=self._feeds.stale_for(rule_set, () if verdict is None else verdict.rules),
            reasons_shed=(fired or override is not None) and not with_reasons,
            hour=verdicts.hour,
            manual=override,
        )
        return assessment, verdict, evidence, masks

    def explain(
        self, person_key: bytes, *, shared_only: bool = False, masked_id_number: str = ""
    ) -> Explanation:
        """Every rule that fired or was cleared for the person, the rows behind each (source,
        day, masked phone, county and its grading), what clears it, and the freshness of every
        source of the rule set (R16). One `Verdicts` answers all of it. A manual override in
        force comes first (the assessment's colour, `manual`, and its reason); the rules are
        what they computed underneath it."""
        verdicts = self._verdicts(shared_only)
        card = self._card(person_key)
        phones = None if card is None else card.phones
        assessment, verdict, evidence, masks = self._assess(
            verdicts, person_key, phones, manual=not shared_only
        )
        rule_set = self._rules.by_version(verdicts.plan.version)
        rules: tuple[RuleView, ...] = ()
        if verdict is not None:
            levels = verdicts.index.county_levels() if evidence else {}
            rules = explanation.rule_views(rule_set, verdict, evidence, masks, levels)
        return Explanation(
            assessment=assessment,
            masked_name="" if card is None else card.masked_name,
            masked_id_number=masked_id_number or ("" if card is None else card.masked_id_number),
            masked_phones=() if card is None else tuple(card.phones.values()),
            rules=rules,
            sources=self._feeds.of(rule_set.sources()),
        )

    def _card(self, person_key: bytes) -> PersonCard | None:
        if self._people is None:
            return None
        try:
            return self._people(person_key)
        except Exception:  # noqa: BLE001 - an explanation without the name still helps
            log.warning("person record unavailable; the explanation will not name the person")
            return None

    def what_if(
        self,
        text: str,
        filename: str,
        *,
        shared_only: bool = False,
        district_source: str = "",
    ) -> WhatIfOutcome:
        """A draft rule set over the whole population beside the active one; nothing is
        activated or remembered."""
        compiled = compile_rules(parse_rules(text, filename), text)
        if not self._what_if_lock.acquire(blocking=False):
            raise ResourceExhausted(
                "a what-if is already running on this replica (each one evaluates the whole "
                "population); try again when it has finished"
            )
        try:
            active = self._verdicts(shared_only)
            return what_if(
                active,
                self._rules.by_version(active.plan.version),
                compiled.shared if shared_only else compiled.rule_set,
                compiled.shared_plan if shared_only else compiled.plan,
                index_version=active.index.version,
                district_source=district_source,
                freshness_of=self._feeds.of,
            )
        finally:
            self._what_if_lock.release()

    def status(self) -> ReplicaStatus:
        now = self._now()
        if self._matcher is None:
            rule_set = self._rules.active.rule_set
            hour = hour_number(now)
            return ReplicaStatus(
                rule_set_version=rule_set.version,
                rule_ids=rule_set.rule_ids,
                index_version=0,
                index_received_at=None,
                person_count=0,
                counts=(0, 0, 0),
                day=day_date(hour // 24),
                hour=hour,
                rule_counts={},
                stale_sources=tuple(f.source for f in self._feeds.stale(rule_set.sources())),
            )
        verdicts = self._matcher.current
        rule_set = self._rules.by_version(verdicts.plan.version)
        return ReplicaStatus(
            rule_set_version=rule_set.version,
            rule_ids=rule_set.rule_ids,
            index_version=verdicts.index.version,
            index_received_at=self._index_received_at,
            person_count=verdicts.index.person_count,
            counts=verdicts.colour_counts(),
            day=day_date(verdicts.today),
            hour=verdicts.hour,
            rule_counts=verdicts.rule_counts(),
            stale_sources=tuple(f.source for f in self._feeds.stale(rule_set.sources())),
            deltas_applied=self._deltas_applied,
            delta_apply_ms=_p50_p99_max_ms(list(self._apply_times)),
        )


def _p50_p99_max_ms(seconds: list[float]) -> tuple[float, float, float]:
    if not seconds:
        return (0.0, 0.0, 0.0)
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000

    return (rank(0.5), rank(0.99), ordered[-1] * 1000)


def run_clock(engine: ColourEngine, stop: threading.Event, interval: float = 5.0) -> None:
    """Call `engine.tick()` until `stop` is set: the hourly rebuild (windows move with the
    Asia/Shanghai hour) and timed rule sets, which it wakes for on the dot, so that every
    replica (colour, each display) switches to a timed rule set at the same moment."""
    while not stop.wait(min(interval, max(0.01, engine.seconds_to_pending_rule_set()))):
        try:
            engine.tick()
        except Exception:
            log.exception("verdict rebuild failed; the previous verdicts stay")
