"""Incremental verdicts: `Verdicts.update` against a fresh `Verdicts`.

A colour replica applies each index version as a delta: it works out whom the delta touches
(persons named by rows, holders of phones named by rows, old and new holders of re-linked
phones, persons with rows in a re-graded county, everyone when a source is cleared) with the
index's lookups, and re-evaluates only them. Whenever that list is complete, the updated
verdicts must equal a whole-population evaluation for every person, in every form (colour,
masks, rule ids, explanations, batches, colour and rule counts, the non-green set), version
after version, with each update applied to the previous update.

Two model tests: the random scenarios of `matcher_support` (random sources and plans; a full
plan and one of every other rule) and a state machine over the source catalogue with the real
rule set (services/rules/default.toml, full and shared-only). Then what `update` refuses, and
the helper lookups themselves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import healthcode_matcher as hm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)
from matcher_support import (
    OTHER_SECRET,
    SECRET,
    TODAY,
    Scenario,
    ScenarioRun,
    StepSpec,
    from_u32,
    lines,
    scenarios,
    u32,
)

from clients.feedgen import COUNTY_LEVELS, TIANJIN_DISTRICTS
from services._common.days import day_number
from services._common.sources import SOURCES
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set

UNKNOWN = 2**32 - 1  # what the key lookups give for a key never registered


# -- comparing ------------------------------------------------------------------------------


def explained(verdicts: hm.Verdicts, person: int) -> list[tuple[Any, ...]]:
    return [
        (e.rule_id, e.source, e.day, e.hour, e.phone_id, e.county, e.role)
        for e in verdicts.explain(person)
    ]


def assert_same(updated: hm.Verdicts, fresh: hm.Verdicts, context: str = "") -> None:
    """Everything a caller can read of the two verdicts is the same."""
    assert updated.index.version == fresh.index.version, context
    assert (updated.today, updated.hour) == (fresh.today, fresh.hour), context
    assert updated.plan.rule_ids == fresh.plan.rule_ids, context
    persons = range(fresh.index.person_count)
    for person in persons:
        got, want = updated.evaluate(person), fresh.evaluate(person)
        where = f"{context} person {person}"
        assert (got.colour, got.fired_mask, got.cleared_mask) == (
            want.colour,
            want.fired_mask,
            want.cleared_mask,
        ), where
        assert (got.rules, got.cleared) == (want.rules, want.cleared), where
        assert explained(updated, person) == explained(fresh, person), where
    everyone = u32(persons)
    assert updated.evaluate_many(everyone) == fresh.evaluate_many(everyone), context
    assert updated.colour_counts() == fresh.colour_counts(), context
    assert updated.rule_counts() == fresh.rule_counts(), context
    assert updated.non_green() == fresh.non_green(), context
    with pytest.raises(hm.InvalidOperation):
        updated.evaluate(fresh.index.person_count)


# -- whom a delta touches, as a replica works it out -----------------------------------------


def person_ids(index: hm.Index, id_numbers: Iterable[str]) -> list[int]:
    hasher = index.hasher()
    keys = b"".join(hasher.person_key(n) for n in id_numbers)
    return [p for p in from_u32(index.person_ids_by_keys(keys)) if p != UNKNOWN]


def holders(index: hm.Index, phones: Iterable[str]) -> list[int]:
    hasher = index.hasher()
    keys = b"".join(hasher.phone_key(n) for n in phones)
    return from_u32(index.holders_of_phones(index.phone_ids_by_keys(keys)))


class Delta:
    """What one version changed, as the replica hears of it (identifiers, dense ids for
    removals, counties, cleared sources)."""

    def __init__(self) -> None:
        self.person_rows: list[str] = []  # ID numbers named by rows
        self.phone_rows: list[str] = []  # phones named by rows
        self.relinked: list[str] = []  # phones linked, moved or unlinked
        self.removed_persons: list[int] = []
        self.removed_phones: list[int] = []
        self.counties: set[int] = set()
        self.cleared = False

    def touched(self, old: hm.Index, new: hm.Index) -> bytes:
        if self.cleared:
            return u32(range(new.person_count))
        out = set(person_ids(new, self.person_rows))
        out |= set(holders(new, self.phone_rows))
        # a phone registered in this version has no old holder: its id is unknown to `old`
        out |= set(holders(old, self.relinked)) | set(holders(new, self.relinked))
        out |= set(self.removed_persons)
        out |= set(from_u32(new.holders_of_phones(u32(self.removed_phones))))
        if self.counties:
            out |= set(from_u32(new.persons_with_rows_in_counties(sorted(self.counties))))
        return u32(sorted(out))


def scenario_delta(run: ScenarioRun, step: StepSpec) -> Delta:
    s = run.scenario
    delta = Delta()
    for phone, _ in step.links:
        delta.relinked.append(run.raw_phones[phone])
    delta.counties = {county for county, _ in step.levels}
    for source_index, members in step.removals:
        if s.sources[source_index].keyed_by == "person":
            delta.removed_persons += [run.person_ids[m] for m in members if m in run.person_ids]
        else:
            delta.removed_phones += [run.phone_ids[m] for m in members if m in run.phone_ids]
    delta.cleared = bool(step.cleared)
    for row in step.rows:
        if s.sources[row.source].keyed_by == "person":
            delta.person_rows.append(run.raw_persons[row.member])
        else:
            delta.phone_rows.append(run.raw_phones[row.member])
    return delta


# -- random scenarios ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_chained_updates_equal_fresh_verdicts_over_random_scenarios(scenario: Scenario) -> None:
    rules = list(scenario.rules)
    plans = [hm.Plan(rules, version="full"), hm.Plan(rules[::2], version="every other rule")]
    run = ScenarioRun(scenario)
    hour = scenario.evaluation_hour
    current: list[hm.Verdicts] = []
    previous: hm.Index | None = None
    for number, ((index, _), step) in enumerate(zip(run.versions(), scenario.steps, strict=True)):
        fresh = [hm.Verdicts(index, plan, TODAY, hour) for plan in plans]
        if previous is None:
            current = fresh
        else:
            touched = scenario_delta(run, step).touched(previous, index)
            current = [v.update(index, touched) for v in current]
            for k, (updated, want) in enumerate(zip(current, fresh, strict=True)):
                assert_same(updated, want, f"version {number} plan {k}")
        previous = index


# -- the real rule set over the source catalogue -----------------------------------------------

RULES = load_rule_set(DEFAULT_RULE_SET_PATH)
DAY = day_number(dt.date(2020, 12, 16))
POOL = 120  # ID numbers and phones that may appear
# counties the machine feeds and re-grades: two of each level the rules grade (low, medium, high)
GRADED = [
    c for level in (1, 2, 3) for c in sorted(c for c, v in COUNTY_LEVELS.items() if v == level)[:2]
]
DISTRICTS = sorted(TIANJIN_DISTRICTS)[:3]
COUNTIES = GRADED + DISTRICTS
SOURCE_NAMES = sorted(SOURCES)
PERSON_SOURCES = [n for n in SOURCE_NAMES if SOURCES[n].keyed_by == "person"]
PHONE_SOURCES = [n for n in SOURCE_NAMES if SOURCES[n].keyed_by == "phone"]


class ReplicaMachine(RuleBasedStateMachine):
    """Versions built through builders from random deltas; each published version is applied to
    the full and shared-only verdicts with `update`, and both must equal fresh ones."""

    def __init__(self) -> None:
        super().__init__()
        self.plans = [
            hm.Plan(RULES.plan_rules(), RULES.version),
            hm.Plan(RULES.shared_only().plan_rules(), RULES.shared_only().version),
        ]
        self.id_numbers = lines(hm.synthetic_id_numbers(POOL, 5))
        self.phones = lines(hm.synthetic_phones(POOL, 5))
        self.hour = DAY * 24
        self.fed: dict[str, list[str]] = {}  # identifiers ever fed to each source

    @initialize(
        persons=st.integers(1, 60),
        phones=st.lists(st.tuples(st.integers(0, POOL - 1), st.integers(0, 59)), max_size=100),
        hour_of_day=st.integers(0, 23),
    )
    def base(self, persons: int, phones: list[tuple[int, int]], hour_of_day: int) -> None:
        self.hour = DAY * 24 + hour_of_day
        builder = hm.Index(SECRET).builder()
        for name, src in SOURCES.items():
            builder.define_source(name, src.keyed_by, src.has_county, hourly=src.hourly)
        builder.add_persons("\n".join(self.id_numbers[:persons]).encode())
        for phone, holder in phones:
            builder.add_phone(self.phones[phone], holder % persons)
        for county, level in COUNTY_LEVELS.items():
            builder.set_county_level(county, level)
        self.index = builder.finish()
        self.verdicts = [hm.Verdicts(self.index, p, DAY, self.hour) for p in self.plans]
        self.builder = self.index.builder()
        self.delta = Delta()

    @rule(first=st.integers(0, POOL - 1), count=st.integers(1, 8))
    def register_persons(self, first: int, count: int) -> None:
        numbers = self.id_numbers[first : first + count]
        self.builder.add_persons("\n".join(numbers).encode())
        self.delta.person_rows += numbers  # a person already registered is found, not changed

    @rule(phone=st.integers(0, POOL - 1), holder=st.integers(0, POOL - 1))
    def link_phone(self, phone: int, holder: int) -> None:
        # the holder is registered first if new (and so evaluated as a new person)
        number = self.id_numbers[holder]
        self.builder.add_phone(self.phones[phone], self.builder.add_person(number))
        self.delta.relinked.append(self.phones[phone])

    @rule(phone=st.integers(0, POOL - 1))
    def unlink_phone(self, phone: int) -> None:
        self.builder.unlink_phone(self.phones[phone])
        self.delta.relinked.append(self.phones[phone])

    @rule(
        source=st.sampled_from(SOURCE_NAMES),
        rows=st.lists(
            st.tuples(
                st.integers(0, POOL - 1),
                st.none() | st.integers(-2, 24 * 30),
                st.sampled_from(COUNTIES),
            ),
            min_size=1,
            max_size=12,
        ),
    )
    def add_rows(self, source: str, rows: list[tuple[int, int | None, int]]) -> None:
        src = SOURCES[source]
        person_keyed = src.keyed_by == "person"
        identifiers = [(self.id_numbers if person_keyed else self.phones)[m] for m, _, _ in rows]
        counties = [c for _, _, c in rows] if src.has_county else None
        if src.hourly:
            hours = [None if back is None else self.hour - back for _, back, _ in rows]
            self.builder.add_rows_by_identifier(source, identifiers, counties=counties, hours=hours)
        else:
            days = [None if back is None else DAY - back // 24 for _, back, _ in rows]
            self.builder.add_rows_by_identifier(source, identifiers, days, counties)
        (self.delta.person_rows if person_keyed else self.delta.phone_rows).extend(identifiers)
        self.fed.setdefault(source, []).extend(identifiers)

    @precondition(lambda self: bool(self.fed))
    @rule(
        phone_keyed=st.booleans(),
        which=st.integers(0, 999),
        picks=st.lists(st.integers(0, 999), min_size=1, max_size=5),
    )
    def remove_rows(self, phone_keyed: bool, which: int, picks: list[int]) -> None:
        """Remove some members of a source fed before (by dense id, as a release from a list
        does), found among the identifiers ever fed to it; phone sources as often as person
        ones."""
        kind = "phone" if phone_keyed else "person"
        sources = [n for n in sorted(self.fed) if SOURCES[n].keyed_by == kind] or sorted(self.fed)
        source = sources[which % len(sources)]
        fed = self.fed[source]
        named = [fed[p % len(fed)] for p in picks]
        if SOURCES[source].keyed_by == "person":
            ids = person_ids(self.index, named)
            self.delta.removed_persons += ids
        else:
            hasher = self.index.hasher()
            keys = b"".join(hasher.phone_key(n) for n in named)
            ids = [f for f in from_u32(self.index.phone_ids_by_keys(keys)) if f != UNKNOWN]
            self.delta.removed_phones += ids
        self.builder.remove_rows(source, u32(sorted(set(ids))))

    @rule(county=st.sampled_from(COUNTIES), level=st.integers(0, 3))
    def regrade(self, county: int, level: int) -> None:
        self.builder.set_county_level(county, level)
        self.delta.counties.add(county)

    @precondition(lambda self: self.index.version % 4 == 3)
    @rule(source=st.sampled_from(SOURCE_NAMES))
    def clear_source(self, source: str) -> None:
        self.builder.clear_source(source)
        self.delta.cleared = True

    @rule()
    def publish(self) -> None:
        new = self.builder.finish()
        touched = self.delta.touched(self.index, new)
        self.verdicts = [v.update(new, touched) for v in self.verdicts]
        for k, (updated, plan) in enumerate(zip(self.verdicts, self.plans, strict=True)):
            assert_same(updated, hm.Verdicts(new, plan, DAY, self.hour), f"v{new.version} {k}")
        self.index, self.builder, self.delta = new, new.builder(), Delta()


ReplicaMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_replica_updates_with_the_default_rule_set = ReplicaMachine.TestCase


# -- refusals and the lookups ------------------------------------------------------------------

PLAN = hm.Plan([{"id": "cc", "colour": "red", "checks": [{"source": "contact", "days": 14}]}])


def small_index(secret: bytes = SECRET, order: slice = slice(None), persons: int = 20) -> hm.Index:
    builder = hm.Index(secret).builder()
    builder.define_source("contact", "person")
    builder.define_source("roaming", "phone", has_county=True)
    builder.add_persons("\n".join(lines(hm.synthetic_id_numbers(persons, 3))[order]).encode())
    return builder.finish(version=10)


def test_stale_foreign_and_shrunk_indexes_are_refused() -> None:
    base = small_index()
    verdicts = hm.Verdicts(base, PLAN, TODAY)
    builder = base.builder()
    builder.add_rows("contact", u32([3]), TODAY)
    later = verdicts.update(builder.finish(), u32([3]))
    assert later.colour(3) == hm.Colour.RED and verdicts.colour(3) == hm.Colour.GREEN

    with pytest.raises(hm.InvalidOperation, match="older than version 11"):
        later.update(base, b"")
    with pytest.raises(hm.InvalidOperation, match="another secret"):
        verdicts.update(small_index(OTHER_SECRET), b"")
    with pytest.raises(hm.InvalidOperation, match="numbers its persons differently"):
        verdicts.update(small_index(order=slice(None, None, -1)), b"")
    with pytest.raises(hm.InvalidOperation, match="fewer than the 20"):
        verdicts.update(small_index(persons=19), b"")
    with pytest.raises(hm.InvalidOperation, match="no person with id 20"):
        verdicts.update(base, u32([20]))
    with pytest.raises(hm.InvalidOperation, match="little-endian u32"):
        verdicts.update(base, b"\x01\x02")
    # the same version and an empty list: the same verdicts
    assert_same(verdicts.update(base, b""), verdicts)


def test_new_persons_are_evaluated_without_being_listed() -> None:
    base = small_index()
    verdicts = hm.Verdicts(base, PLAN, TODAY)
    builder = base.builder()
    newcomer = lines(hm.synthetic_id_numbers(21, 3))[20]
    builder.add_rows_by_identifier("contact", [newcomer], [TODAY])
    index = builder.finish()
    updated = verdicts.update(index, b"")
    assert index.person_count == 21
    assert updated.colour(20) == hm.Colour.RED
    assert updated.colour_counts() == (20, 0, 1)
    assert_same(updated, hm.Verdicts(index, PLAN, TODAY))


def test_the_lookups_a_replica_uses() -> None:
    builder = small_index().builder()
    numbers = lines(hm.synthetic_id_numbers(20, 3))
    phones = lines(hm.synthetic_phones(4, 3))
    ids = from_u32(builder.add_phones("\n".join(phones[:3]).encode(), u32([5, 5, 7])))
    spare = builder.add_phone(phones[3])
    builder.add_rows("roaming", u32([ids[0], spare]), TODAY, u32([120101, 120101]))
    builder.add_rows("roaming", u32([ids[2]]), None, u32([120102]))
    index = builder.finish()
    hasher = index.hasher()

    keys = hasher.person_key(numbers[4]) + bytes(16) + hasher.person_key(numbers[0])
    assert from_u32(index.person_ids_by_keys(keys)) == [4, UNKNOWN, 0]
    phone_keys = b"".join(hasher.phone_key(p) for p in phones) + bytes(16)
    assert from_u32(index.phone_ids_by_keys(phone_keys)) == [*ids, spare, UNKNOWN]
    assert index.person_ids_by_keys(b"") == b""
    with pytest.raises(hm.InvalidOperation, match="16-byte"):
        index.phone_ids_by_keys(bytes(17))

    everything = index.phone_ids_by_keys(phone_keys)
    assert from_u32(index.holders_of_phones(everything)) == [5, 7]  # unheld and unknown skipped
    assert from_u32(index.holders_of_phones(u32([ids[2], ids[0], ids[1]]))) == [5, 7]
    with pytest.raises(hm.InvalidOperation, match="no phone with id 4"):
        index.holders_of_phones(u32([4]))

    assert from_u32(index.persons_with_rows_in_counties([120101])) == [5]
    assert from_u32(index.persons_with_rows_in_counties([120101, 120102, 3])) == [5, 7]
    assert index.persons_with_rows_in_counties([]) == b""
    with pytest.raises(hm.InvalidOperation, match="county code 0"):
        index.persons_with_rows_in_counties([0])
