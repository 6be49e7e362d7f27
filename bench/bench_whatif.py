"""What-if at city scale: a draft rule set evaluated over the whole population beside the active
one, with the colour transitions counted per colour pair, per rule and per district.

    python -m bench.bench_whatif                  # 18,000,000 persons, 25,000,000 phones
    python -m bench.bench_whatif --quick          # 200,000 persons, 300,000 phones

The population is built directly in the matcher (as `bench.bench_matcher` does, reusing its
helpers): synthetic ID numbers and phones through `IndexBuilder.add_persons` / `add_phones`,
then every source of the real catalogue (`services/_common/sources.py`) at sizes a city of
18 M would see, dated over its window, counties graded like the country's, and the
public-security `residence` feed placing everyone in one of Tianjin's 16 districts. The active
plan is the default rule set (`services/rules/default.toml`); the draft is a plausible January
2021 tightening of it (medium-risk roaming turns red, high-risk travel looks back 21 days,
secondary contacts clear only on a 48-hour test).

It times what a colour replica does for `ColourService.WhatIf`: the draft's `Verdicts` over
everyone, then `transitions` with districts (the active verdicts are already live in a
replica; their build is timed too), and the whole server-side call through `ColourEngine`
(parse, compile, evaluate, count). A Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import sys
import time
from array import array
from dataclasses import dataclass

import healthcode_matcher as hm

from bench.bench_matcher import (
    CHUNK,
    COUNTIES,
    COUNTY_BASE,
    FULL_PERSONS,
    FULL_PHONES,
    HIGH,
    LOW,
    MEDIUM,
    QUICK_PERSONS,
    QUICK_PHONES,
    Table,
    gib,
    line_chunks,
    memory,
    progress,
    random_counties,
    random_ids,
    rate,
    release_free_memory,
    scaled,
    timed,
    to_le,
)
from services._common.days import SHANGHAI, day_number
from services._common.sources import SOURCES
from services.colour.engine import ColourEngine
from services.colour.rulestore import compile_rules
from services.rules import DEFAULT_RULE_SET_PATH, RuleSet, parse_rule_set

# Hebei's outbreak: Tianjin tightened its rules.
NOON = dt.datetime(2021, 1, 6, 12, 0, tzinfo=SHANGHAI)
TODAY = day_number(NOON)
# Tianjin's districts (GB/T 2260 120101..120119) and rough population weights: every code is
# 120100 + k, so the low byte of the little-endian u32 is 0x24 + k and no carry reaches the rest.
DISTRICTS = {1: 4, 2: 7, 3: 8, 4: 8, 5: 6, 6: 4, 10: 6, 11: 9}
DISTRICTS |= {12: 7, 13: 7, 14: 9, 15: 6, 16: 15, 17: 3, 18: 6, 19: 6}
DISTRICT_BASE = 120_100


@dataclass(frozen=True)
class Feed:
    """One catalogue source, sized for 18 M persons; smaller runs scale it down."""

    name: str
    rows: int  # rows over all days at full size (a person may appear on several days)
    days: int | None  # rows spread over this many days ending today; None: undated list


# Sizes a city of 18 M sees on a bad winter day (telecom and tests dominate).
FEEDS: tuple[Feed, ...] = (
    Feed("confirmed", 6_000, 28),
    Feed("suspected", 4_000, 14),
    Feed("close_contact", 80_000, 21),
    Feed("secondary_contact", 300_000, 14),
    Feed("inbound_traveller", 200_000, 28),
    Feed("inbound_co_traveller", 40_000, 14),
    Feed("province_red", 5_000, 2),
    Feed("province_yellow", 70_000, 2),
    Feed("rail_co_passenger", 500_000, 14),
    Feed("flight_co_passenger", 200_000, 14),
    Feed("home_quarantine", 60_000, None),
    Feed("sealed_compound", 150_000, None),
    Feed("grassroots_screening", 150_000, 14),
    Feed("cold_chain_exposure", 8_000, 14),
    Feed("fever_clinic", 40_000, 3),
    Feed("declared_fever", 30_000, 1),
    Feed("declared_symptoms", 120_000, 1),
    Feed("declared_case_contact", 20_000, 14),
    Feed("declared_travel", 1_500_000, 21),  # the declaration keeps 30 days
    Feed("telecom_roaming", 6_000_000, 14),
    Feed("nat_negative", 4_000_000, 7),
    Feed("community_verified", 60_000, 14),
    Feed("phone_community_verified", 40_000, 14),
    Feed("quarantine_released", 100_000, 28),
)

# The draft: (what the text says now, what the draft says), each checked to occur once.
_SECONDARY = '{ source = "secondary_contact" }]\nclears = [\n    '
DRAFT_EDITS = (
    ('version = "2020.12.16-tianjin"', 'version = "2021.01.06-tianjin-draft"'),
    (
        'id = "medium-risk-county-roaming"\ncolour = "yellow"\nscope = "shared"',
        'id = "medium-risk-county-roaming"\ncolour = "red"\nscope = "local"',
    ),
    (
        'id = "high-risk-county-travel"\ncolour = "red"\nscope = "local"\nwindow_days = 14',
        'id = "high-risk-county-travel"\ncolour = "red"\nscope = "local"\nwindow_days = 21',
    ),
    (
        _SECONDARY + '{ source = "nat_negative", window_hours = 72 }',
        _SECONDARY + '{ source = "nat_negative", window_hours = 48 }',
    ),
)


def secs(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


def draft_text() -> str:
    text = DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8")
    for old, new in DRAFT_EDITS:
        assert text.count(old) == 1, f"the default rule set changed; cannot apply: {old!r}"
        text = text.replace(old, new)
    return text


def residence_counties(rng: random.Random, count: int) -> bytes:
    """One district code per person as little-endian u32, drawn with the weights above at C
    speed: a random byte picks a slot of a 256-entry table."""
    table = bytearray()
    total = sum(DISTRICTS.values())
    for k, weight in DISTRICTS.items():
        table += bytes([0x24 + k]) * round(256 * weight / total)
    table = (table + table[-1:] * 256)[:256]
    out = bytearray((DISTRICT_BASE & ~0xFF).to_bytes(4, "little") * count)
    out[0::4] = rng.randbytes(count).translate(bytes(table))
    return bytes(out)


@dataclass
class Population:
    index: hm.Index
    secret: bytes
    rows: int


def build(persons: int, phones: int, seed: int, table: Table) -> Population:
    rng = random.Random(seed)
    secret = rng.randbytes(32)
    progress(f"generating {persons:,} ID numbers and {phones:,} phone numbers")
    gen_s, id_numbers = timed(hm.synthetic_id_numbers, persons, seed)
    gen2_s, phone_numbers = timed(hm.synthetic_phones, phones, seed)
    table.add("synthetic identifiers (not part of the build)", f"{gen_s + gen2_s:.1f} s")
    # Phone i belongs to person i; the rest are second SIMs of distinct random persons.
    second = random_ids(rng, phones - persons, persons).to_array() if phones > persons else []
    phones = min(phones, persons + len(second))
    holders = to_le(array("I", range(min(persons, phones)))) + to_le(array("I", second))

    start = time.perf_counter()
    builder = hm.Index(secret).builder()
    for chunk in line_chunks(id_numbers, persons, CHUNK):
        builder.add_persons(chunk)
    progress(f"persons registered: {persons:,}")
    del id_numbers
    width = phone_numbers.index(b"\n") + 1
    phone_numbers = phone_numbers[: phones * width - 1]
    for n, chunk in enumerate(line_chunks(phone_numbers, phones, CHUNK)):
        at = n * CHUNK
        builder.add_phones(chunk, holders[4 * at : 4 * (at + CHUNK)])
    progress(f"phones registered: {phones:,}")
    del phone_numbers, holders
    registry_s = time.perf_counter() - start

    for name, source in SOURCES.items():
        builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
    rows_total, rows_s = 0, 0.0
    for feed in FEEDS:
        source = SOURCES[feed.name]
        limit = persons if source.keyed_by == "person" else phones
        total = scaled(feed.rows, persons)
        days: list[int | None] = (
            [None] if feed.days is None else list(range(TODAY - feed.days + 1, TODAY + 1))
        )
        for day in days:
            ids = random_ids(rng, max(1, total // len(days)), limit)
            counties = random_counties(rng, len(ids)) if source.has_county else None
            ids_le = to_le(ids.to_array())
            start = time.perf_counter()
            if source.hourly and day is not None:
                # one bucket a day, at noon: the verdicts below are built at the day's last hour
                builder.add_rows(feed.name, ids_le, None, counties, hour=day * 24 + 12)
            else:
                builder.add_rows(feed.name, ids_le, day, counties)
            rows_s += time.perf_counter() - start
            rows_total += len(ids)
        progress(f"source {feed.name}: {total:,} rows over {len(days)} bucket(s)")
    everyone = to_le(array("I", range(persons)))
    districts = residence_counties(rng, persons)
    start = time.perf_counter()
    builder.add_rows("residence", everyone, None, districts)
    rows_s += time.perf_counter() - start
    rows_total += persons
    del everyone, districts
    progress(f"residence: {persons:,} persons in {len(DISTRICTS)} districts")
    levels = rng.sample(range(COUNTY_BASE, COUNTY_BASE + COUNTIES), HIGH + MEDIUM + LOW)
    for position, county in enumerate(levels):
        level = 3 if position < HIGH else 2 if position < HIGH + MEDIUM else 1
        builder.set_county_level(county, level)
    finish_s, index = timed(builder.finish)
    table.add(
        "index build: registry + catalogue sources + residence",
        f"{registry_s + rows_s + finish_s:.1f} s ({rows_total:,} rows)",
    )
    return Population(index, secret, rows_total)


def run(args: argparse.Namespace) -> str:
    persons, phones = args.persons, args.phones
    table = Table()
    population = build(persons, phones, args.seed, table)
    index = population.index
    release_free_memory()
    active_set = parse_rule_set(DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8"), "default.toml")
    text = draft_text()
    draft_set: RuleSet = parse_rule_set(text, "draft.toml")
    active_plan = hm.Plan(active_set.plan_rules(), active_set.version)
    draft_plan = hm.Plan(draft_set.plan_rules(), draft_set.version)

    progress("active verdicts (a live replica holds these already)")
    active_s, active = timed(hm.Verdicts, index, active_plan, TODAY)
    table.add(
        "active rule set: Verdicts(index, active plan, today)",
        f"{secs(active_s)} ({rate(persons / active_s)})",
        "built once per index version; not part of a what-if",
    )
    progress("draft verdicts")
    draft_s, draft = timed(hm.Verdicts, index, draft_plan, TODAY)
    table.add(
        "draft rule set: Verdicts(index, draft plan, today)",
        f"{secs(draft_s)} ({rate(persons / draft_s)})",
    )
    progress("transitions with districts")
    with_s, counted = timed(active.transitions, draft, "residence")
    table.add("transitions(draft, 'residence'): colours, rules, districts", secs(with_s))
    without_s, _ = timed(active.transitions, draft, None)
    table.add("transitions(draft) without districts", secs(without_s))
    what_if_s = draft_s + with_s
    table.add(
        "**what-if** = draft Verdicts + transitions with districts",
        f"**{secs(what_if_s)}**",
        "target < 5 s at 18 M",
    )
    changed = counted.changed
    del active, draft
    release_free_memory()

    progress("the same through ColourEngine.what_if (the WhatIf RPC's server side)")
    engine = ColourEngine(population.secret, compile_rules(active_set), now=lambda: NOON)
    install_s, _ = timed(engine.install_index, index)
    table.add(
        "replica: install the index (active + shared verdicts)",
        secs(install_s),
        "once per index version",
    )
    served_s, outcome = timed(engine.what_if, text, "draft.toml")
    assert outcome.changed == changed, (outcome.changed, changed)
    table.add(
        "**WhatIf as served**: ColourEngine.what_if (parse, compile, evaluate, count)",
        f"**{secs(served_s)}** (evaluate + count {secs(outcome.seconds)})",
        "target < 5 s at 18 M",
    )
    mem = memory()
    table.add(
        "resident memory at the end (VmRSS / VmHWM)", f"{gib(mem['VmRSS'])} / {gib(mem['VmHWM'])}"
    )

    (gg, gy, gr), (yg, yy, yr), (rg, ry, rr) = outcome.colours
    table.add(
        "result: active -> draft (green/yellow/red rows, draft columns)",
        f"green {gg:,}/{gy:,}/{gr:,}; yellow {yg:,}/{yy:,}/{yr:,}; red {rg:,}/{ry:,}/{rr:,}",
    )
    table.add("result: persons changing colour", f"{outcome.changed:,}")
    moved = [r for r in outcome.rules if r.starts or r.stops or r.differences]
    table.add(
        "result: rules the draft changes",
        "; ".join(
            f"{r.rule_id} ({', '.join(r.differences) or 'same'}: +{r.starts:,}/-{r.stops:,})"
            for r in moved
        ),
    )
    top = outcome.districts[:3]
    table.add(
        "result: districts (most changed first)",
        f"{len(outcome.districts)} districts; "
        + ", ".join(
            f"{county}: {sum(sum(r) for r in m) - sum(m[i][i] for i in range(3)):,}"
            for county, m in top
        ),
    )

    command = " ".join(["python -m bench.bench_whatif", *args.argv])
    setting = (
        f"{persons:,} persons, {phones:,} phones, {len(FEEDS)} catalogue sources + residence "
        f"({population.rows:,} rows; {COUNTIES:,} counties of which {HIGH} high, {MEDIUM} medium, "
        f"{LOW} low; {len(DISTRICTS)} districts), active {active_set.version} "
        f"({len(active_set.rules)} rules, {active_set.check_count} checks) vs draft "
        f"{draft_set.version}, day {TODAY}."
    )
    machine = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, healthcode_matcher "
        f"{hm.__version__}."
    )
    return "\n".join([f"`{command}`", "", setting, machine, "", table.markdown()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=FULL_PERSONS)
    parser.add_argument("--phones", type=int, default=None, help="default: 25/18 of --persons")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PERSONS:,} persons, {QUICK_PHONES:,} phones"
    )
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.persons, args.phones = QUICK_PERSONS, QUICK_PHONES
    if args.phones is None:
        args.phones = args.persons * FULL_PHONES // FULL_PERSONS
    print(run(args))


if __name__ == "__main__":
    main()
