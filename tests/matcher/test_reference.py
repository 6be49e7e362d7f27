"""The plain-Python reference evaluator on its own: hand-made cases with known verdicts, and its
per-person and batch forms against a literal row-by-row reading of the semantics."""

from __future__ import annotations

import doctest
from typing import Any

import pytest
from healthcode_matcher import reference
from healthcode_matcher.reference import MemoryIndexView, ReferenceEvaluator, ReferenceVerdict
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

T = 100
H = T * 24 + 23  # the default evaluation hour: the last hour of day T


def test_doctests_run() -> None:
    result = doctest.testmod(reference)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture
def view() -> MemoryIndexView:
    v = MemoryIndexView(person_count=12)
    v.add_source("confirmed", "person")
    v.add_source("contact", "person")
    v.add_source("nat_negative", "person")
    v.add_source("travel", "person", has_county=True)
    v.add_source("roaming", "phone")
    v.add_source("phone_verified", "phone")
    v.add_rows("confirmed", [1], day=T - 13)  # inside a 14-day window
    v.add_rows("confirmed", [2], day=T - 14)  # just outside it
    v.add_rows("confirmed", [3], day=None)  # undated: always current
    v.add_rows("confirmed", [4], day=T + 1)  # tomorrow: only a window-less check sees it
    v.add_rows("travel", [5, 6, 7], day=T, counties=[70, 80, 90])
    v.set_county_level(70, 3)
    v.set_county_level(80, 1)  # county 90 has no level: 0
    for phone, holder in [(100, 8), (101, 8), (102, 9), (103, 10)]:
        v.link_phone(phone, holder)
    v.add_rows("roaming", [101, 102, 103], day=T)
    v.add_rows("phone_verified", [101, 103], day=None)
    v.add_rows("contact", [1, 3, 10, 11], day=T)
    v.add_rows("nat_negative", [3], day=T)
    return v


def verdicts(view: MemoryIndexView, rules: list[dict[str, Any]]) -> dict[int, ReferenceVerdict]:
    ref = ReferenceEvaluator(view, rules, T)
    per_person = {p: ref.evaluate(p) for p in range(view.person_count)}
    assert ref.evaluate_batch(BitMap(range(view.person_count))).verdicts() == per_person
    return per_person


def fired(result: dict[int, ReferenceVerdict]) -> set[int]:
    return {p for p, v in result.items() if v.fired_mask}


def test_window_covers_the_last_n_days_and_the_undated_bucket(view: MemoryIndexView) -> None:
    rule = {"id": "c", "colour": "red", "checks": [{"source": "confirmed", "days": 14}]}
    assert fired(verdicts(view, [rule])) == {1, 3}
    one_day = {"id": "c", "colour": "red", "checks": [{"source": "confirmed", "days": 1}]}
    assert fired(verdicts(view, [one_day])) == {3}


def test_no_window_covers_every_bucket(view: MemoryIndexView) -> None:
    rule = {"id": "c", "colour": "red", "checks": [{"source": "confirmed"}]}
    result = verdicts(view, [rule])
    assert fired(result) == {1, 2, 3, 4}
    assert result[1] == ReferenceVerdict(2, 1, 0)


def test_min_level_keeps_counties_at_or_above_it(view: MemoryIndexView) -> None:
    high = {"id": "t", "colour": "yellow", "checks": [{"source": "travel", "min_level": 3}]}
    low = {"id": "t", "colour": "yellow", "checks": [{"source": "travel", "min_level": 1}]}
    every = {"id": "t", "colour": "yellow", "checks": [{"source": "travel"}]}
    assert fired(verdicts(view, [high])) == {5}
    assert fired(verdicts(view, [low])) == {5, 6}
    assert fired(verdicts(view, [every])) == {5, 6, 7}
    view.set_county_level(90, 2)  # a level change moves person 7, no row touched
    assert fired(verdicts(view, [low])) == {5, 6, 7}


def test_phone_clears_only_the_phone_they_name(view: MemoryIndexView) -> None:
    rule = {
        "id": "roam",
        "colour": "yellow",
        "checks": [{"source": "roaming", "days": 14}],
        "clears": [{"source": "phone_verified"}],
    }
    result = verdicts(view, [rule])
    # Person 8 roamed only on phone 101, which is verified: cleared, not fired.
    assert result[8] == ReferenceVerdict(0, 0, 1)
    assert result[9] == ReferenceVerdict(1, 1, 0)
    assert result[10] == ReferenceVerdict(0, 0, 1)
    view.add_rows("roaming", [100], day=T)  # now a second, unverified phone of person 8 roamed
    assert verdicts(view, [rule])[8] == ReferenceVerdict(1, 1, 0)


def test_person_clear_and_colour_is_the_most_severe(view: MemoryIndexView) -> None:
    rules = [
        {"id": "contact", "colour": "yellow", "checks": [{"source": "contact"}]},
        {
            "id": "confirmed",
            "colour": "red",
            "checks": [{"source": "confirmed"}],
            "clears": [{"source": "nat_negative", "days": 7}],
        },
    ]
    result = verdicts(view, rules)
    assert result[1] == ReferenceVerdict(2, 0b11, 0)
    assert result[3] == ReferenceVerdict(1, 0b01, 0b10)  # confirmed cleared by a negative test
    assert result[11] == ReferenceVerdict(1, 0b01, 0)
    assert result[0] == ReferenceVerdict(0, 0, 0)


def test_match_all_needs_every_check(view: MemoryIndexView) -> None:
    rule = {
        "id": "both",
        "colour": "red",
        "match": "all",
        "checks": [{"source": "confirmed"}, {"source": "contact"}],
    }
    assert fired(verdicts(view, [rule])) == {1, 3}
    with_phone = {
        "id": "both",
        "colour": "red",
        "match": "all",
        "checks": [{"source": "contact"}, {"source": "roaming"}],
        "clears": [{"source": "phone_verified"}],
    }
    result = verdicts(view, [with_phone])
    # Person 10 is a contact and roamed, but only on a verified phone: matched raw, cleared.
    assert result[10] == ReferenceVerdict(0, 0, 1)


# -- hourly sources --------------------------------------------------------------------------------


@pytest.fixture
def hourly() -> MemoryIndexView:
    v = MemoryIndexView(person_count=8)
    v.add_source("contact", "person")
    v.add_source("nat", "person", hourly=True)
    v.add_rows("contact", range(8), day=T)
    now = T * 24 + 10
    for person, hour in [(1, now), (2, now - 47), (3, now - 48), (4, now + 1), (5, None)]:
        v.add_rows("nat", [person], hour=hour)
    v.add_rows("nat", [6], hour=(T - 3) * 24)  # three days ago, 00:00
    return v


def cleared_at(view: MemoryIndexView, clear: dict[str, Any], hour: int | None) -> set[int]:
    rule = {"id": "r", "colour": "yellow", "checks": [{"source": "contact"}], "clears": [clear]}
    ref = ReferenceEvaluator(view, [rule], T, hour)
    return {p for p in range(view.person_count) if ref.evaluate(p).cleared_mask}


def test_an_hour_window_ends_at_the_evaluation_hour(hourly: MemoryIndexView) -> None:
    now = T * 24 + 10
    nat48 = {"source": "nat", "hours": 48}
    # 47 hours back is in, 48 is out; an hour ahead of the evaluation hour is not yet in.
    assert cleared_at(hourly, nat48, now) == {1, 2, 5}
    assert cleared_at(hourly, nat48, now + 1) == {1, 4, 5}
    assert cleared_at(hourly, nat48, now - 1) == {2, 3, 5}
    assert cleared_at(hourly, {"source": "nat", "hours": 1}, now) == {1, 5}
    # The default hour is the last of the day.
    assert cleared_at(hourly, nat48, None) == cleared_at(hourly, nat48, T * 24 + 23)


def test_days_on_an_hourly_source_are_24_hours_each(hourly: MemoryIndexView) -> None:
    now = T * 24 + 10
    for days in (1, 2, 3, 4):
        by_days = cleared_at(hourly, {"source": "nat", "days": days}, now)
        assert by_days == cleared_at(hourly, {"source": "nat", "hours": 24 * days}, now)
    # Three days ago at 00:00 is 82 hours before 10:00 today: in a 4-day window, not a 3-day.
    assert 6 not in cleared_at(hourly, {"source": "nat", "days": 3}, now)
    assert 6 in cleared_at(hourly, {"source": "nat", "days": 4}, now)
    assert cleared_at(hourly, {"source": "nat"}, now) == {1, 2, 3, 4, 5, 6}


def test_hourly_rows_need_hours_and_daily_rows_days(hourly: MemoryIndexView) -> None:
    assert hourly.source_is_hourly("nat") and not hourly.source_is_hourly("contact")
    with pytest.raises(ValueError, match="hourly"):
        hourly.add_rows("nat", [1], day=T)
    with pytest.raises(ValueError, match="daily"):
        hourly.add_rows("contact", [1], hour=H)
    with pytest.raises(KeyError):
        hourly.source_is_hourly("nothing")


def test_bad_hour_plans_are_refused(hourly: MemoryIndexView) -> None:
    def plan(check: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"id": "x", "colour": "red", "checks": [check]}]

    with pytest.raises(ValueError, match="not an hourly source"):
        ReferenceEvaluator(hourly, plan({"source": "contact", "hours": 5}), T)
    with pytest.raises(ValueError, match="not both"):
        ReferenceEvaluator(hourly, plan({"source": "nat", "hours": 5, "days": 1}), T)
    for hour in (T * 24 - 1, (T + 1) * 24):
        with pytest.raises(ValueError, match="not an hour of day"):
            ReferenceEvaluator(hourly, plan({"source": "nat", "hours": 5}), T, hour)


def test_bad_plans_are_refused(view: MemoryIndexView) -> None:
    with pytest.raises(ValueError, match="unknown source"):
        ReferenceEvaluator(view, [{"id": "x", "colour": "red", "checks": [{"source": "no"}]}], T)
    with pytest.raises(ValueError, match="colour"):
        ReferenceEvaluator(view, [{"id": "x", "colour": "blue", "checks": []}], T)
    with pytest.raises(ValueError, match="min_level"):
        checks = [{"source": "confirmed", "min_level": 2}]
        ReferenceEvaluator(view, [{"id": "x", "colour": "red", "checks": checks}], T)


# -- random cases against a literal reading of the semantics ------------------------------------

Row = tuple[int, int | None, int]  # member, day (an hour on an hourly source), county


def literal(
    persons: int,
    holders: dict[int, int],
    levels: dict[int, int],
    rows: dict[str, list[Row]],
    keyed: dict[str, str],
    hourly: set[str],
    rules: list[dict[str, Any]],
    hour: int,
) -> dict[int, ReferenceVerdict]:
    """The semantics read word by word, over rows and Python sets: no bitmaps, no precompute."""

    def in_window(check: dict[str, Any], at: int | None) -> bool:
        days: int | None = check.get("days")
        hours: int | None = check.get("hours")
        if at is None:
            return True
        if check["source"] in hourly:
            n = hours if days is None else days * 24
            return n is None or (at <= hour and hour - at < n)
        return days is None or T - days + 1 <= at <= T

    def covered(check: dict[str, Any]) -> set[int]:
        min_level = check.get("min_level")
        return {
            member
            for member, at, county in rows[check["source"]]
            if in_window(check, at) and (min_level is None or levels.get(county, 0) >= min_level)
        }

    result = {}
    for person in range(persons):
        phones = {phone for phone, holder in holders.items() if holder == person}
        colour = fired_mask = cleared_mask = 0
        for bit, rule in enumerate(rules):
            clears = rule.get("clears", [])
            phone_clear = set().union(
                *(covered(c) for c in clears if keyed[c["source"]] == "phone")
            )
            person_cleared = any(
                person in covered(c) for c in clears if keyed[c["source"]] == "person"
            )
            raw, real = [], []
            for check in rule["checks"]:
                members = covered(check)
                if keyed[check["source"]] == "person":
                    raw.append(person in members)
                    real.append(person in members)
                else:
                    raw.append(bool(phones & members))
                    real.append(bool((phones & members) - phone_clear))
            combine = all if rule.get("match", "any") == "all" else any
            matched_raw, matched = combine(raw), combine(real)
            is_fired = matched and not person_cleared
            if is_fired:
                fired_mask |= 1 << bit
                colour = max(colour, {"yellow": 1, "red": 2}[rule["colour"]])
            elif matched_raw:
                cleared_mask |= 1 << bit
        result[person] = ReferenceVerdict(colour, fired_mask, cleared_mask)
    return result


@st.composite
def cases(draw: st.DrawFn) -> tuple[Any, ...]:
    persons = draw(st.integers(1, 15))
    phones = draw(st.integers(0, 15))
    holders = {
        phone: holder
        for phone in range(phones)
        if (holder := draw(st.none() | st.integers(0, persons - 1))) is not None
    }
    levels = draw(st.dictionaries(st.integers(1, 4), st.integers(0, 3)))
    hour = T * 24 + draw(st.integers(0, 23))
    keyed: dict[str, str] = {}
    county_sources: set[str] = set()
    hourly: set[str] = set()
    rows: dict[str, list[Row]] = {}
    # Hour windows and row ages share small values, so rows land on window edges often.
    hours_back = st.integers(-3, 100)
    for i in range(draw(st.integers(1, 5))):
        name = f"s{i}"
        keyed[name] = draw(st.sampled_from(["person", "phone"]))
        if draw(st.booleans()):
            county_sources.add(name)
        if draw(st.booleans()):
            hourly.add(name)
        at = (
            hours_back.map(lambda back: hour - back)
            if name in hourly
            else st.integers(T - 20, T + 2)
        )
        limit = persons if keyed[name] == "person" else max(phones, 1)
        rows[name] = draw(
            st.lists(
                st.tuples(
                    st.integers(0, limit - 1),
                    st.none() | at,
                    st.integers(1, 4) if name in county_sources else st.just(-1),
                ),
                max_size=20,
            )
        )

    def check() -> st.SearchStrategy[dict[str, Any]]:
        @st.composite
        def build(draw2: st.DrawFn) -> dict[str, Any]:
            name = draw2(st.sampled_from(sorted(keyed)))
            out: dict[str, Any] = {"source": name}
            unit = draw2(st.sampled_from(["days", "hours"] if name in hourly else ["days"]))
            if unit == "hours":
                if (hours := draw2(st.none() | st.integers(1, 100))) is not None:
                    out["hours"] = hours
            elif (days := draw2(st.none() | st.integers(1, 20))) is not None:
                out["days"] = days
            if name in county_sources and (level := draw2(st.none() | st.integers(0, 3))):
                out["min_level"] = level
            return out

        return build()

    rules = [
        {
            "id": f"r{i}",
            "colour": draw(st.sampled_from(["yellow", "red"])),
            "match": draw(st.sampled_from(["any", "all"])),
            "checks": draw(st.lists(check(), min_size=1, max_size=3)),
            "clears": draw(st.lists(check(), max_size=2)),
        }
        for i in range(draw(st.integers(1, 6)))
    ]
    return persons, holders, levels, rows, keyed, county_sources, hourly, rules, hour


@settings(max_examples=300, deadline=None)
@given(cases())
def test_reference_forms_agree_with_the_literal_semantics(case: tuple[Any, ...]) -> None:
    persons, holders, levels, rows, keyed, county_sources, hourly, rules, hour = case
    view = MemoryIndexView(person_count=persons)
    for name, source_rows in rows.items():
        is_hourly = name in hourly
        view.add_source(name, keyed[name], has_county=name in county_sources, hourly=is_hourly)
        for member, at, county in source_rows:
            counties = [county] if name in county_sources else None
            if is_hourly:
                view.add_rows(name, [member], counties=counties, hour=at)
            else:
                view.add_rows(name, [member], at, counties)
    for phone, holder in holders.items():
        view.link_phone(phone, holder)
    for county, level in levels.items():
        view.set_county_level(county, level)
    expected = literal(persons, holders, levels, rows, keyed, hourly, rules, hour)
    ref = ReferenceEvaluator(view, rules, T, hour)
    assert {p: ref.evaluate(p) for p in range(persons)} == expected
    batch = ref.evaluate_batch(BitMap(range(persons)))
    assert batch.verdicts() == expected
    assert batch.colour_counts() == tuple(
        sum(v.colour == c for v in expected.values()) for c in (0, 1, 2)
    )
