"""Every source of the default rule set drives its rule through the four real processes.

For every rule, feedgen's scenarios give a person it fires for, one just outside its window,
and for every clear one it clears, one whose clear is too old and (phone clears) one whose other
phone still counts. Each person registers at the declaration service; their rows arrive as a
feed at the risk index, or for the declared_* sources as today's declaration at the
declaration service. Then the display service's Show must give the colour and the reasons the
plain-Python reference gives for those rows, and Explain must report the same cleared rules.

Negative tests count to the hour: their rows are timed from one "now" taken at import, the ones
that must clear sit one hour inside their window (so an hour boundary passing during the run
cannot push them out), and the reference is evaluated at the hour the colour replica reports.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest
from healthcode.v1 import colour_pb2, common_pb2

from clients import feedgen
from clients.stack import Stack
from services._common.days import hour_number
from services._common.sources import SOURCES
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from services.rules.reference import Feed, Outcome, evaluate
from tests.e2e.rules_support import (
    OUTBOX,
    Stubs,
    colour_name,
    declarable,
    stubs,
    verdict_hour,
)
from tests.e2e.waits import SHANGHAI

NOW = dt.datetime.now(SHANGHAI)  # taken once
TODAY = NOW.date()
DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
SCENARIOS = feedgen.rule_scenarios(
    DEFAULT, TODAY, seed=8080, now_hour=hour_number(NOW), margin_hours=1
)


@pytest.fixture(scope="module")
def loaded(module_stack: Stack) -> Iterator[Stubs]:
    """Every scenario's person registered and every row delivered, the colour replica current."""
    with stubs(module_stack) as s:
        s.grade_counties(feedgen.COUNTY_LEVELS)
        people = [sc.person for sc in SCENARIOS]
        s.register(people)
        s.wait_registered(len(people), sum(len(p.phones) for p in people))
        fed: list[feedgen.Row] = []
        late_declarations: list[feedgen.Row] = []
        expected: Counter[str] = Counter()
        for sc in SCENARIOS:
            declared = [r for r in sc.rows if declarable(r, TODAY)]
            for r in sc.rows:
                expected[r["source"]] += 1
                if r in declared:
                    continue
                (late_declarations if r["source"].startswith("declared_") else fed).append(r)
            if declared:
                derived = s.declare(sc.person.id_number, declared)
                # The declaration service turned the answers into exactly these sources.
                assert set(derived) == {r["source"] for r in declared}, sc.name
        s.ingest(fed, "e2e-sources")
        s.ingest(late_declarations, "e2e-earlier-declarations", OUTBOX)
        s.wait_rows(expected)
        s.wait_colour()
        yield s


def test_the_scenarios_reach_every_source_of_the_default_rule_set() -> None:
    used = {r["source"] for sc in SCENARIOS for r in sc.rows}
    assert used == DEFAULT.sources()
    # ... and every declared source is driven through a real declaration at least once.
    declared = {r["source"] for sc in SCENARIOS for r in sc.rows if declarable(r, TODAY)}
    assert declared == {n for n in DEFAULT.sources() if n.startswith("declared_")}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[sc.name for sc in SCENARIOS])
def test_scenario_through_the_real_services(loaded: Stubs, scenario: feedgen.Scenario) -> None:
    person = scenario.person
    feed = Feed(scenario.rows, feedgen.COUNTY_LEVELS)

    def expected(verdict: colour_pb2.Verdict) -> Outcome:
        # What the rows mean at the hour (and day) the replica evaluated them.
        at = verdict_hour(verdict)
        return evaluate(DEFAULT, feed, person.id_number, person.phones, feedgen.hour_date(at), at)

    shown = loaded.show(person.id_number)
    v = shown.verdict
    want = expected(v)
    assert colour_name(v.colour) == want.colour, (scenario.name, v)
    counting = {r.rule_id for r in v.reasons if not r.cleared}
    assert counting == set(want.fired), scenario.name
    for rule_id in scenario.fires:
        assert rule_id in counting
    for rule_id in scenario.silent:
        assert rule_id not in counting
    for reason in v.reasons:
        rule = DEFAULT.rule(reason.rule_id)
        # The reason names a source the rule checks, and the day of its row.
        assert reason.source in {c.source for c in rule.checks}, reason
        assert bool(reason.day) == SOURCES[reason.source].dated, reason
        if SOURCES[reason.source].keyed_by == "phone":
            # R7: which phone, masked, never the number.
            assert reason.masked_phone in {_mask(p) for p in person.phones}, reason
    assert person.id_number not in str(shown)
    assert all(p not in str(shown) for p in person.phones)

    explained = loaded.explain(person.id_number)
    want = expected(explained.verdict)
    cleared = {r.rule_id for r in explained.rules if r.outcome == colour_pb2.RULE_OUTCOME_CLEARED}
    assert cleared == set(want.cleared), scenario.name
    for rule_id in scenario.cleared:
        assert rule_id in cleared
    fired = {r.rule_id for r in explained.rules if r.outcome == colour_pb2.RULE_OUTCOME_FIRED}
    assert fired == set(want.fired)
    for explained_rule in explained.rules:
        # Every rule says which rows made it fire, and what clears it.
        assert explained_rule.evidence, explained_rule.rule_id
        clears = DEFAULT.rule(explained_rule.rule_id).clears
        assert list(explained_rule.clearing_sources) == list(
            dict.fromkeys(c.source for c in clears)
        )


def test_the_shared_status_never_has_a_local_rule(loaded: Stubs) -> None:
    local = {r.id for r in DEFAULT.rules if r.scope == "local"}
    by_colour: defaultdict[int, int] = defaultdict(int)
    for sc in SCENARIOS:
        v = loaded.evaluate(sc.person.id_number, shared_only=True)
        by_colour[v.colour] += 1
        assert not ({r.rule_id for r in v.reasons} & local), sc.name
    assert by_colour[common_pb2.COLOUR_RED] and by_colour[common_pb2.COLOUR_GREEN]


def _mask(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:]
