"""Snapshots: a round trip gives the same verdicts; anything damaged is refused with
`SnapshotError` and leaves the live matcher as it was."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import healthcode_matcher as hm
import pytest
from matcher_support import OTHER_SECRET, SECRET, TODAY, u32
from pyroaring import BitMap

RULES: list[dict[str, Any]] = [
    {"id": "confirmed", "colour": "red", "checks": [{"source": "confirmed", "days": 14}]},
    {
        "id": "contact",
        "colour": "yellow",
        "checks": [{"source": "contact", "days": 14}],
        "clears": [{"source": "nat_negative", "days": 2}],
    },
    {
        "id": "risk-area",
        "colour": "yellow",
        "checks": [
            {"source": "roaming", "days": 14, "min_level": 2},
            {"source": "travel", "days": 14, "min_level": 2},
        ],
        "clears": [{"source": "phone_verified"}],
    },
]


@pytest.fixture(scope="module")
def index() -> hm.Index:
    rng = random.Random(42)
    persons, phones = 3_000, 4_000
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(persons, 42))
    builder.add_phones(
        hm.synthetic_phones(phones, 42), u32(rng.randrange(persons) for _ in range(phones))
    )
    builder.add_card("TJ-42", 7)
    for name, keyed, has_county in [
        ("confirmed", "person", False),
        ("contact", "person", False),
        ("nat_negative", "person", False),
        ("travel", "person", True),
        ("roaming", "phone", True),
        ("phone_verified", "phone", False),
    ]:
        builder.define_source(name, keyed, has_county)
        limit = persons if keyed == "person" else phones
        for day in [None, TODAY - 20, TODAY - 5, TODAY]:
            ids = rng.sample(range(limit), 200)
            counties = u32(rng.randrange(1, 31) for _ in ids) if has_county else None
            builder.add_rows(name, u32(ids), day, counties)
    for county in range(1, 31, 3):
        builder.set_county_level(county, 1 + county % 3)
    return builder.finish()


def all_verdicts(index: hm.Index) -> list[tuple[int, int, int]]:
    verdicts = hm.Verdicts(index, hm.Plan(RULES), TODAY)
    out: list[tuple[int, int, int]] = []
    for person in range(index.person_count):
        v = verdicts.evaluate(person)
        out.append((v.colour, v.fired_mask, v.cleared_mask))
    return out


def test_round_trip_gives_the_same_index(index: hm.Index, tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    index.save(str(path))
    loaded = hm.Index.load(str(path), SECRET)
    assert loaded.version == index.version
    assert (loaded.person_count, loaded.phone_count, loaded.card_count) == (
        index.person_count,
        index.phone_count,
        index.card_count,
    )
    assert loaded.county_levels() == index.county_levels()
    assert sorted(loaded.sources()) == sorted(index.sources())
    for name, _, _ in index.sources():
        assert loaded.source_days(name) == index.source_days(name)
        assert loaded.source_counties(name) == index.source_counties(name)
        assert loaded.source_len(name) == index.source_len(name)
        for day in index.source_days(name):
            counties: list[int | None] = [*index.source_counties(name)] or [None]
            for county in counties:
                assert BitMap.deserialize(
                    loaded.source_bitmap(name, day, county)
                ) == BitMap.deserialize(index.source_bitmap(name, day, county))
    for person in range(0, index.person_count, 97):
        assert loaded.phones_of(person) == index.phones_of(person)
    numbers = hm.synthetic_id_numbers(50, 42).decode().split()
    assert [loaded.person_id(n) for n in numbers] == [index.person_id(n) for n in numbers]
    assert loaded.card_holder("TJ-42") == 7
    assert all_verdicts(loaded) == all_verdicts(index)
    assert any(colour for colour, _, _ in all_verdicts(index))  # the plan does colour someone

    # The loaded version goes on like the saved one: the next version numbers follow.
    assert loaded.builder().finish().version == index.version + 1


def test_save_is_deterministic(index: hm.Index, tmp_path: Path) -> None:
    index.save(str(tmp_path / "a"))
    index.save(str(tmp_path / "b"))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def damaged(good: bytes, tmp_path: Path) -> dict[str, Path]:
    cases: dict[str, bytes] = {
        "empty": b"",
        "truncated-header": good[:10],
        "truncated-half": good[: len(good) // 2],
        "truncated-last-byte": good[:-1],
        "appended": good + b"\x00",
        "not-a-snapshot": b"PK\x03\x04 this is a zip file, or anything else" * 20,
        "text": b"person,phone\n120101198001011234,13812345678\n",
    }
    for position in [0, 5, 17, len(good) // 3, len(good) // 2, len(good) - 20, len(good) - 1]:
        flipped = bytearray(good)
        flipped[position] ^= 0x40
        cases[f"flipped-{position}"] = bytes(flipped)
    paths = {}
    for name, data in cases.items():
        path = tmp_path / f"{name}.snap"
        path.write_bytes(data)
        paths[name] = path
    return paths


def test_damaged_snapshots_are_refused_and_the_live_verdicts_stay(
    index: hm.Index, tmp_path: Path
) -> None:
    good_path = tmp_path / "good.snap"
    index.save(str(good_path))
    good = good_path.read_bytes()
    live = hm.Matcher(hm.Verdicts(index, hm.Plan(RULES), TODAY))
    before = [live.colour(p) for p in range(index.person_count)]
    for name, path in damaged(good, tmp_path).items():
        with pytest.raises(hm.SnapshotError) as caught:
            hm.Index.load(str(path), SECRET)
        assert str(caught.value), f"{name}: the error says nothing"
        assert live.current.index.version == index.version
        assert [live.colour(p) for p in range(index.person_count)] == before, name
    with pytest.raises(hm.SnapshotError, match="(?i)secret"):
        hm.Index.load(str(good_path), OTHER_SECRET)
    assert [live.colour(p) for p in range(index.person_count)] == before


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises((OSError, hm.SnapshotError)):
        hm.Index.load(str(tmp_path / "nowhere.snap"), SECRET)


def test_a_loaded_snapshot_can_be_swapped_in(index: hm.Index, tmp_path: Path) -> None:
    path = tmp_path / "index.snap"
    builder = index.builder()
    builder.add_rows("confirmed", u32([0, 1, 2]), TODAY)
    newer = builder.finish()
    newer.save(str(path))
    live = hm.Matcher(hm.Verdicts(index, hm.Plan(RULES), TODAY))
    old = live.swap(hm.Verdicts(hm.Index.load(str(path), SECRET), hm.Plan(RULES), TODAY))
    assert old.index.version == index.version
    assert live.current.index.version == newer.version
    assert [live.colour(p) for p in (0, 1, 2)] == [hm.Colour.RED] * 3
