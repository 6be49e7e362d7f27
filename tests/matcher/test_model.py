"""Model test: the Rust matcher agrees with the plain-Python reference.

Random populations, phone links (moved and unlinked between versions), person / phone / county
sources (fed by dense id or by raw identifier, with first-sight registration; daily or hourly),
rows on random days or hours (some in the future, some undated, many exactly on a window's
edge), county level changes, removals, cleared sources, and random plans (any / all, day and
hour windows, clears, min_level) evaluated at a random hour. After every index version three
evaluators must give the same colour, fired mask and cleared mask for every person: the Rust
`Verdicts` (evaluate, colour, evaluate_many, colour_counts, rule_counts), the reference reading
the Rust index, and the reference reading a pure-Python model of the same scenario (which also
proves the Rust index stored the right buckets and links).
"""

from __future__ import annotations

from typing import Any

import healthcode_matcher as hm
import pytest
from healthcode_matcher.reference import MemoryIndexView, ReferenceEvaluator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matcher_support import (
    SECRET,
    TODAY,
    Scenario,
    ScenarioRun,
    compare_everything,
    scenarios,
    u32,
)
from pyroaring import BitMap


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_matcher_agrees_with_reference(scenario: Scenario) -> None:
    run = ScenarioRun(scenario)
    for index, model in run.versions():
        verdicts = compare_everything(index, model, scenario.rules, TODAY, scenario.hour)
        check_evidence(index, model, verdicts, scenario.rules, scenario.hour)
        non_green = BitMap.deserialize(verdicts.non_green())
        assert non_green == BitMap(
            p for p in range(index.person_count) if verdicts.colour(p) != hm.Colour.GREEN
        )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenarios(max_persons=25, max_rules=8),
    st.integers(TODAY - 40, TODAY + 10),
    st.none() | st.integers(0, 23),
)
def test_agreement_holds_on_any_evaluation_day(
    scenario: Scenario, today: int, hour_of_day: int | None
) -> None:
    hour = None if hour_of_day is None else today * 24 + hour_of_day
    for index, model in ScenarioRun(scenario).versions():
        compare_everything(index, model, scenario.rules, today, hour)


def check_evidence(
    index: hm.Index,
    model: MemoryIndexView,
    verdicts: hm.Verdicts,
    rules: tuple[dict[str, Any], ...],
    hour: int | None = None,
) -> None:
    """Every piece of evidence is true of the data, and every fired or cleared rule has some."""
    by_id = {rule["id"]: rule for rule in rules}
    traits = {name: (kind, has_county) for name, kind, has_county in model.sources()}
    ref = ReferenceEvaluator(model, rules, TODAY, hour)
    for person in range(index.person_count):
        verdict = verdicts.evaluate(person)
        evidence = verdicts.explain(person)
        phones = set(model.phones_of(person))
        fired_by = {e.rule_id for e in evidence if e.role == "fired"}
        cleared_by = {e.rule_id for e in evidence if e.role in ("cleared", "phone_cleared")}
        for rule_id in verdict.rules:
            assert rule_id in fired_by, f"no evidence for fired rule {rule_id} of {person}"
        for rule_id in verdict.cleared:
            assert rule_id in cleared_by, f"no evidence for cleared rule {rule_id} of {person}"
        for item in evidence:
            check_one_evidence(item, by_id[item.rule_id], traits, phones, person, model, ref)


def check_one_evidence(
    item: hm.Evidence,
    rule: dict[str, Any],
    traits: dict[str, tuple[str, bool]],
    phones: set[int],
    person: int,
    model: MemoryIndexView,
    ref: ReferenceEvaluator,
) -> None:
    """ "fired": a raising check matched (person, or a linked phone not phone-cleared);
    "phone_cleared": a raising check matched on a linked phone that a phone clear covers;
    "cleared": a person-keyed clearing check matched."""
    assert item.role in ("fired", "cleared", "phone_cleared"), item.role
    checks = rule.get("clears", []) if item.role == "cleared" else rule["checks"]
    candidates = [c for c in checks if c["source"] == item.source]
    assert candidates, f"{item.role} evidence names {item.source}, not in {rule['id']}"
    kind, has_county = traits[item.source]
    assert (item.county is not None) == has_county, f"county of {item} vs its source"
    if kind == "phone":
        assert item.role != "cleared", "a phone clear shows on the phone's own evidence"
        assert item.phone_id in phones, f"evidence phone {item.phone_id} not linked"
        member = item.phone_id
        phone_clear = [
            ref.window_union(c["source"], c.get("days"), c.get("min_level"), hours=c.get("hours"))
            for c in rule.get("clears", [])
            if traits[c["source"]][0] == "phone"
        ]
        cleared = any(member in bm for bm in phone_clear)
        assert cleared == (item.role == "phone_cleared"), f"{item.role} on phone {member}"
    else:
        assert item.phone_id is None and item.role != "phone_cleared"
        member = person
    # An hourly source's evidence names the hour, and its day is that hour's day.
    if model.source_is_hourly(item.source):
        when = item.hour
        assert item.day == (None if when is None else when // 24), f"day {item.day} of {when}"
    else:
        when = item.day
        assert item.hour is None, f"hour {item.hour} on evidence from daily {item.source}"
    assert any(evidence_is_true(model, ref, c, member, when, item.county) for c in candidates), (
        f"evidence {rule['id']}/{item.source}/{when}/{item.county} is not in the data"
    )


def evidence_is_true(
    model: MemoryIndexView,
    ref: ReferenceEvaluator,
    check: dict[str, Any],
    member: int,
    when: int | None,
    county: int | None,
) -> bool:
    """The member has a row at `when` (a day, or an hour on an hourly source; in `county`, of a
    level the check accepts) inside the check's window, and `when` is the latest dated row
    there ("the latest day in the window with a row"); None only when the member has no dated
    row in the window."""
    source = check["source"]
    min_level = check.get("min_level")
    levels = model.county_levels()
    if county is not None and min_level is not None and levels.get(county, 0) < min_level:
        return False
    span = ref.window_span(source, check.get("days"), check.get("hours"))
    end = ref.window_end(source)
    lowest = None if span is None else end - span + 1
    rows_at = [
        candidate
        for candidate in model.source_days(source)
        if (candidate is None or lowest is None or lowest <= candidate <= end)
        and member in BitMap.deserialize(model.source_bitmap(source, candidate, county))
    ]
    if when not in rows_at:
        return False
    dated = [d for d in rows_at if d is not None]
    return when == max(dated) if dated else when is None


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31), st.integers(1, 3), st.integers(0, 23))
def test_large_population_agrees_in_batch(seed: int, min_level: int, hour_of_day: int) -> None:
    """Thousands of persons, so the parallel (rayon) paths of `Verdicts` and `evaluate_many`
    run; every verdict still matches the reference. Negative tests are hourly."""
    import random

    rng = random.Random(seed)
    persons, phones, counties = 20_000, 26_000, 40
    builder = hm.Index(b"\x07" * 32).builder()
    builder.add_persons(hm.synthetic_id_numbers(persons, seed))
    holders = [rng.randrange(persons) for _ in range(phones)]
    builder.add_phones(hm.synthetic_phones(phones, seed), u32(holders))
    model = MemoryIndexView(person_count=persons)
    for phone, holder in enumerate(holders):
        model.link_phone(phone, holder)
    specs = [
        ("confirmed", "person", False, 300),
        ("contact", "person", False, 3_000),
        ("nat_negative", "person", False, 6_000),
        ("travel", "person", True, 8_000),
        ("roaming", "phone", True, 9_000),
        ("phone_verified", "phone", False, 2_000),
    ]
    now = TODAY * 24 + hour_of_day
    for name, keyed, has_county, size in specs:
        hourly = name == "nat_negative"
        builder.define_source(name, keyed, has_county, hourly=hourly)
        model.add_source(name, keyed, has_county, hourly=hourly)
        limit = persons if keyed == "person" else phones
        if hourly:
            # Every hour from four days back to two ahead, so each window edge has rows.
            times: list[int | None] = [None, *range(now - 96, now + 3)]
            per_bucket = size // 40
        else:
            times = [None, *range(TODAY - 20, TODAY + 1, 3)]
            per_bucket = size // 8
        for at in times:
            ids = rng.sample(range(limit), per_bucket)
            where = [rng.randrange(1, counties + 1) for _ in ids] if has_county else None
            packed = u32(where) if where else None
            if hourly:
                builder.add_rows(name, u32(ids), counties=packed, hour=at)
                model.add_rows(name, ids, counties=where, hour=at)
            else:
                builder.add_rows(name, u32(ids), at, packed)
                model.add_rows(name, ids, at, where)
    for county in rng.sample(range(1, counties + 1), 12):
        level = rng.randint(1, 3)
        builder.set_county_level(county, level)
        model.set_county_level(county, level)
    index = builder.finish()
    rules: list[dict[str, Any]] = [
        {"id": "confirmed", "colour": "red", "checks": [{"source": "confirmed", "days": 14}]},
        {
            "id": "contact",
            "colour": "yellow",
            "checks": [{"source": "contact", "days": 14}],
            "clears": [{"source": "nat_negative", "hours": 48}],
        },
        {
            "id": "risk-area",
            "colour": "yellow",
            "match": "any",
            "checks": [
                {"source": "travel", "days": 14, "min_level": min_level},
                {"source": "roaming", "days": 14, "min_level": min_level},
            ],
            "clears": [{"source": "phone_verified"}, {"source": "nat_negative", "days": 2}],
        },
        {
            "id": "confirmed-recent-test",
            "colour": "yellow",
            "checks": [{"source": "confirmed"}],
            "clears": [{"source": "nat_negative", "hours": 1}],
        },
        {
            "id": "contact-and-travel",
            "colour": "red",
            "match": "all",
            "checks": [{"source": "contact", "days": 7}, {"source": "travel", "days": 7}],
        },
    ]
    compare_everything(index, model, rules, TODAY, now)
    # A level change alone moves verdicts: raise every county and compare again.
    builder = index.builder()
    for county in range(1, counties + 1):
        builder.set_county_level(county, 3)
        model.set_county_level(county, 3)
    compare_everything(builder.finish(), model, rules, TODAY, now)


def window_case(days: int, today: int) -> tuple[hm.Index, list[dict[str, Any]]]:
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(3, 1))
    builder.define_source("s", "person")
    builder.add_rows("s", u32([0]), 5)
    builder.add_rows("s", u32([1]), today)
    builder.add_rows("s", u32([2]), None)
    return builder.finish(), [
        {"id": "r", "colour": "red", "checks": [{"source": "s", "days": days}]}
    ]


@pytest.mark.parametrize(("days", "today"), [(1, 5), (96, 100), (100, 100), (30_000, 100)])
def test_window_edges(days: int, today: int) -> None:
    index, rules = window_case(days, today)
    model = MemoryIndexView(person_count=3)
    model.add_source("s", "person")
    for person, day in [(0, 5), (1, today), (2, None)]:
        model.add_rows("s", [person], day)
    compare_everything(index, model, rules, today)


def test_a_window_longer_than_history_covers_every_dated_row() -> None:
    # once a u32 overflow in the window test (`day + n > today`) made such a window miss rows
    index, rules = window_case(2**32 - 1, 100)
    verdicts = hm.Verdicts(index, hm.Plan(rules), 100)
    assert [verdicts.colour(p) for p in range(3)] == [hm.Colour.RED] * 3
