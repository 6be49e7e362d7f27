"""The default rule set through the Rust matcher: every rule fires for the right person with the
right colour, every clearing source clears what it should, the seed's two-SIM case, and the
shared-only plan (R6: the seed's Dalian case). The plain-Python reference
(services.rules.reference) is the oracle, for the scenarios and for a random population, at
several hours of the day: negative tests (an hourly source) count to the hour."""

from __future__ import annotations

import random
import sys
from array import array
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

import pytest

from clients.feedgen import (
    COUNTY_LEVELS,
    Person,
    Scenario,
    generate_feed,
    make_population,
    row,
    rule_scenarios,
)
from services._common.days import day_number
from services._common.sources import SOURCES
from services.rules import DEFAULT_RULE_SET_PATH, RuleSet, load_rule_set
from services.rules.reference import Feed, Outcome, evaluate, hour_number

# Runs once the Rust extension is built; the rest of the rules work is tested in tests/unit.
hm = pytest.importorskip("healthcode_matcher")

TODAY = date(2020, 12, 16)
SECRET = bytes(range(32))
COLOURS = ("green", "yellow", "red")
DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
SCENARIOS = rule_scenarios(DEFAULT, TODAY, seed=17)


def _u32(values: Iterable[int]) -> bytes:
    packed = array("I", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def _day(text: str) -> int:
    return day_number(date.fromisoformat(text))


def build_index(people: Sequence[Person], rows: Iterable[dict[str, Any]]) -> Any:
    """Every catalogue source (hourly ones by hour), the people with their phones, the rows and
    the county grading. A row of an hourly source is bucketed at its "hour", or at 00:00 of its
    "day" when it carries only a day (as the oracle reads it)."""
    builder = hm.Index(SECRET).builder()
    for name, src in SOURCES.items():
        builder.define_source(name, src.keyed_by, src.has_county, hourly=src.hourly)
    if people:
        ids = array("I")
        ids.frombytes(builder.add_persons("\n".join(p.id_number for p in people).encode()))
        if sys.byteorder != "little":
            ids.byteswap()
        linked = [(ph, pid) for p, pid in zip(people, ids, strict=True) for ph in p.phones]
        if linked:
            phones = "\n".join(ph for ph, _ in linked).encode()
            builder.add_phones(phones, _u32(pid for _, pid in linked))
    by_source: dict[str, tuple[list[str], list[int | None], list[int]]] = {}
    for r in rows:
        src = SOURCES[r["source"]]
        idents, times, counties = by_source.setdefault(r["source"], ([], [], []))
        idents.append(r["id_number"] if "id_number" in r else r["phone"])
        day = r.get("day")
        if src.hourly:
            hour = r.get("hour")
            times.append(hour if hour is not None else None if day is None else _day(day) * 24)
        else:
            times.append(None if day is None else _day(day))
        if src.has_county:
            counties.append(int(r["county"]))
    for name, (idents, times, counties) in by_source.items():
        src = SOURCES[name]
        where = counties if src.has_county else None
        if src.hourly:
            builder.add_rows_by_identifier(name, idents, counties=where, hours=times)
        else:
            builder.add_rows_by_identifier(name, idents, times, where)
    for county, level in COUNTY_LEVELS.items():
        builder.set_county_level(county, level)
    return builder.finish()


def verdicts(index: Any, rs: RuleSet, hour: int | None = None) -> Any:
    plan = hm.Plan(rs.plan_rules(), rs.version)
    if hour is None:
        return hm.Verdicts(index, plan, day_number(TODAY))
    return hm.Verdicts(index, plan, day_number(TODAY), hour)


@pytest.fixture(scope="module")
def scenario_index() -> Any:
    rows = [r for s in SCENARIOS for r in s.rows]
    return build_index([s.person for s in SCENARIOS], rows)


@pytest.fixture(scope="module")
def full(scenario_index: Any) -> Any:
    return verdicts(scenario_index, DEFAULT)


@pytest.fixture(scope="module")
def shared(scenario_index: Any) -> Any:
    return verdicts(scenario_index, DEFAULT.shared_only())


def reference(rs: RuleSet, s: Scenario) -> Outcome:
    feed = Feed(s.rows, COUNTY_LEVELS)
    return evaluate(rs, feed, s.person.id_number, s.person.phones, TODAY)


def test_the_default_set_compiles_to_a_plan() -> None:
    plan = hm.Plan(DEFAULT.plan_rules(), DEFAULT.version)
    assert plan.rule_ids == list(DEFAULT.rule_ids)
    assert plan.version == DEFAULT.version


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_through_the_matcher(full: Any, scenario: Scenario) -> None:
    v = full.evaluate_id_number(scenario.person.id_number)
    assert v is not None
    for rule_id in scenario.fires:
        assert rule_id in v.rules
        assert v.colour >= COLOURS.index(DEFAULT.rule(rule_id).colour)
    for rule_id in scenario.cleared:
        assert rule_id in v.cleared
    for rule_id in scenario.silent:
        assert rule_id not in v.rules
    want = reference(DEFAULT, scenario)
    assert (COLOURS[v.colour], tuple(v.rules), tuple(v.cleared)) == (
        want.colour,
        want.fired,
        want.cleared,
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_shared_plan_sees_only_shared_rules(shared: Any, scenario: Scenario) -> None:
    v = shared.evaluate_id_number(scenario.person.id_number)
    assert v is not None
    assert all(DEFAULT.rule(r).scope == "shared" for r in v.rules)
    want = reference(DEFAULT.shared_only(), scenario)
    assert (COLOURS[v.colour], tuple(v.rules)) == (want.colour, want.fired)


def test_dalian_case_a_tianjin_only_red_keeps_the_exported_status_green(
    full: Any, shared: Any
) -> None:
    local_red = [
        s
        for s in SCENARIOS
        if s.fires
        and DEFAULT.rule(s.fires[0]).scope == "local"
        and DEFAULT.rule(s.fires[0]).colour == "red"
        and s.name.endswith(": fires")
    ]
    assert {s.fires[0] for s in local_red} >= {"home-quarantine", "high-risk-county-travel"}
    for s in local_red:
        assert full.colour(full.index.person_id(s.person.id_number)) == 2
        exported = shared.evaluate_id_number(s.person.id_number)
        assert exported.colour < 2, s.name
    quarantined = next(s for s in local_red if s.fires[0] == "home-quarantine")
    assert shared.evaluate_id_number(quarantined.person.id_number).colour == 0


def test_two_sim_case_names_the_phone_and_its_verification_clears_it() -> None:
    me = Person("120101199001011239", ("13800000001", "13900000002"))
    roaming = row("telecom_roaming", phone="13900000002", day=TODAY, county=210211)
    index = build_index([me], [roaming])
    v = verdicts(index, DEFAULT)
    pid = index.person_id(me.id_number)
    verdict = v.evaluate(pid)
    assert verdict.colour == 2
    assert "high-risk-county-roaming" in verdict.rules
    evidence = [e for e in v.explain(pid) if e.rule_id == "high-risk-county-roaming"]
    assert [(e.source, e.phone_id, e.county, e.role) for e in evidence] == [
        ("telecom_roaming", index.phone_id("13900000002"), 210211, "fired")
    ]

    verified = row("phone_community_verified", phone="13900000002", day=TODAY)
    index = build_index([me], [roaming, verified])
    v = verdicts(index, DEFAULT)
    pid = index.person_id(me.id_number)
    verdict = v.evaluate(pid)
    assert verdict.colour == 0
    assert "high-risk-county-roaming" in verdict.cleared
    roles = {e.role for e in v.explain(pid) if e.rule_id == "high-risk-county-roaming"}
    assert "phone_cleared" in roles


def test_random_population_agrees_with_the_reference() -> None:
    people = make_population(400, seed=23, numbers="python")
    rows = list(generate_feed(people, TODAY, seed=23, rate=0.04))
    index = build_index(people, rows)
    feed = Feed(rows, COUNTY_LEVELS)
    for rs in (DEFAULT, DEFAULT.shared_only()):
        v = verdicts(index, rs)
        counts = [0, 0, 0]
        for p in people:
            got = v.evaluate_id_number(p.id_number)
            want = evaluate(rs, feed, p.id_number, p.phones, TODAY)
            assert (COLOURS[got.colour], tuple(got.rules), tuple(got.cleared)) == (
                want.colour,
                want.fired,
                want.cleared,
            ), p.id_number
            counts[got.colour] += 1
        assert tuple(counts) == v.colour_counts()
        assert counts[1] and counts[2], "the feed should produce some yellow and some red"


def _timed_tests(people: Sequence[Person], now: int, seed: int) -> list[dict[str, Any]]:
    """Negative tests at exact hours: on every window edge of the default set (24, 48, 72, 168
    hours, and one hour either side) relative to `now`, and at random hours of the last week."""
    rng = random.Random(seed)
    edges = [w + d for w in (24, 48, 72, 168) for d in (-1, 0, 1)]
    out = []
    for p in people:
        if rng.random() < 0.5:
            continue
        back = rng.choice(edges) if rng.random() < 0.7 else rng.randint(-3, 200)
        hour = now - back
        out.append(row("nat_negative", id_number=p.id_number, day=_date_of(hour)) | {"hour": hour})
    return out


def _date_of(hour: int) -> date:
    return date(1970, 1, 1) + timedelta(days=hour // 24)


@pytest.mark.parametrize("hour_of_day", [0, 9, 23])
def test_negative_tests_clear_to_the_hour_like_the_reference(hour_of_day: int) -> None:
    now = hour_number(TODAY, hour_of_day)
    people = make_population(300, seed=31, numbers="python")
    raising = [
        r for r in generate_feed(people, TODAY, seed=31, rate=0.08) if r["source"] != "nat_negative"
    ]
    rows = raising + _timed_tests(people, now, seed=hour_of_day)
    index = build_index(people, rows)
    feed = Feed(rows, COUNTY_LEVELS)
    v = verdicts(index, DEFAULT, now)
    assert v.hour == now
    cleared_by_a_test = 0
    for p in people:
        got = v.evaluate_id_number(p.id_number)
        want = evaluate(DEFAULT, feed, p.id_number, p.phones, TODAY, now)
        assert (COLOURS[got.colour], tuple(got.rules), tuple(got.cleared)) == (
            want.colour,
            want.fired,
            want.cleared,
        ), p.id_number
        cleared_by_a_test += bool(got.cleared)
    assert cleared_by_a_test, "some negative test should clear something"


def test_a_48_hour_test_expires_on_the_hour() -> None:
    me = Person("120101199001011239", ("13800000001",))
    now = hour_number(TODAY, 10)
    # Travel to a medium-risk county (cleared by a negative test within 48 hours).
    travel = row("declared_travel", id_number=me.id_number, day=TODAY, county=110106)
    for back, cleared in [(47, True), (48, False)]:
        test = row("nat_negative", id_number=me.id_number, day=_date_of(now - back))
        index = build_index([me], [travel, test | {"hour": now - back}])
        got = verdicts(index, DEFAULT, now).evaluate_id_number(me.id_number)
        assert ("medium-risk-county-travel" in got.cleared) is cleared, back
        assert ("medium-risk-county-travel" in got.rules) is not cleared, back
