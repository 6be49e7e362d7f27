"""The default rule set over generated people, evaluated by the plain-Python reference: every rule
fires for its person, stays quiet outside its window, and every clear clears what it should
(including the seed's two-SIM case). tests/matcher/test_default_rules.py runs the same scenarios
through the Rust matcher."""

from __future__ import annotations

from datetime import date

import pytest

from clients.feedgen import COUNTY_LEVELS, Person, Scenario, row, rule_scenarios
from services.rules import DEFAULT_RULE_SET_PATH, RuleSet, load_rule_set
from services.rules.reference import Feed, Outcome, evaluate

TODAY = date(2020, 12, 16)
DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
SCENARIOS = rule_scenarios(DEFAULT, TODAY)
SEVERITY = {"green": 0, "yellow": 1, "red": 2}


def outcome(rs: RuleSet, scenario: Scenario) -> Outcome:
    feed = Feed(scenario.rows, COUNTY_LEVELS)
    return evaluate(rs, feed, scenario.person.id_number, scenario.person.phones, TODAY)


def test_there_is_a_scenario_for_every_rule_and_every_clear() -> None:
    names = {s.name for s in SCENARIOS}
    for rule in DEFAULT.rules:
        assert f"{rule.id}: fires" in names
        for c in rule.clears:
            assert f"{rule.id}: cleared by {c.source}" in names


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario) -> None:
    got = outcome(DEFAULT, scenario)
    for rule_id in scenario.fires:
        assert rule_id in got.fired
        assert SEVERITY[got.colour] >= SEVERITY[DEFAULT.rule(rule_id).colour]
    for rule_id in scenario.cleared:
        assert rule_id in got.cleared
    for rule_id in scenario.silent:
        assert rule_id not in got.fired
    # The colour is the most severe rule that fired.
    expected = max((SEVERITY[DEFAULT.rule(r).colour] for r in got.fired), default=0)
    assert SEVERITY[got.colour] == expected


def test_two_sims_second_phone_turns_the_holder_red_and_its_verification_clears_it() -> None:
    me = Person("120101199001011239", ("13800000001", "13900000002"))
    roaming = row("telecom_roaming", phone="13900000002", day=TODAY, county=210211)
    feed = Feed([roaming], COUNTY_LEVELS)
    red = evaluate(DEFAULT, feed, me.id_number, me.phones, TODAY)
    assert red.colour == "red"
    assert {"high-risk-county-roaming", "medium-risk-county-roaming"} <= set(red.fired)
    verified = row("phone_community_verified", phone="13900000002", day=TODAY)
    feed = Feed([roaming, verified], COUNTY_LEVELS)
    green = evaluate(DEFAULT, feed, me.id_number, me.phones, TODAY)
    assert green.colour == "green"
    assert "high-risk-county-roaming" in green.cleared


def test_verifying_the_wrong_phone_changes_nothing() -> None:
    me = Person("120101199001011239", ("13800000001", "13900000002"))
    rows = [
        row("telecom_roaming", phone="13900000002", day=TODAY, county=210211),
        row("phone_community_verified", phone="13800000001", day=TODAY),
    ]
    assert evaluate(DEFAULT, Feed(rows, COUNTY_LEVELS), me.id_number, me.phones, TODAY).colour == (
        "red"
    )


def test_exam_candidate_from_a_high_risk_county_turns_green_on_a_verified_negative_test() -> None:
    me = Person("370202200201011237", ())
    travel = row("declared_travel", id_number=me.id_number, day=TODAY, county=370213)
    assert evaluate(DEFAULT, Feed([travel], COUNTY_LEVELS), me.id_number, (), TODAY).colour == "red"
    nat = row("nat_negative", id_number=me.id_number, day=TODAY)
    feed = Feed([travel, nat], COUNTY_LEVELS)
    assert evaluate(DEFAULT, feed, me.id_number, (), TODAY).colour == "green"


def test_release_from_centralised_quarantine_leaves_home_monitoring_yellow() -> None:
    me = "120101199001011239"
    rows = [
        row("inbound_traveller", id_number=me, day=date(2020, 12, 3)),  # 14th day
        row("quarantine_released", id_number=me, day=TODAY),
    ]
    got = evaluate(DEFAULT, Feed(rows, COUNTY_LEVELS), me, (), TODAY)
    assert got.colour == "yellow"
    assert got.fired == ("inbound-home-monitoring",)
    assert "inbound-quarantine" in got.cleared
    # And the home monitoring is Tianjin's "+7": other provinces see green.
    shared = evaluate(DEFAULT.shared_only(), Feed(rows, COUNTY_LEVELS), me, (), TODAY)
    assert shared.colour == "green"
