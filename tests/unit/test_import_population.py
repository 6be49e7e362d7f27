"""The synthetic city of `healthcode seed`: reproducible, valid, distinct, realistic in the
proportions the issue asks for, and generated in blocks (no network)."""

from __future__ import annotations

import io
from collections import Counter
from datetime import date
from pathlib import Path

import healthcode_matcher
import pytest
from stdnum.cn import ric

from clients import population
from clients.feedgen import TIANJIN_DISTRICTS
from clients.population import BLOCK, REFERENCE_YEAR, SyntheticCity
from services._common.days import hour_of_date
from services._common.sources import SOURCES
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set

N = 2 * BLOCK + 1234


@pytest.fixture(scope="module")
def people() -> list[population.SyntheticPerson]:
    return [p for block in SyntheticCity(N, 17).blocks() for p in block]


def test_the_same_size_and_seed_give_the_same_city_block_by_block(
    people: list[population.SyntheticPerson],
) -> None:
    assert len(people) == N
    city = SyntheticCity(N, 17)
    assert city.block(1) == people[BLOCK : 2 * BLOCK]
    assert SyntheticCity(N + 5000, 17).block(0) == people[:BLOCK]  # a bigger city extends it
    assert SyntheticCity(N, 18).block(0) != people[:BLOCK]


def test_id_numbers_and_phones_are_valid_and_distinct(
    people: list[population.SyntheticPerson],
) -> None:
    ids = [p.id_number for p in people]
    phones = [ph for p in people for ph in p.phones]
    assert len(set(ids)) == len(ids) and len(set(phones)) == len(phones)
    assert all(ric.is_valid(i) for i in ids)  # check digit, birth date, region of that year
    for i in ids[:2000]:
        healthcode_matcher.normalise_id_number(i)
    for ph in phones[:2000]:
        healthcode_matcher.normalise_phone(ph)


def test_proportions(people: list[population.SyntheticPerson]) -> None:
    phones = sum(len(p.phones) for p in people) / len(people)
    assert 1.3 < phones < 1.5  # about 1.4 phones a person
    elderly = [p for p in people if REFERENCE_YEAR - int(p.id_number[6:10]) >= 65]
    carded = [p for p in people if p.transit_card]
    assert sum(1 for p in elderly if p.transit_card) > 0.5 * len(elderly)
    assert sum(1 for p in carded if p in elderly) > 0.9 * len(carded)  # cards are the elderly's
    by = Counter(p.registered_by for p in people)
    assert set(by) == {"self", "family_proxy", "grid_worker"} and by["self"] > 0.7 * len(people)
    no_phone = [p for p in people if not p.phones]
    assert all(p.registered_by != "self" for p in no_phone)  # someone acted for them (R3)
    districts = Counter(p.district for p in people)
    assert set(districts) == set(TIANJIN_DISTRICTS)
    assert districts.most_common(1)[0][0] == 120116  # Binhai is the biggest
    for p in people:
        if p.registered_by == "family_proxy":
            assert ric.is_valid(p.registrar) and p.registrar != p.id_number
        elif p.registered_by == "grid_worker":
            assert p.registrar.startswith(f"grid-{p.district}-")
        else:
            assert p.registrar == ""


def test_the_people_file_reads_back_as_import_rows(tmp_path: Path) -> None:
    city = SyntheticCity(300, 3)
    path = tmp_path / "people.csv"
    written: list[int] = []
    assert population.write_people(path, city, on_block=written.append) == 300
    assert written == [300] and not path.with_name("people.csv.part").exists()
    with path.open("rb") as f:
        got = list(population.records(population.CountingLines(f), population.FileFormat.csv))
    rows = [population.import_row(line, rec) for line, rec in got if isinstance(rec, dict)]
    assert [r.line for r in rows if not isinstance(r, list)] == list(range(2, 302))
    first = city.block(0)[0]
    row = rows[0]
    assert not isinstance(row, list)
    assert (row.id_number, list(row.phones), row.residence_county) == (
        first.id_number,
        list(first.phones),
        first.district,
    )


def test_feeds_cover_every_source_of_the_default_rule_set(tmp_path: Path) -> None:
    rules = load_rule_set(DEFAULT_RULE_SET_PATH).rules
    used = {c.source for r in rules for c in (*r.checks, *r.clears)}
    assert set(population.feed_sources()) == used
    assert not any(SOURCES[s].attribute for s in population.feed_sources())
    city = SyntheticCity(BLOCK + 10, 5)
    today = date(2020, 12, 16)
    path = tmp_path / "feeds.jsonl"
    n = population.write_feeds(path, city, today, hour_of_date(today, 14), on_block=lambda _: None)
    text = path.read_text(encoding="utf-8")
    assert n == len(text.splitlines()) > 0
    seen = {line.split('"source": "')[1].split('"')[0] for line in io.StringIO(text)}
    assert seen == used
