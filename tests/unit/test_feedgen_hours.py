"""Timed rows of hourly sources (a negative test "within 48 hours") in the feed generator and in
the CLI's file rows: feedgen's `hour` and a file's `at` both become `FeedRow.at`, and the rule
scenarios put negative tests just inside and just outside their N-hour windows."""

from __future__ import annotations

import datetime as dt
import json
from datetime import date

import pytest
from typer.testing import CliRunner

from clients import feedgen
from clients.cli import RowError, feed_row
from clients.feedgen import generate_feed, make_population, row, rule_scenarios
from services._common.days import SHANGHAI, format_hour, hour_start
from services._common.sources import SOURCES
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from services.rules.reference import Feed, evaluate

TODAY = date(2020, 12, 16)
DAY = feedgen.day_number(TODAY)
NOON = DAY * 24 + 12
ME = "120101199001011239"
DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)


def test_a_row_of_an_hourly_source_carries_its_hour_and_day() -> None:
    timed = row("nat_negative", id_number=ME, hour=NOON - 30)
    assert timed["hour"] == NOON - 30 and timed["day"] == "2020-12-15"
    # Only a day: it counts from 00:00, as the risk index counts it.
    assert row("nat_negative", id_number=ME, day=TODAY)["hour"] == DAY * 24
    # Daily sources keep their shape.
    assert "hour" not in row("close_contact", id_number=ME, day=TODAY)
    with pytest.raises(ValueError, match="no hour"):
        row("close_contact", id_number=ME, hour=NOON)
    with pytest.raises(ValueError, match="not the date"):
        row("nat_negative", id_number=ME, day=TODAY, hour=NOON - 24)


def test_generated_tests_are_timed_up_to_now_and_leave_other_sources_alone() -> None:
    people = make_population(400, seed=5, numbers="python")
    at_noon = list(generate_feed(people, TODAY, seed=5, rate=0.05, now_hour=NOON))
    tests = [r for r in at_noon if r["source"] == "nat_negative"]
    assert tests
    for r in tests:
        assert r["hour"] <= NOON
        assert feedgen.hour_date(r["hour"]).isoformat() == r["day"]
    assert all("hour" not in r for r in at_noon if not SOURCES[r["source"]].hourly)
    # The hours come from their own random stream: "now" changes no other source's rows.
    at_night = list(generate_feed(people, TODAY, seed=5, rate=0.05))
    assert [r for r in at_noon if r["source"] != "nat_negative"] == [
        r for r in at_night if r["source"] != "nat_negative"
    ]
    assert max(r["hour"] for r in at_night if r["source"] == "nat_negative") <= DAY * 24 + 23
    with pytest.raises(ValueError, match="not an hour of"):
        list(generate_feed(people, TODAY, seed=5, now_hour=NOON + 24))


def _nat_rows(scenario: feedgen.Scenario) -> list[int]:
    return [int(r["hour"]) for r in scenario.rows if r["source"] == "nat_negative"]


@pytest.mark.parametrize("margin", [0, 1])
def test_scenarios_put_negative_tests_just_inside_and_just_outside(margin: int) -> None:
    scenarios = {
        s.name: s for s in rule_scenarios(DEFAULT, TODAY, now_hour=NOON, margin_hours=margin)
    }
    nat_rules = [r for r in DEFAULT.rules if any(c.source == "nat_negative" for c in r.clears)]
    assert nat_rules
    for rule in nat_rules:
        (clear,) = [c for c in rule.clears if c.source == "nat_negative"]
        hours = clear.window.hours if clear.window is not None else 0
        inside = scenarios[f"{rule.id}: cleared by nat_negative"]
        outside = scenarios[f"{rule.id}: nat_negative too old to clear"]
        assert _nat_rows(inside) == [NOON - (hours - 1) + margin], rule.id
        assert _nat_rows(outside) == [NOON - hours], rule.id


def test_with_a_margin_the_scenarios_hold_an_hour_later() -> None:
    scenarios = rule_scenarios(DEFAULT, TODAY, now_hour=NOON, margin_hours=1)
    for hour in (NOON, NOON + 1):
        for s in scenarios:
            feed = Feed(s.rows, feedgen.COUNTY_LEVELS)
            got = evaluate(DEFAULT, feed, s.person.id_number, s.person.phones, TODAY, hour)
            assert all(r in got.cleared for r in s.cleared), (s.name, hour)
            assert all(r in got.fired for r in s.fires), (s.name, hour)
            assert not any(r in got.fired for r in s.silent), (s.name, hour)


def test_the_feed_command_times_tests_up_to_its_hour() -> None:
    result = CliRunner().invoke(
        feedgen.app,
        ["feed", "--persons", "200", "--numbers", "python", "-s", "nat_negative", "--hour", "9"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert rows and all(r["hour"] <= DAY * 24 + 9 for r in rows)


def test_a_file_row_sends_its_time_as_at() -> None:
    at = dt.datetime(2020, 12, 16, 14, 37, tzinfo=SHANGHAI)
    sent = feed_row({"source": "nat_negative", "id_number": ME, "at": at.isoformat()})
    assert sent.HasField("at") and sent.at.ToDatetime(dt.UTC) == at
    assert "at" not in sent.attributes
    utc = feed_row({"source": "nat_negative", "id_number": ME, "at": "2020-12-16T06:37:00Z"})
    assert utc.at.ToDatetime(dt.UTC) == at
    from_hour = feed_row(row("nat_negative", id_number=ME, hour=NOON))
    assert from_hour.at.ToDatetime(dt.UTC) == hour_start(NOON)
    assert from_hour.day == "2020-12-16" and format_hour(NOON) == "2020-12-16 12:00"
    assert not feed_row(row("close_contact", id_number=ME, day=TODAY)).HasField("at")


def test_a_file_row_with_a_bad_time_names_the_column() -> None:
    with pytest.raises(RowError, match="offset"):
        feed_row({"source": "nat_negative", "id_number": ME, "at": "2020-12-16T14:37:00"})
    with pytest.raises(RowError, match="^at:"):
        feed_row({"source": "nat_negative", "id_number": ME, "at": "yesterday"})
    with pytest.raises(RowError, match="^hour:"):
        feed_row({"source": "nat_negative", "id_number": ME, "hour": "noon"})
