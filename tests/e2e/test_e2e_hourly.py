"""A negative test "within 48 hours" counted in hours, end to end through the four real processes
(one stack for the module; each test has its own people):

- a test timed 47 hours ago clears a rule that a negative test within 48 hours clears: the next
  Show is green; one timed 49 hours ago does not;
- a lab file ingested with the CLI carries each test's time (`at`, ISO 8601 with its offset),
  and `healthcode explain` shows the hour of the test that cleared the rule.

No timing assertion: "now" is taken once and every row is timed from it. The colour replica
evaluates at the Asia/Shanghai hour it reports (`Verdict.hour`); if an hour boundary passes
during a test, the expectation follows that hour (47 hours ago becomes 48, outside the window),
so the test holds whenever it runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from healthcode.v1 import colour_pb2, common_pb2

from clients import feedgen
from clients.stack import Stack
from services._common.days import SHANGHAI, format_hour, hour_number
from tests.e2e.cli_support import invoke
from tests.e2e.rules_support import Stubs, stubs, verdict_hour

PEOPLE = feedgen.make_population(6, seed=4848, second_sim_rate=0.0, no_phone_rate=0.0)
YELLOW, GREEN = common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_GREEN
# Grassroots screening lists a person yellow for 14 days; a negative test within 48 hours (or
# community verification) clears it (services/rules/default.toml).
RULE = "grassroots-screening"
WINDOW_HOURS = 48


@pytest.fixture(scope="module")
def services(module_stack: Stack) -> Iterator[Stubs]:
    with stubs(module_stack) as s:
        s.register(PEOPLE)
        s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
        yield s


def screened(services: Stubs, people: list[feedgen.Person], batch: str, now: dt.datetime) -> None:
    """The people listed by grassroots screening today: yellow on the next Show."""
    rows = [
        feedgen.row("grassroots_screening", id_number=p.id_number, day=now.date()) for p in people
    ]
    services.wait_colour(services.ingest(rows, batch))
    for p in people:
        v = services.show(p.id_number).verdict
        assert v.colour == YELLOW, v
        assert RULE in {r.rule_id for r in v.reasons if not r.cleared}


def test_a_test_47_hours_old_clears_a_48_hour_rule_and_one_49_hours_old_does_not(
    services: Stubs,
) -> None:
    now = dt.datetime.now(SHANGHAI)  # taken once
    recent, stale = PEOPLE[0], PEOPLE[1]
    screened(services, [recent, stale], "screening-hourly", now)

    tested = {
        recent.id_number: now - dt.timedelta(hours=47),
        stale.id_number: now - dt.timedelta(hours=49),
    }
    # The lab's rows as a feed file holds them: the time of each test with its offset.
    rows = [
        {"source": "nat_negative", "id_number": id_number, "at": at.isoformat(), "lab": "e2e-lab"}
        for id_number, at in tested.items()
    ]
    services.wait_colour(services.ingest(rows, "lab-hourly"))

    shown = services.show(recent.id_number)
    v = shown.verdict
    age = verdict_hour(v) - hour_number(tested[recent.id_number])
    assert age >= 47, v  # the replica's hour never runs behind the test's
    if age < WINDOW_HOURS:  # the same hour as "now": inside "48 hours" (this hour + 47 before)
        assert v.colour == GREEN, v
        assert (RULE, True, "nat_negative") in {
            (r.rule_id, r.cleared, r.cleared_by) for r in v.reasons
        }
        explained = services.explain(recent.id_number)
        rule = next(r for r in explained.rules if r.rule_id == RULE)
        assert rule.outcome == colour_pb2.RULE_OUTCOME_CLEARED
        assert [(e.source, e.hour) for e in rule.cleared_by] == [
            ("nat_negative", format_hour(hour_number(tested[recent.id_number])))
        ]
    else:  # an hour boundary passed since "now": the test is 48 hours old, outside the window
        assert v.colour == YELLOW, v

    late = services.show(stale.id_number).verdict
    assert late.colour == YELLOW, late
    assert RULE in {r.rule_id for r in late.reasons if not r.cleared}
    remedy = next(m for m in late.remedies if m.rule_id == RULE)
    assert "nat_negative" in remedy.clearing_sources
    explained = services.explain(stale.id_number)
    rule = next(r for r in explained.rules if r.rule_id == RULE)
    assert rule.outcome == colour_pb2.RULE_OUTCOME_FIRED and not rule.cleared_by


def test_a_lab_file_carries_each_test_time_and_explain_shows_its_hour(
    module_stack: Stack, services: Stubs, tmp_path: Path
) -> None:
    now = dt.datetime.now(SHANGHAI)  # taken once
    person, other = PEOPLE[2], PEOPLE[3]
    screened(services, [person, other], "screening-cli", now)
    # Five hours ago, well inside 48 hours however long the test takes.
    at = (now - dt.timedelta(hours=5)).replace(microsecond=0)
    lab = tmp_path / "lab.csv"
    lab.write_text(
        f"source,id_number,at,lab\nnat_negative,{person.id_number},{at.replace(tzinfo=None)},lab-9\n",
        encoding="utf-8",
    )
    code, out = invoke(module_stack, "ingest", str(lab))
    assert code != 0 and "line 2" in out and "offset" in out, out  # a time without its offset

    lab.write_text(
        f"source,id_number,at,lab\nnat_negative,{person.id_number},{at.isoformat()},lab-9\n",
        encoding="utf-8",
    )
    code, out = invoke(module_stack, "ingest", str(lab))
    assert code == 0 and "1 rows accepted" in out, out
    services.wait_colour()
    assert services.show(person.id_number).verdict.colour == GREEN
    assert services.show(other.id_number).verdict.colour == YELLOW

    code, out = invoke(module_stack, "explain", person.id_number)
    assert code == 0, out
    text = flat(out)
    assert "GREEN" in text and "cleared by:" in text
    assert f"{format_hour(hour_number(at))} CST" in text, out
    assert person.id_number not in out


def flat(out: str) -> str:
    """CLI output with panel borders and line wrapping undone."""
    return " ".join(out.replace("│", " ").split())


def test_feedgen_timed_rows_ingest_with_the_hour_they_carry(services: Stubs) -> None:
    # feedgen writes an hour number; the CLI's row conversion sends it as the test's time.
    now = dt.datetime.now(SHANGHAI)
    person, other = PEOPLE[4], PEOPLE[5]
    screened(services, [person, other], "screening-feedgen", now)
    hour = hour_number(now) - 30
    rows = [feedgen.row("nat_negative", id_number=person.id_number, hour=hour)]
    assert rows[0]["hour"] == hour and rows[0]["day"] == feedgen.hour_date(hour).isoformat()
    services.wait_colour(services.ingest(rows, "lab-feedgen"))
    explained = services.explain(person.id_number)
    rule = next(r for r in explained.rules if r.rule_id == RULE)
    assert rule.outcome == colour_pb2.RULE_OUTCOME_CLEARED
    assert [e.hour for e in rule.cleared_by] == [format_hour(hour)]
    assert services.show(person.id_number).verdict.colour == GREEN
    assert services.show(other.id_number).verdict.colour == YELLOW
