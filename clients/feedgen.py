"""Synthetic risk feeds for every source in the catalogue, so a demo or a test can fill them.

Deterministic by seed: the same (seed, population size, today, rate, number generator) gives the
same rows. Numbers come from `healthcode_matcher.synthetic_id_numbers` / `synthetic_phones` when
the extension is built ("auto"), else from a Python generator of GB 11643-valid ID numbers; pass
`numbers="python"` (`--numbers python`) for output that does not depend on the build.

A row is a dict::

    {"source": "close_contact", "id_number": "120101199001011234", "day": "2020-12-16",
     "county": None}
    {"source": "telecom_roaming", "phone": "13812345678", "day": "2020-12-10", "county": 210211}

    {"source": "nat_negative", "id_number": "120101199001011234", "day": "2020-12-16",
     "hour": 446697, "county": None}   # 09:00

`day` is an Asia/Shanghai date (ISO) or None for an undated list entry; `county` is a 6-digit
administrative code on county sources only. Rows of hourly sources (`Source.hourly`: a negative
test "within 48 hours") also carry `hour`, the hours since 1970-01-01 00:00 Asia/Shanghai
(`hour // 24` is the day number of `day`); `clients.cli.feed_row` sends it as `FeedRow.at`.
Hours are drawn up to a "now" hour, by default the last hour of `today` (23:00), which is also
the hour `healthcode_matcher.Verdicts` evaluates at when given no hour. The county risk levels
are in `COUNTIES` (synthetic grading, not history).

    python -m clients.feedgen feed --persons 1000 --seed 7 --today 2020-12-16 --hour 14 \
        --out rows.jsonl
    python -m clients.feedgen registry --persons 1000 --seed 7 --out registry.jsonl
    python -m clients.feedgen counties
"""

from __future__ import annotations

import csv
import enum
import json
import random
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import typer
from stdnum.cn import ric

from services._common.days import day_number, hour_date, hour_of_date, last_hour
from services._common.sources import SOURCES

if TYPE_CHECKING:
    from services.rules import Check, Rule, RuleSet

Row = dict[str, Any]
_T = TypeVar("_T")
NumberGenerator = Literal["auto", "native", "python"]

# County code -> (name, risk level 0 none .. 3 high). Synthetic grading: a few high and medium
# counties so that every county rule has rows to match, most rows landing in ungraded or low ones.
COUNTIES: dict[int, tuple[str, int]] = {
    120101: ("天津市和平区", 1),
    120116: ("天津市滨海新区", 1),
    120115: ("天津市宝坻区", 1),
    110105: ("北京市朝阳区", 1),
    110106: ("北京市丰台区", 2),
    130102: ("河北省石家庄市长安区", 1),
    130105: ("河北省石家庄市新华区", 2),
    210202: ("辽宁省大连市中山区", 2),
    210211: ("辽宁省大连市甘井子区", 3),
    370202: ("山东省青岛市市南区", 2),
    370213: ("山东省青岛市李沧区", 3),
    310115: ("上海市浦东新区", 1),
    440305: ("广东省深圳市南山区", 0),
    330106: ("浙江省杭州市西湖区", 0),
}
COUNTY_LEVELS: dict[int, int] = {code: level for code, (_, level) in COUNTIES.items()}
# Tianjin's 16 districts (GB/T 2260): where the synthetic people live (the `residence` source,
# the districts of the what-if report). Roughly weighted by population.
TIANJIN_DISTRICTS: dict[int, tuple[str, int]] = {
    120101: ("和平区", 4),
    120102: ("河东区", 7),
    120103: ("河西区", 8),
    120104: ("南开区", 8),
    120105: ("河北区", 6),
    120106: ("红桥区", 4),
    120110: ("东丽区", 6),
    120111: ("西青区", 9),
    120112: ("津南区", 7),
    120113: ("北辰区", 7),
    120114: ("武清区", 9),
    120115: ("宝坻区", 6),
    120116: ("滨海新区", 15),
    120117: ("宁河区", 3),
    120118: ("静海区", 6),
    120119: ("蓟州区", 6),
}

# Where the synthetic people were born (first six digits of the ID number): mostly Tianjin.
_REGIONS = (
    [120101, 120102, 120103, 120104, 120105, 120106, 120110, 120111, 120112, 120113]
    + [120114, 120115, 120116, 120117, 120118, 120119]
    + [110101, 110105, 130102, 130203, 210202, 370202]
)
_PHONE_PREFIXES = [*range(130, 140), *range(150, 154), *range(155, 160), 166, 176, 177, 178]
_PHONE_PREFIXES += [*range(180, 184), *range(185, 190), 198, 199]
# Mobile prefixes of the synthetic phones (clients.population numbers its city's phones by them).
PHONE_PREFIXES = tuple(_PHONE_PREFIXES)
# How common each source is, relative to `rate`: cases are rare, declarations and tests common.
_RELATIVE_RATE = {
    "confirmed": 0.05,
    "suspected": 0.1,
    "close_contact": 0.5,
    "secondary_contact": 0.8,
    "inbound_traveller": 0.3,
    "inbound_co_traveller": 0.1,
    "province_red": 0.1,
    "province_yellow": 0.3,
    "home_quarantine": 0.5,
    "sealed_compound": 1.0,
    "declared_travel": 3.0,
    "telecom_roaming": 3.0,
    "nat_negative": 5.0,
}
_GB11643_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]


# --- numbers -----------------------------------------------------------------------------------


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits of a resident ID number."""
    total = sum(int(d) * w for d, w in zip(first17, _GB11643_WEIGHTS, strict=True))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def _native() -> Any | None:
    try:
        import healthcode_matcher
    except ImportError:
        return None
    return healthcode_matcher


def synthetic_id_numbers(count: int, seed: int, numbers: NumberGenerator = "auto") -> list[str]:
    """`count` distinct valid resident ID numbers (region, birth date 1935-2015, sequence,
    GB 11643 check digit), each accepted by `stdnum.cn.ric`."""
    native = _native() if numbers != "python" else None
    if numbers == "native" and native is None:
        raise RuntimeError("numbers='native' but healthcode_matcher is not importable")
    if native is not None:
        return native.synthetic_id_numbers(count, seed).decode().split()  # type: ignore[no-any-return]
    rng = random.Random(seed)
    start, span = date(1935, 1, 1), (date(2015, 12, 31) - date(1935, 1, 1)).days
    out: dict[str, None] = {}
    while len(out) < count:
        birth = start + timedelta(days=rng.randrange(span + 1))
        first17 = f"{rng.choice(_REGIONS)}{birth:%Y%m%d}{rng.randrange(1000):03d}"
        number = first17 + id_check_digit(first17)
        # stdnum also checks the region code existed in the birth year (Binhai dates from 2009).
        if ric.is_valid(number):
            out.setdefault(number)
    return list(out)


def synthetic_phones(count: int, seed: int, numbers: NumberGenerator = "auto") -> list[str]:
    """`count` distinct mainland mobile numbers (1[3-9] and nine more digits)."""
    native = _native() if numbers != "python" else None
    if numbers == "native" and native is None:
        raise RuntimeError("numbers='native' but healthcode_matcher is not importable")
    if native is not None:
        return native.synthetic_phones(count, seed).decode().split()  # type: ignore[no-any-return]
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        out.setdefault(f"{rng.choice(_PHONE_PREFIXES)}{rng.randrange(100_000_000):08d}")
    return list(out)


# --- people ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """A registered person and the phones in their name (R7: possibly several, possibly none,
    e.g. an elderly person registered by family proxy)."""

    id_number: str
    phones: tuple[str, ...]


def make_population(
    count: int,
    seed: int,
    *,
    second_sim_rate: float = 0.1,
    no_phone_rate: float = 0.05,
    numbers: NumberGenerator = "auto",
) -> list[Person]:
    rng = random.Random(seed * 7919 + 1)
    phone_counts = []
    for _ in range(count):
        r = rng.random()
        phone_counts.append(
            0 if r < no_phone_rate else 2 if r < no_phone_rate + second_sim_rate else 1
        )
    id_numbers = synthetic_id_numbers(count, seed, numbers)
    phones = iter(synthetic_phones(sum(phone_counts), seed + 1, numbers))
    return [
        Person(id_number, tuple(next(phones) for _ in range(n)))
        for id_number, n in zip(id_numbers, phone_counts, strict=True)
    ]


# --- rows --------------------------------------------------------------------------------------


def row(
    source: str,
    *,
    id_number: str | None = None,
    phone: str | None = None,
    day: date | None = None,
    county: int | None = None,
    hour: int | None = None,
) -> Row:
    """One feed row, checked against the catalogue (keying, dating and county). A row of an
    hourly source takes `hour` (an hour number; `day` follows from it) or only `day`, which
    then counts from its 00:00, as the risk index counts a row sent with only a day."""
    src = SOURCES.get(source)
    if src is None:
        raise ValueError(f"unknown source {source!r}")
    if src.keyed_by == "person":
        if id_number is None or phone is not None:
            raise ValueError(f"{source} rows are keyed by id_number")
        key: Row = {"id_number": id_number}
    else:
        if phone is None or id_number is not None:
            raise ValueError(f"{source} rows are keyed by phone")
        key = {"phone": phone}
    if hour is not None:
        if not src.hourly:
            raise ValueError(f"{source} rows are counted in days: they have no hour")
        if day is not None and day != hour_date(hour):
            raise ValueError(f"{source} row: day {day} is not the date of hour {hour}")
        day = hour_date(hour)
    if src.dated != (day is not None):
        raise ValueError(f"{source} rows {'need' if src.dated else 'have no'} a day")
    if src.has_county != (county is not None):
        raise ValueError(f"{source} rows {'need' if src.has_county else 'have no'} a county")
    out: Row = {"source": source, **key, "day": None if day is None else day.isoformat()}
    if src.hourly:
        assert day is not None
        out["hour"] = hour if hour is not None else hour_of_date(day)
    out["county"] = county
    return out


def counties_at_level(level: int) -> list[int]:
    return [code for code, lvl in COUNTY_LEVELS.items() if lvl == level]


def generate_feed(
    population: Sequence[Person],
    today: date,
    seed: int,
    *,
    rate: float = 0.01,
    sources: Iterable[str] | None = None,
    max_days_ago: int = 20,
    now_hour: int | None = None,
) -> Iterator[Row]:
    """Rows for every catalogue source (or those named): about `rate` of the population per
    source, scaled by how common the source is. Clearing rows go mostly to people already
    flagged, so that clears have something to clear. An attribute source (residence) gets one
    row for every person. Rows of hourly sources get an hour no later than `now_hour` (an hour
    of `today`; default 23:00), drawn from their own random stream so that the other sources'
    rows do not depend on it."""
    names = list(SOURCES) if sources is None else list(sources)
    for n in names:
        if n not in SOURCES:
            raise ValueError(f"unknown source {n!r}")
    # Raising sources first: clearing rows are drawn from the people they flagged.
    names.sort(key=lambda n: SOURCES[n].clearing)
    rng = random.Random(seed * 104_729 + today.toordinal())
    hour_rng = random.Random(seed * 7_368_787 + today.toordinal())
    now = last_hour(today) if now_hour is None else now_hour
    if hour_date(now) != today:
        raise ValueError(f"now_hour {now_hour} is not an hour of {today}")
    all_phones = [ph for p in population for ph in p.phones]
    pool = range(len(population))
    flagged_persons: list[int] = []
    flagged_phones: list[str] = []
    county_codes = list(COUNTY_LEVELS)
    county_weights = [{0: 6, 1: 6, 2: 2, 3: 1}[COUNTY_LEVELS[c]] for c in county_codes]
    for name in names:
        src = SOURCES[name]
        if src.attribute:
            yield from _residence_rows(name, population, seed)
            continue
        want = max(1, round(rate * _RELATIVE_RATE.get(name, 1.0) * len(population)))
        if src.keyed_by == "person":
            if src.clearing and flagged_persons:
                picks = _mix(rng, flagged_persons, pool, want)
            else:
                picks = rng.sample(pool, min(want, len(pool)))
            keys = [{"id_number": population[i].id_number} for i in picks]
            if not src.clearing:
                flagged_persons.extend(picks)
        else:
            if src.clearing and flagged_phones:
                chosen = _mix(rng, flagged_phones, all_phones, want)
            else:
                chosen = rng.sample(all_phones, min(want, len(all_phones)))
            keys = [{"phone": ph} for ph in chosen]
            if not src.clearing:
                flagged_phones.extend(chosen)
        for key in keys:
            day = today - timedelta(days=rng.randint(0, max_days_ago)) if src.dated else None
            county = rng.choices(county_codes, county_weights)[0] if src.has_county else None
            hour = None
            if src.hourly and day is not None:
                latest = now % 24 if day == today else 23
                hour = hour_of_date(day, hour_rng.randint(0, latest))
            yield row(name, **key, day=day, county=county, hour=hour)


def _residence_rows(source: str, population: Sequence[Person], seed: int) -> Iterator[Row]:
    """Everyone lives somewhere: one undated row per person in a Tianjin district. Its own
    random stream, so adding the attribute left every risk row as it was."""
    rng = random.Random(seed * 15_485_863 + 11)
    codes = list(TIANJIN_DISTRICTS)
    weights = [w for _, w in TIANJIN_DISTRICTS.values()]
    for person, county in zip(
        population, rng.choices(codes, weights, k=len(population)), strict=True
    ):
        yield row(source, id_number=person.id_number, county=county)


def _mix(rng: random.Random, flagged: list[_T], pool: Sequence[_T], want: int) -> list[_T]:
    distinct = list(dict.fromkeys(flagged))
    from_flagged = rng.sample(distinct, min(len(distinct), (want * 3 + 3) // 4))
    rest = rng.sample(pool, min(len(pool), want - len(from_flagged)))
    return list(dict.fromkeys(from_flagged + rest))


# --- rows for one rule (scenarios for tests and demos) -----------------------------------------


def rows_to_fire(
    rule: Rule,
    person: Person,
    today: date,
    *,
    phone: str | None = None,
    days_ago: int = 0,
    now_hour: int | None = None,
) -> list[Row]:
    """Rows that make every check of `rule` match for `person` (so both "any" and "all" rules
    fire). County checks get a county graded exactly `min_level`, so a medium-risk row does not
    also fire the high-risk rule. Phone checks use `phone` (default: the person's first). Rows
    of hourly sources are timed `days_ago` days before `now_hour` (default 23:00 of `today`)."""
    return [
        _row_for(c, person, today, phone=phone, days_ago=days_ago, now_hour=now_hour)
        for c in rule.checks
    ]


def rows_to_clear(
    clear: Check,
    person: Person,
    today: date,
    *,
    phone: str | None = None,
    days_ago: int = 0,
    now_hour: int | None = None,
) -> Row:
    """The clearing row for one `clears` entry of a rule."""
    return _row_for(clear, person, today, phone=phone, days_ago=days_ago, now_hour=now_hour)


def window_hours(check: Check) -> int | None:
    """A check's window in hours, as the matcher counts it on an hourly source (a window in
    days is that many times 24 hours); None without a window."""
    return None if check.window is None else check.window.hours


def _row_for(
    check: Check,
    person: Person,
    today: date,
    *,
    phone: str | None,
    days_ago: int,
    now_hour: int | None = None,
    hours_ago: int | None = None,
) -> Row:
    src = SOURCES[check.source]
    day = hour = None
    if src.hourly:
        # Stay inside the window: the oldest hour it holds is (window - 1) hours back.
        now = last_hour(today) if now_hour is None else now_hour
        back = days_ago * 24 if hours_ago is None else hours_ago
        reach = window_hours(check)
        hour = now - (back if reach is None else min(back, reach - 1))
    elif src.dated:
        # Stay inside the window: a 1-day window only holds today's rows.
        back = days_ago if check.days is None else min(days_ago, check.days - 1)
        day = today - timedelta(days=back)
    county = None
    if src.has_county:
        county = counties_at_level(check.min_level or 0)[0]
    if src.keyed_by == "phone":
        ph = phone or (person.phones[0] if person.phones else None)
        if ph is None:
            raise ValueError(f"{check.source} needs a phone, and the person has none")
        return row(check.source, phone=ph, day=day, county=county, hour=hour)
    return row(check.source, id_number=person.id_number, day=day, county=county, hour=hour)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One person and their rows, with what the rule set must make of them."""

    name: str
    person: Person
    rows: tuple[Row, ...]
    fires: tuple[str, ...] = ()  # rules that must fire and stay uncleared
    cleared: tuple[str, ...] = ()  # rules that must be reported cleared
    silent: tuple[str, ...] = ()  # rules that must not fire


def rule_scenarios(
    rule_set: RuleSet,
    today: date,
    seed: int = 0,
    numbers: NumberGenerator = "python",
    *,
    now_hour: int | None = None,
    margin_hours: int = 0,
) -> list[Scenario]:
    """For every rule: a person it fires for, a person just outside its window, and for every
    clear a person it clears, a person whose clear is too old, and (phone clears) a person
    whose other phone still counts. Everyone holds two phones; phone risk comes through the
    second one, the seed's two-SIM case.

    Rows of hourly sources are timed against `now_hour` (an hour of `today`; default 23:00,
    the hour `Verdicts` takes when given none): a clear with an N-hour window sits just inside
    it, N - 1 hours back, and the clear too old just outside, N hours back. `margin_hours`
    moves the rows that must stay inside that many hours towards now, for a caller whose clock
    may pass an hour boundary before the verdicts are read (end-to-end tests); rows outside a
    window only move further out as time passes."""
    now = last_hour(today) if now_hour is None else now_hour
    if hour_date(now) != today:
        raise ValueError(f"now_hour {now_hour} is not an hour of {today}")
    plans: list[tuple[str, Rule, int]] = []  # (kind, rule, index of the clear or -1)
    for rule in rule_set.rules:
        plans.append(("fires", rule, -1))
        if all(SOURCES[c.source].dated for c in rule.checks):
            plans.append(("outside", rule, -1))
        for i, c in enumerate(rule.clears):
            plans.append(("cleared", rule, i))
            if c.window is not None:
                plans.append(("clear too old", rule, i))
            if SOURCES[c.source].keyed_by == "phone":
                plans.append(("other phone", rule, i))
    people = make_population(
        len(plans), seed, second_sim_rate=1.0, no_phone_rate=0.0, numbers=numbers
    )
    out = []
    for (kind, rule, i), person in zip(plans, people, strict=True):
        second = person.phones[1]
        rows = rows_to_fire(rule, person, today, phone=second, now_hour=now)
        if kind == "fires":
            out.append(Scenario(f"{rule.id}: fires", person, tuple(rows), fires=(rule.id,)))
            continue
        if kind == "outside":
            rows = [_outside(c, person, today, second, now) for c in rule.checks]
            name = f"{rule.id}: outside its window"
            out.append(Scenario(name, person, tuple(rows), silent=(rule.id,)))
            continue
        clear = rule.clears[i]
        if kind == "cleared":
            rows.append(_just_inside(clear, person, today, second, now, margin_hours))
            name = f"{rule.id}: cleared by {clear.source}"
            out.append(Scenario(name, person, tuple(rows), cleared=(rule.id,), silent=(rule.id,)))
        elif kind == "clear too old":
            rows.append(_outside(clear, person, today, second, now))
            name = f"{rule.id}: {clear.source} too old to clear"
            out.append(Scenario(name, person, tuple(rows), fires=(rule.id,)))
        else:
            rows += rows_to_fire(rule, person, today, phone=person.phones[0], now_hour=now)
            rows.append(rows_to_clear(clear, person, today, phone=second, now_hour=now))
            name = f"{rule.id}: {clear.source} of one phone leaves the other"
            out.append(Scenario(name, person, tuple(rows), fires=(rule.id,)))
    return out


def _just_inside(
    check: Check, person: Person, today: date, phone: str, now_hour: int, margin_hours: int
) -> Row:
    """A row of an hourly source at the oldest hour the check's window holds (less the margin);
    a daily source's row today, as before."""
    reach = window_hours(check)
    if not SOURCES[check.source].hourly or reach is None:
        return _row_for(check, person, today, phone=phone, days_ago=0, now_hour=now_hour)
    back = max(0, reach - 1 - margin_hours)
    return _row_for(
        check, person, today, phone=phone, days_ago=0, now_hour=now_hour, hours_ago=back
    )


def _outside(check: Check, person: Person, today: date, phone: str, now_hour: int) -> Row:
    # Just older than the window reaches (one day, or for an hourly source one hour); _row_for
    # would clamp it back inside.
    r = _row_for(check, person, today, phone=phone, days_ago=0, now_hour=now_hour)
    if SOURCES[check.source].hourly:
        reach = window_hours(check)
        assert reach is not None
        hour = now_hour - reach
        return r | {"day": hour_date(hour).isoformat(), "hour": hour}
    assert check.days is not None
    return r | {"day": (today - timedelta(days=check.days)).isoformat()}


# --- into a matcher index ----------------------------------------------------------------------


class _Builder(Protocol):
    def define_source(
        self, name: str, keyed_by: str, has_county: bool = False, hourly: bool = False
    ) -> None: ...
    def add_persons(self, id_numbers: bytes) -> bytes: ...
    def add_phones(self, phones: bytes, holders: bytes | None = None) -> bytes: ...
    def add_rows_by_identifier(
        self,
        source: str,
        identifiers: Sequence[str],
        days: Sequence[int | None] | None = None,
        counties: Sequence[int] | None = None,
        hours: Sequence[int | None] | None = None,
    ) -> int: ...
    def set_county_level(self, county: int, level: int) -> None: ...


def load_into(
    builder: _Builder,
    population: Sequence[Person],
    rows: Iterable[Row],
    county_levels: dict[int, int] | None = None,
) -> None:
    """Define every catalogue source on an `IndexBuilder`, register the people with their
    phones, add the rows (by hour on hourly sources) and the county grading."""
    for name, src in SOURCES.items():
        builder.define_source(name, src.keyed_by, src.has_county, hourly=src.hourly)
    if population:
        ids = builder.add_persons("\n".join(p.id_number for p in population).encode())
        person_ids = array("I")
        person_ids.frombytes(ids)
        if sys.byteorder != "little":
            person_ids.byteswap()
        linked = [
            (ph, pid) for p, pid in zip(population, person_ids, strict=True) for ph in p.phones
        ]
        if linked:
            holders = array("I", [pid for _, pid in linked])
            if sys.byteorder != "little":
                holders.byteswap()
            builder.add_phones("\n".join(ph for ph, _ in linked).encode(), holders.tobytes())
    by_source: dict[str, tuple[list[str], list[int | None], list[int]]] = {}
    for r in rows:
        idents, times, counties = by_source.setdefault(r["source"], ([], [], []))
        idents.append(r["id_number"] if "id_number" in r else r["phone"])
        day = None if r["day"] is None else day_number(date.fromisoformat(r["day"]))
        if SOURCES[r["source"]].hourly:
            # A row with only a day counts from its 00:00, as the risk index counts it.
            hour = r.get("hour")
            times.append(int(hour) if hour is not None else None if day is None else day * 24)
        else:
            times.append(day)
        if r.get("county") is not None:
            counties.append(int(r["county"]))
    for source, (idents, times, counties) in by_source.items():
        src = SOURCES[source]
        county_list = counties if src.has_county else None
        if src.hourly:
            builder.add_rows_by_identifier(source, idents, hours=times, counties=county_list)
        else:
            builder.add_rows_by_identifier(source, idents, times, county_list)
    for county, level in (COUNTY_LEVELS if county_levels is None else county_levels).items():
        builder.set_county_level(county, level)


# --- output ------------------------------------------------------------------------------------

_ROW_FIELDS = ["source", "id_number", "phone", "day", "hour", "county"]


def write_rows(rows: Iterable[Row], out: IO[str], fmt: str, fields: list[str] = _ROW_FIELDS) -> int:
    n = 0
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
            n += 1
    else:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


# --- CLI ---------------------------------------------------------------------------------------

app = typer.Typer(
    help="Synthetic feeds for every risk source (deterministic by seed).",
    no_args_is_help=True,
    add_completion=False,
)


class Format(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"


class Numbers(enum.StrEnum):
    auto = "auto"
    native = "native"
    python = "python"


_Persons = Annotated[int, typer.Option(min=1, help="Population size.")]
_Seed = Annotated[int, typer.Option(help="Seed: same seed, same output.")]
_Out = Annotated[Path, typer.Option("--out", "-o", help="Output file; '-' for stdout.")]
_Fmt = Annotated[Format, typer.Option("--format", "-f", help="jsonl or csv.")]
_Num = Annotated[
    Numbers,
    typer.Option(help="Number generator: the extension's (native), Python's, or native if built."),
]


@contextmanager
def _open_out(path: Path) -> Iterator[IO[str]]:
    if str(path) == "-":
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8", newline="") as f:
        yield f


@app.command()
def feed(
    persons: _Persons = 1000,
    seed: _Seed = 1,
    today: Annotated[
        str, typer.Option(help="Asia/Shanghai date the feeds are as of (YYYY-MM-DD).")
    ] = "2020-12-16",
    hour: Annotated[
        int,
        typer.Option(
            min=0,
            max=23,
            help="Asia/Shanghai hour of --today the feeds are as of: rows of hourly sources "
            "(nat_negative) are timed no later (the risk index refuses future times).",
        ),
    ] = 23,
    rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share listed per source.")] = 0.01,
    source: Annotated[
        list[str] | None, typer.Option("--source", "-s", help="Only these sources (repeatable).")
    ] = None,
    out: _Out = Path("-"),
    fmt: _Fmt = Format.jsonl,
    numbers: _Num = Numbers.auto,
) -> None:
    """Rows for every source in the catalogue."""
    try:
        day = date.fromisoformat(today)
    except ValueError:
        raise typer.BadParameter(f"not a date: {today!r}", param_hint="--today") from None
    for s in source or []:
        if s not in SOURCES:
            raise typer.BadParameter(f"unknown source {s!r}", param_hint="--source")
    people = make_population(persons, seed, numbers=numbers.value)
    now_hour = hour_of_date(day, hour)
    rows = generate_feed(people, day, seed, rate=rate, sources=source, now_hour=now_hour)
    with _open_out(out) as f:
        n = write_rows(rows, f, fmt.value)
    typer.echo(f"{n} rows", err=True)


@app.command()
def registry(
    persons: _Persons = 1000,
    seed: _Seed = 1,
    out: _Out = Path("-"),
    fmt: _Fmt = Format.jsonl,
    numbers: _Num = Numbers.auto,
) -> None:
    """The people behind `feed` (same --persons and --seed) with the phones in their names."""
    people = make_population(persons, seed, numbers=numbers.value)
    with _open_out(out) as f:
        if fmt == Format.csv:
            links = (
                {"id_number": p.id_number, "phone": ph} for p in people for ph in p.phones or [""]
            )
            write_rows(links, f, "csv", ["id_number", "phone"])
        else:
            write_rows(
                ({"id_number": p.id_number, "phones": list(p.phones)} for p in people), f, "jsonl"
            )


@app.command()
def counties(out: _Out = Path("-"), fmt: _Fmt = Format.jsonl) -> None:
    """The synthetic county risk grading (0 none, 1 low, 2 medium, 3 high) the rows refer to."""
    rows = ({"county": c, "name": name, "level": lvl} for c, (name, lvl) in COUNTIES.items())
    with _open_out(out) as f:
        write_rows(rows, f, fmt.value, ["county", "name", "level"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
