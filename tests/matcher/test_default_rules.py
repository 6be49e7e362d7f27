"""The default rule set through the Rust matcher: every rule fires for the right person with the
right colour, every clearing source clears what it should, the seed's two-SIM case, and the
shared-only plan (R6: the seed's Dalian case). The plain-Python reference
(services.rules.reference) is the oracle, for the scenarios and for a random population."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from clients.feedgen import (
    COUNTY_LEVELS,
    Person,
    Scenario,
    generate_feed,
    load_into,
    make_population,
    row,
    rule_scenarios,
)
from services.rules import DEFAULT_RULE_SET_PATH, RuleSet, load_rule_set
from services.rules.reference import Feed, Outcome, evaluate

# Runs once the Rust extension is built; the rest of the rules work is tested in tests/unit.
hm = pytest.importorskip("healthcode_matcher")

TODAY = date(2020, 12, 16)
SECRET = bytes(range(32))
COLOURS = ("green", "yellow", "red")
DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
SCENARIOS = rule_scenarios(DEFAULT, TODAY, seed=17)


def build_index(people: list[Person], rows: list[dict[str, object]]) -> Any:
    builder = hm.Index(SECRET).builder()
    load_into(builder, people, rows, COUNTY_LEVELS)
    return builder.finish()


def verdicts(index: Any, rs: RuleSet) -> Any:
    return hm.Verdicts(index, hm.Plan(rs.plan_rules(), rs.version), hm.day_number(TODAY))


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
