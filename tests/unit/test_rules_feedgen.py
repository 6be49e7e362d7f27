"""The synthetic feed generator: valid numbers, every source, deterministic by seed, and a CLI."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date

import pytest
from stdnum.cn import ric
from typer.testing import CliRunner

from clients import feedgen
from clients.feedgen import (
    COUNTY_LEVELS,
    TIANJIN_DISTRICTS,
    generate_feed,
    id_check_digit,
    make_population,
    row,
    synthetic_id_numbers,
    synthetic_phones,
)
from services._common.sources import SOURCES

TODAY = date(2020, 12, 16)
PHONE = re.compile(r"^1[3-9]\d{9}$")


def test_check_digit_matches_gb_11643() -> None:
    # The standard's own example and one ending in X.
    assert id_check_digit("11010519491231002") == "X"
    assert id_check_digit("44052418800101001") == "4"


def test_python_id_numbers_are_valid_distinct_and_deterministic() -> None:
    numbers = synthetic_id_numbers(2000, seed=5, numbers="python")
    assert len(set(numbers)) == 2000
    assert all(ric.is_valid(n) for n in numbers)
    assert numbers == synthetic_id_numbers(2000, seed=5, numbers="python")
    assert numbers != synthetic_id_numbers(2000, seed=6, numbers="python")


def test_python_phones_are_mainland_mobiles_and_distinct() -> None:
    phones = synthetic_phones(2000, seed=5, numbers="python")
    assert len(set(phones)) == 2000
    assert all(PHONE.match(p) for p in phones)


def test_population_has_second_sims_and_people_without_phones() -> None:
    people = make_population(1000, seed=3, numbers="python")
    counts = {n: sum(1 for p in people if len(p.phones) == n) for n in (0, 1, 2)}
    assert counts[0] > 0 and counts[2] > 0 and sum(counts.values()) == 1000
    all_phones = [ph for p in people for ph in p.phones]
    assert len(all_phones) == len(set(all_phones))  # a phone has one holder
    assert people == make_population(1000, seed=3, numbers="python")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    people = make_population(500, seed=11, numbers="python")
    return list(generate_feed(people, TODAY, seed=11, rate=0.02))


def test_feed_covers_every_catalogue_source(rows: list[dict[str, object]]) -> None:
    assert {r["source"] for r in rows} == set(SOURCES)


def test_feed_rows_follow_the_catalogue(rows: list[dict[str, object]]) -> None:
    for r in rows:
        src = SOURCES[str(r["source"])]
        assert ("id_number" in r) == (src.keyed_by == "person"), r
        assert ("phone" in r) == (src.keyed_by == "phone"), r
        assert (r["day"] is not None) == src.dated, r
        if r["day"] is not None:
            assert 0 <= (TODAY - date.fromisoformat(str(r["day"]))).days <= 20
        assert (r["county"] is not None) == src.has_county, r
        if r["county"] is not None and src.attribute:
            assert r["county"] in TIANJIN_DISTRICTS, r  # where the people live
        elif r["county"] is not None:
            assert r["county"] in COUNTY_LEVELS


def test_feed_reaches_every_risk_level_on_county_sources(rows: list[dict[str, object]]) -> None:
    for source in ("declared_travel", "telecom_roaming"):
        levels = {COUNTY_LEVELS[int(str(r["county"]))] for r in rows if r["source"] == source}
        assert levels == {0, 1, 2, 3}, source


def test_clearing_rows_mostly_reach_flagged_people(rows: list[dict[str, object]]) -> None:
    flagged = {r.get("id_number") for r in rows if SOURCES[str(r["source"])].raising}
    nat = [r["id_number"] for r in rows if r["source"] == "nat_negative"]
    assert sum(n in flagged for n in nat) >= len(nat) // 2


def test_everyone_has_one_residence_in_a_tianjin_district(rows: list[dict[str, object]]) -> None:
    residents = [r["id_number"] for r in rows if r["source"] == "residence"]
    assert len(residents) == len(set(residents)) == 500
    assert len({r["county"] for r in rows if r["source"] == "residence"}) > 8


def test_feed_is_deterministic_by_seed() -> None:
    people = make_population(200, seed=2, numbers="python")
    a = list(generate_feed(people, TODAY, seed=2))
    assert a == list(generate_feed(people, TODAY, seed=2))
    assert a != list(generate_feed(people, TODAY, seed=3))


def test_row_refuses_what_the_catalogue_forbids() -> None:
    with pytest.raises(ValueError, match="keyed by phone"):
        row("telecom_roaming", id_number="120101199001011239", day=TODAY, county=210211)
    with pytest.raises(ValueError, match="need a county"):
        row("declared_travel", id_number="120101199001011239", day=TODAY)
    with pytest.raises(ValueError, match="have no a day|have no"):
        row("home_quarantine", id_number="120101199001011239", day=TODAY)
    with pytest.raises(ValueError, match="unknown source"):
        row("nope", id_number="120101199001011239", day=TODAY)


# --- CLI ---------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_help_lists_the_commands() -> None:
    result = runner.invoke(feedgen.app, ["--help"])
    assert result.exit_code == 0
    for command in ("feed", "registry", "counties"):
        assert command in result.output


def test_cli_feed_jsonl() -> None:
    args = ["feed", "--persons", "100", "--seed", "4", "--numbers", "python", "--rate", "0.05"]
    result = runner.invoke(feedgen.app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["source"] for r in lines} == set(SOURCES)
    again = runner.invoke(feedgen.app, args)
    assert again.stdout == result.stdout


def test_cli_feed_csv_one_source() -> None:
    result = runner.invoke(
        feedgen.app,
        ["feed", "--persons", "100", "--numbers", "python", "-s", "telecom_roaming", "-f", "csv"],
    )
    assert result.exit_code == 0, result.output
    text = "\n".join(line for line in result.stdout.splitlines() if not line.endswith(" rows"))
    table = list(csv.DictReader(io.StringIO(text)))
    assert table and {r["source"] for r in table} == {"telecom_roaming"}
    assert all(PHONE.match(r["phone"]) and r["id_number"] == "" and r["county"] for r in table)


def test_cli_registry_matches_the_feed_people(tmp_path: object) -> None:
    result = runner.invoke(
        feedgen.app, ["registry", "--persons", "20", "--seed", "4", "--numbers", "python"]
    )
    assert result.exit_code == 0
    people = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    expected = make_population(20, seed=4, numbers="python")
    assert [p["id_number"] for p in people] == [p.id_number for p in expected]
    assert [tuple(p["phones"]) for p in people] == [p.phones for p in expected]


def test_cli_counties_and_unknown_source() -> None:
    result = runner.invoke(feedgen.app, ["counties"])
    assert result.exit_code == 0
    assert len(result.stdout.strip().splitlines()) == len(COUNTY_LEVELS)
    bad = runner.invoke(feedgen.app, ["feed", "--numbers", "python", "-s", "nope"])
    assert bad.exit_code != 0


def test_rows_of_hourly_sources_carry_their_hour(rows: list[dict[str, object]]) -> None:
    last = ((TODAY - date(1970, 1, 1)).days + 1) * 24 - 1  # 23:00 today, the default "now"
    timed = [r for r in rows if SOURCES[str(r["source"])].hourly]
    assert timed, "the feed should have negative tests"
    hours = set()
    for r in timed:
        hour = r["hour"]
        assert isinstance(hour, int) and hour <= last, r
        day = date.fromisoformat(str(r["day"]))
        assert hour // 24 == (day - date(1970, 1, 1)).days, r
        hours.add(hour % 24)
    assert len(hours) > 1, "hours of the day should vary"
    assert all("hour" not in r for r in rows if not SOURCES[str(r["source"])].hourly)
