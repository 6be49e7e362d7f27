"""The seed's three cases, end to end through the four real processes (one stack for the module;
each test has its own people):

- Dalian: a Tianjin-only red rule never turns the status exported to other provinces red (R6);
- two SIMs: roaming of a second phone in the holder's name turns the holder red, the reason
  names the masked phone and the source, and community verification of that phone clears it;
- the exam candidate: a verified negative test turns the code green on the very next display
  once it is in the index the colour replica serves (R8);

and a rule set dated a few seconds ahead that activates by itself (R5).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from healthcode.v1 import colour_pb2, common_pb2

from clients import feedgen
from clients.stack import Stack
from services._common.days import format_hour, hour_number
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.e2e.rules_support import ADMIN, Stubs, stubs
from tests.e2e.waits import SHANGHAI, eventually, today

DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
PEOPLE = feedgen.make_population(8, seed=9191, second_sim_rate=1.0, no_phone_rate=0.0)
DALIAN_HIGH = 210211  # 辽宁省大连市甘井子区, graded high in feedgen.COUNTIES
QINGDAO_HIGH = 370213
RED, YELLOW, GREEN = common_pb2.COLOUR_RED, common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_GREEN


@pytest.fixture(scope="module")
def services(module_stack: Stack) -> Iterator[Stubs]:
    with stubs(module_stack) as s:
        s.grade_counties(feedgen.COUNTY_LEVELS)
        s.register(PEOPLE)
        s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
        s.wait_colour()
        yield s


def mask(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:]


def test_dalian_a_tianjin_only_red_never_reaches_the_exported_status(services: Stubs) -> None:
    traveller, listed = PEOPLE[0], PEOPLE[1]
    # A stay in a high-risk Dalian county (declared) and a Tianjin home-quarantine list: both
    # red in Tianjin by local rules only.
    services.declare(
        traveller.id_number,
        [
            feedgen.row(
                "declared_travel", id_number=traveller.id_number, day=_today(), county=DALIAN_HIGH
            )
        ],
    )
    services.ingest(
        [feedgen.row("home_quarantine", id_number=listed.id_number)], "dalian-district-list"
    )
    services.wait_rows({"declared_travel": 1, "home_quarantine": 1})
    services.wait_colour()

    here = services.show(traveller.id_number).verdict
    assert here.colour == RED
    assert "high-risk-county-travel" in {r.rule_id for r in here.reasons if not r.cleared}
    exported = services.evaluate(traveller.id_number, shared_only=True)
    # Other provinces see the national grading's yellow, never Tianjin's red.
    assert exported.colour == YELLOW, exported
    assert {r.rule_id for r in exported.reasons} == {"medium-risk-county-travel"}
    assert exported.rule_set_version.endswith("+shared")

    assert services.show(listed.id_number).verdict.colour == RED
    assert services.evaluate(listed.id_number, shared_only=True).colour == GREEN
    explained = services.explain(listed.id_number, shared_only=True)
    assert explained.rules == [] and explained.verdict.colour == GREEN


def test_two_sims_the_second_phone_turns_the_holder_red_and_its_verification_clears_it(
    services: Stubs,
) -> None:
    holder = PEOPLE[2]
    own, second = holder.phones
    roaming = feedgen.row("telecom_roaming", phone=second, day=_today(), county=DALIAN_HIGH)
    services.wait_colour(services.ingest([roaming], "telecom-2sim"))

    red = services.show(holder.id_number)
    assert red.verdict.colour == RED
    counting = [r for r in red.verdict.reasons if not r.cleared]
    assert {r.rule_id for r in counting} == {
        "high-risk-county-roaming",
        "medium-risk-county-roaming",
    }
    # R7: the person sees which source and which phone: the second one, masked.
    assert {(r.source, r.masked_phone, r.county) for r in counting} == {
        ("telecom_roaming", mask(second), DALIAN_HIGH)
    }
    assert second not in str(red) and own not in str(red)

    # Verifying the holder's own phone changes nothing: the risk came through the other one.
    wrong = feedgen.row("phone_community_verified", phone=own, day=_today())
    services.wait_colour(services.ingest([wrong], "community-2sim-wrong-phone"))
    assert services.show(holder.id_number).verdict.colour == RED

    verified = feedgen.row("phone_community_verified", phone=second, day=_today())
    services.wait_colour(services.ingest([verified], "community-2sim"))
    green = services.show(holder.id_number)
    assert green.verdict.colour == GREEN, green.verdict
    assert {(r.rule_id, r.masked_phone, r.cleared_by) for r in green.verdict.reasons} == {
        ("high-risk-county-roaming", mask(second), "phone_community_verified"),
        ("medium-risk-county-roaming", mask(second), "phone_community_verified"),
    }
    explained = services.explain(holder.id_number)
    high = next(r for r in explained.rules if r.rule_id == "high-risk-county-roaming")
    assert high.outcome == colour_pb2.RULE_OUTCOME_CLEARED
    assert [(e.masked_phone, e.phone_cleared_by) for e in high.evidence] == [
        (mask(second), "phone_community_verified")
    ]
    assert set(explained.masked_phones) == {mask(own), mask(second)}


def test_exam_candidate_a_verified_negative_test_turns_the_next_display_green(
    services: Stubs,
) -> None:
    candidate = PEOPLE[3]
    services.declare(
        candidate.id_number,
        [
            feedgen.row(
                "declared_travel",
                id_number=candidate.id_number,
                day=_today() - dt.timedelta(days=3),
                county=QINGDAO_HIGH,
            )
        ],
    )
    eventually(
        "the candidate's declared travel to reach the colour replica",
        lambda: services.evaluate(candidate.id_number).colour,
        lambda colour: colour == RED,
    )
    at_the_gate = services.show(candidate.id_number)
    assert at_the_gate.verdict.colour == RED
    assert {m.rule_id for m in at_the_gate.verdict.remedies} >= {"high-risk-county-travel"}
    remedy = next(m for m in at_the_gate.verdict.remedies if m.rule_id == "high-risk-county-travel")
    assert "nat_negative" in remedy.clearing_sources

    # 30 minutes before the exam: the lab's verified negative result, sampled two hours ago
    # (timed, as the lab sends it: "within 48 hours" counts hours), is ingested ...
    sampled = dt.datetime.now(SHANGHAI) - dt.timedelta(hours=2)
    lab_row = {
        "source": "nat_negative",
        "id_number": candidate.id_number,
        "at": sampled.isoformat(),
    }
    version = services.ingest([lab_row], "lab-exam-candidate")
    # ... and the very next display, naming the version the ingest's reply gave (read your
    # writes), is green: no waiting on the client's side, no second try.
    green = services.show(candidate.id_number, min_index_version=version)
    assert green.verdict.colour == GREEN, green.verdict
    assert green.verdict.index_version >= version
    assert ("high-risk-county-travel", True, "nat_negative") in {
        (r.rule_id, r.cleared, r.cleared_by) for r in green.verdict.reasons
    }
    # The exam gate scans that code and sees the live green.
    assert services.scan(green.token).verdict.colour == GREEN
    # The support desk sees which test, and its hour.
    rule = next(
        r
        for r in services.explain(candidate.id_number).rules
        if r.rule_id == "high-risk-county-travel"
    )
    assert [(e.source, e.hour) for e in rule.cleared_by] == [
        ("nat_negative", format_hour(hour_number(sampled)))
    ]


def test_a_future_dated_rule_set_activates_by_itself(services: Stubs) -> None:
    resident = PEOPLE[4]
    version = services.ingest(
        [feedgen.row("sealed_compound", id_number=resident.id_number)], "district-sealed"
    )
    services.wait_colour(version)
    assert services.evaluate(resident.id_number).colour == RED

    # The district relaxes sealed compounds to yellow from a moment just ahead.
    starts = dt.datetime.now(SHANGHAI).replace(microsecond=0) + dt.timedelta(seconds=3)
    text = (
        DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8")
        .replace('version = "2020.12.16-tianjin"', 'version = "e2e-sealed-yellow"')
        .replace("valid_from = 2020-02-29T00:00:00+08:00", f"valid_from = {starts.isoformat()}")
        .replace(
            'id = "sealed-compound"\ncolour = "red"', 'id = "sealed-compound"\ncolour = "yellow"'
        )
    )
    accepted = services.colour.SetRuleSet(colour_pb2.SetRuleSetRequest(actor=ADMIN, text=text))
    assert not accepted.activated and accepted.version == "e2e-sealed-yellow"
    assert accepted.valid_from.ToDatetime(dt.UTC) == starts

    def active() -> str:
        return services.colour.GetStatus(colour_pb2.GetStatusRequest()).rule_set_version

    # The previous set stays until its time; then the replica switches on its own.
    assert active() == DEFAULT.version or dt.datetime.now(SHANGHAI) >= starts
    eventually("the future-dated rule set to activate", active, lambda v: v == "e2e-sealed-yellow")
    # The display's own replica switches by its own clock at the same moment (within the
    # few milliseconds two processes' clocks take to wake).
    after = eventually(
        "the display to show the future-dated rule set",
        lambda: services.show(resident.id_number).verdict,
        lambda v: v.rule_set_version == "e2e-sealed-yellow",
    )
    assert after.colour == YELLOW


def _today() -> dt.date:
    return dt.date.fromisoformat(today())
