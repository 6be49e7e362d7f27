"""Hourly sources by hand: the API contract (rows by hour, refusals, the evaluation hour, evidence
hours, snapshots) and hour windows at their edges, each checked against the reference.

Hours are whole hours since 1970-01-01 00:00 Asia/Shanghai; `hour // 24` is the day. A check
{"hours": N} on an hourly source evaluated at hour H covers rows at hours h with h <= H and
H - h < N (a row exactly N hours old is out), plus undated rows; {"days": N} there is N * 24
hours. The model test (test_model.py) covers the same with random scenarios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import healthcode_matcher as hm
import pytest
from healthcode_matcher.reference import MemoryIndexView, ReferenceEvaluator
from matcher_support import SECRET, TODAY, compare_everything, u32
from pyroaring import BitMap

NOW = TODAY * 24 + 10  # 10:00-11:00 on TODAY


def hourly_index(
    rows: Sequence[tuple[int, int | None]],
) -> tuple[hm.Index, MemoryIndexView]:
    """Person i is a contact today; `rows` puts (person, hour) in the hourly source "nat"."""
    persons = max([p for p, _ in rows], default=0) + 1
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(persons, 1))
    builder.define_source("contact", "person")
    builder.define_source("nat", "person", hourly=True)
    model = MemoryIndexView(person_count=persons)
    model.add_source("contact", "person")
    model.add_source("nat", "person", hourly=True)
    builder.add_rows("contact", u32(range(persons)), TODAY)
    model.add_rows("contact", range(persons), TODAY)
    for person, hour in rows:
        builder.add_rows("nat", u32([person]), hour=hour)
        model.add_rows("nat", [person], hour=hour)
    return builder.finish(), model


def cleared_by(clear: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": "contact",
            "colour": "yellow",
            "checks": [{"source": "contact", "days": 1}],
            "clears": [clear],
        }
    ]


def cleared_persons(verdicts: hm.Verdicts, persons: int) -> set[int]:
    return {p for p in range(persons) if verdicts.evaluate(p).cleared}


EDGE_ROWS = [(0, NOW), (1, NOW - 47), (2, NOW - 48), (3, NOW + 1), (4, None), (5, NOW - 1)]


@pytest.mark.parametrize(
    ("hour", "want"),
    [
        (NOW, {0, 1, 4, 5}),  # 47 hours back is in, 48 out, the next hour not yet in
        (NOW + 1, {0, 3, 4, 5}),  # an hour later person 1's test is 48 hours old
        (NOW - 1, {1, 2, 4, 5}),
        (TODAY * 24, {1, 2, 4}),  # at 00:00 the rows of 01:00 onwards are still ahead
    ],
)
def test_48_hours_is_48_hours_at_any_hour(hour: int, want: set[int]) -> None:
    index, model = hourly_index(EDGE_ROWS)
    rules = cleared_by({"source": "nat", "hours": 48})
    verdicts = compare_everything(index, model, rules, TODAY, hour)
    assert cleared_persons(verdicts, len(EDGE_ROWS)) == want


@pytest.mark.parametrize("hours", [1, 2, 23, 24, 25, 47, 48, 49, 95, 96, 10_000, 2**32 - 1])
@pytest.mark.parametrize("hour", [TODAY * 24, NOW, TODAY * 24 + 23, None])
def test_hour_window_edges(hours: int, hour: int | None) -> None:
    end = TODAY * 24 + 23 if hour is None else hour
    # Rows exactly on both edges and either side of them, and far in the past and future.
    backs = sorted({-1, 0, 1, hours - 2, hours - 1, hours, hours + 1, 10**6})
    rows: list[tuple[int, int | None]] = [
        (i, end - back) for i, back in enumerate(backs) if end - back >= 0
    ]
    rows.append((len(rows), None))
    index, model = hourly_index(rows)
    verdicts = compare_everything(
        index, model, cleared_by({"source": "nat", "hours": hours}), TODAY, hour
    )
    want = {p for p, h in rows if h is None or (h <= end and end - h < hours)}
    assert cleared_persons(verdicts, len(rows)) == want


@pytest.mark.parametrize("days", [1, 2, 3, 30, 2**32 - 1])
def test_days_on_an_hourly_source_are_whole_24_hours(days: int) -> None:
    backs = sorted({0, 23, 24, 24 * min(days, 40) - 1, 24 * min(days, 40), 24 * min(days, 40) + 1})
    rows = [(i, NOW - back) for i, back in enumerate(backs)]
    index, model = hourly_index(rows)
    by_days = compare_everything(
        index, model, cleared_by({"source": "nat", "days": days}), TODAY, NOW
    )
    want = {p for p, h in rows if NOW - h < 24 * days}
    assert cleared_persons(by_days, len(rows)) == want
    if days < 2**32 // 24:
        by_hours = hm.Verdicts(
            index, hm.Plan(cleared_by({"source": "nat", "hours": 24 * days})), TODAY, NOW
        )
        assert cleared_persons(by_hours, len(rows)) == want


def test_no_window_on_an_hourly_source_covers_every_bucket() -> None:
    rows = [(0, 0), (1, NOW + 500), (2, None), (3, NOW)]
    index, model = hourly_index(rows)
    verdicts = compare_everything(index, model, cleared_by({"source": "nat"}), TODAY, NOW)
    assert cleared_persons(verdicts, 4) == {0, 1, 2, 3}


def test_rows_go_into_hour_buckets() -> None:
    index, _ = hourly_index([(0, NOW), (1, NOW), (2, NOW - 30), (3, None)])
    assert index.source_is_hourly("nat") and not index.source_is_hourly("contact")
    assert set(index.source_days("nat")) == {None, NOW - 30, NOW}
    assert BitMap.deserialize(index.source_bitmap("nat", NOW)) == BitMap([0, 1])
    assert BitMap.deserialize(index.source_bitmap("nat", day=NOW - 30)) == BitMap([2])
    assert BitMap.deserialize(index.source_bitmap("nat", None)) == BitMap([3])
    assert BitMap.deserialize(index.source_bitmap("nat", TODAY)) == BitMap()
    assert index.source_len("nat") == 4
    assert index.source_days("contact") == [TODAY]


def test_by_identifier_and_by_key_take_hours() -> None:
    ids = hm.synthetic_id_numbers(3, 5).decode().split()
    builder = hm.Index(SECRET).builder()
    builder.define_source("nat", "person", hourly=True)
    assert builder.add_rows_by_identifier("nat", ids[:2], hours=[NOW, None]) == 2
    key = hm.Index(SECRET).hasher().person_key(ids[2])
    assert builder.add_rows_by_key("nat", key, hours=[NOW - 5]) == 1
    index = builder.finish()
    assert set(index.source_days("nat")) == {None, NOW - 5, NOW}
    bucket = BitMap.deserialize(index.source_bitmap("nat", NOW - 5))
    assert list(bucket) == [index.person_id(ids[2])]


def test_rows_in_the_wrong_unit_are_refused() -> None:
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(1, 1))
    builder.define_source("nat", "person", hourly=True)
    builder.define_source("contact", "person")
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows("nat", u32([0]), TODAY)
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows("nat", u32([0]), day=TODAY, hour=NOW)
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows("contact", u32([0]), hour=NOW)
    raw = hm.synthetic_id_numbers(1, 1).decode().split()
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows_by_identifier("nat", raw, [TODAY])
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows_by_identifier("contact", raw, hours=[NOW])
    # Redefining a source with the other unit is redefining it with other traits.
    with pytest.raises(hm.InvalidOperation):
        builder.define_source("nat", "person")
    with pytest.raises(hm.InvalidOperation):
        builder.define_source("contact", "person", hourly=True)
    builder.define_source("nat", "person", hourly=True)  # the same traits again: fine
    index = builder.finish()
    assert index.source_len("nat") == 0 and index.source_len("contact") == 0


def test_hours_only_on_hourly_sources_and_never_with_days() -> None:
    index, _ = hourly_index([(0, NOW)])
    hours_on_daily = [{"id": "r", "colour": "red", "checks": [{"source": "contact", "hours": 5}]}]
    with pytest.raises(hm.PlanError, match="r"):
        hm.Verdicts(index, hm.Plan(hours_on_daily), TODAY)
    both = [{"id": "r", "colour": "red", "checks": [{"source": "nat", "hours": 5, "days": 1}]}]
    with pytest.raises(hm.PlanError, match="r"):
        hm.Verdicts(index, hm.Plan(both), TODAY)
    in_clears = cleared_by({"source": "contact", "hours": 5})
    with pytest.raises(hm.PlanError):
        hm.Verdicts(index, hm.Plan(in_clears), TODAY)


@pytest.mark.parametrize("hour", [TODAY * 24 - 1, (TODAY + 1) * 24, -1])
def test_the_evaluation_hour_must_be_an_hour_of_today(hour: int) -> None:
    index, _ = hourly_index([(0, NOW)])
    plan = hm.Plan(cleared_by({"source": "nat", "hours": 5}))
    with pytest.raises((ValueError, OverflowError)):
        hm.Verdicts(index, plan, TODAY, hour)


def test_the_evaluation_hour_defaults_to_the_last_hour_of_today() -> None:
    index, _ = hourly_index([(0, NOW)])
    plan = hm.Plan(cleared_by({"source": "nat", "hours": 5}))
    assert hm.Verdicts(index, plan, TODAY).hour == TODAY * 24 + 23
    assert hm.Verdicts(index, plan, TODAY, TODAY * 24).hour == TODAY * 24
    assert hm.Verdicts(index, plan, TODAY, NOW).today == TODAY


def test_evidence_names_the_latest_hour_and_its_day() -> None:
    index, _ = hourly_index([(0, NOW - 30), (0, NOW - 3), (0, NOW + 2), (1, None)])
    plan = hm.Plan(cleared_by({"source": "nat", "hours": 48}))
    verdicts = hm.Verdicts(index, plan, TODAY, NOW)
    [contact, nat] = sorted(verdicts.explain(0), key=lambda e: e.source)
    assert (contact.source, contact.role, contact.day, contact.hour) == (
        "contact",
        "fired",
        TODAY,
        None,
    )
    assert (nat.source, nat.role, nat.hour, nat.day) == ("nat", "cleared", NOW - 3, TODAY)
    # (NOW - 30) // 24 is yesterday: the day follows the hour.
    verdicts = hm.Verdicts(
        index, hm.Plan(cleared_by({"source": "nat", "hours": 30})), TODAY, NOW - 4
    )
    nat = next(e for e in verdicts.explain(0) if e.source == "nat")
    assert (nat.hour, nat.day) == (NOW - 30, (NOW - 30) // 24)
    undated = next(e for e in verdicts.explain(1) if e.source == "nat")
    assert (undated.hour, undated.day) == (None, None)


def test_hourly_sources_survive_a_snapshot() -> None:
    index, model = hourly_index([(0, NOW), (1, NOW - 48), (2, None)])
    again = hm.Index.from_bytes(index.to_bytes(), SECRET)
    assert again.source_is_hourly("nat") and not again.source_is_hourly("contact")
    assert again.source_days("nat") == index.source_days("nat")
    rules = cleared_by({"source": "nat", "hours": 48})
    verdicts = compare_everything(again, model, rules, TODAY, NOW)
    assert cleared_persons(verdicts, 3) == {0, 2}
    # The next version keeps the trait.
    builder = again.builder()
    builder.add_rows("nat", u32([1]), hour=NOW)
    assert builder.finish().source_is_hourly("nat")


def test_the_reference_agrees_on_the_default_hour() -> None:
    _, model = hourly_index([(0, TODAY * 24 - 25), (1, TODAY * 24 - 24)])
    ref = ReferenceEvaluator(model, cleared_by({"source": "nat", "hours": 48}), TODAY)
    assert ref.hour == TODAY * 24 + 23
    # At 23:00, 48 hours reach back to 00:00 yesterday (what the old rounding to 2 days gave
    # at that hour): 23:00 the day before yesterday is out.
    assert [bool(ref.evaluate(p).cleared_mask) for p in (0, 1)] == [False, True]


@pytest.mark.parametrize("check", [{"hours": 100}, {"hours": 1}, {"days": 2}, {"days": 2**32 - 1}])
def test_windows_reaching_back_before_hour_zero(check: dict[str, Any]) -> None:
    # Near the epoch a window starts before hour 0: no underflow, every older row is in.
    rows: list[tuple[int, int | None]] = [(0, 0), (1, 3), (2, 5), (3, 6), (4, None)]
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(5, 2))
    builder.define_source("nat", "person", hourly=True)
    model = MemoryIndexView(person_count=5)
    model.add_source("nat", "person", hourly=True)
    for person, hour in rows:
        builder.add_rows("nat", u32([person]), hour=hour)
        model.add_rows("nat", [person], hour=hour)
    rules = [{"id": "r", "colour": "red", "checks": [{"source": "nat", **check}]}]
    verdicts = compare_everything(builder.finish(), model, rules, 0, 5)
    span = check.get("hours") or 24 * check["days"]
    want = [h is None or (h <= 5 and 5 - h < span) for _, h in rows]
    assert [verdicts.colour(p) == hm.Colour.RED for p in range(5)] == want
