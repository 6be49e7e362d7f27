"""Incremental verdicts at city scale: what a colour replica does with each index version.

    python -m bench.bench_incremental             # 18,000,000 persons, 25,000,000 phones
    python -m bench.bench_incremental --quick     # 200,000 persons, 300,000 phones

The population, sources and county grading are `bench.bench_whatif`'s (the real source
catalogue at the sizes a city of 18 M sees, everyone resident in a Tianjin district), and the
plans are the default rule set, full and shared-only, the two a replica keeps. Then versions as
the risk index publishes them (issue 8: about one a second, each a small delta), built from the
base through a builder the way a replica builds them from the changes:

- registrations: new persons, each with a phone;
- a feed batch of 1,000 rows (and 10,000), by key, over person- and phone-keyed, daily, hourly
  and county sources at today's date and hour, with registrations and phones moved between
  holders alongside;
- a county re-graded from medium to high.

For each it times what the replica does: the touched persons worked out with the index lookups
(`person_ids_by_keys`, `phone_ids_by_keys`, `holders_of_phones`,
`persons_with_rows_in_counties`), then `Verdicts.update` of both plans, against a full
`Verdicts(index, plan, today, hour)` of both. Every updated verdicts are checked against the
fresh ones (colour and rule counts, every person's colour and fired mask, the non-green set).
A Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import healthcode_matcher as hm

from bench.bench_matcher import (
    COUNTIES,
    COUNTY_BASE,
    FULL_PERSONS,
    FULL_PHONES,
    QUICK_PERSONS,
    QUICK_PHONES,
    Table,
    gib,
    memory,
    progress,
    release_free_memory,
    to_le,
)
from bench.bench_whatif import NOON, TODAY, build
from services._common.days import hour_number
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set

HOUR = hour_number(NOON)
UNKNOWN = 2**32 - 1
# A feed batch: (source, keyed by, has county, hourly) with today's date or hour, undated for a
# control list; rows are spread evenly over these.
BATCH_SOURCES = (
    ("close_contact", "person", False, False),
    ("secondary_contact", "person", False, False),
    ("declared_travel", "person", True, False),
    ("nat_negative", "person", False, True),
    ("home_quarantine", "person", False, None),
    ("telecom_roaming", "phone", True, False),
    ("phone_community_verified", "phone", False, False),
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def u32_list(data: bytes) -> list[int]:
    values = array("I")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def le(values: Iterable[int]) -> bytes:
    return to_le(array("I", values))


def median_time(action: Callable[..., Any], repeat: int, *args: Any) -> tuple[float, float, Any]:
    """(median, min) seconds of `repeat` calls of `action(*args)`, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


@dataclass
class Identifiers:
    """Raw identifiers of some registered persons and phones (dense id -> number), to feed rows
    by key as the risk index does."""

    persons: dict[int, str]
    phones: dict[int, str]


def sample_identifiers(persons: int, phones: int, seed: int, rng: random.Random) -> Identifiers:
    """The numbers `bench_whatif.build` registered, in order (so line i is id i), for 25,000
    random persons and phones; the rest are dropped at once."""
    out = []
    for make, count in ((hm.synthetic_id_numbers, persons), (hm.synthetic_phones, phones)):
        data = make(count, seed)
        width = data.index(b"\n") + 1
        picked = rng.sample(range(count), min(count, 25_000))
        out.append({i: data[i * width : i * width + width - 1].decode() for i in picked})
        del data
    return Identifiers(*out)


@dataclass
class Delta:
    """One version after the base and whom it touches, as a replica works it out."""

    name: str
    index: hm.Index
    touched: bytes
    build_s: float  # applying the changes to a builder and finishing
    lookup_s: float  # working out the touched persons with the index lookups
    rows: int


def make_delta(
    base: hm.Index,
    ids: Identifiers,
    rng: random.Random,
    name: str,
    rows: int = 0,
    registrations: int = 0,
    moves: int = 0,
    regrade: int | None = None,
) -> Delta:
    hasher = base.hasher()
    person_pool, phone_pool = list(ids.persons), list(ids.phones)
    new_persons = [rng.randbytes(16) for _ in range(registrations)]
    new_phones = [rng.randbytes(16) for _ in range(registrations)]
    moved = [hasher.phone_key(ids.phones[f]) for f in rng.sample(phone_pool, moves)]
    movers = rng.sample(person_pool, moves)
    batch: dict[str, tuple[list[bytes], list[int | None], list[int]]] = {}
    person_keys: list[bytes] = []
    phone_keys: list[bytes] = []
    for k in range(rows):
        source, keyed_by, has_county, hourly = BATCH_SOURCES[k % len(BATCH_SOURCES)]
        if keyed_by == "person":
            key = hasher.person_key(ids.persons[rng.choice(person_pool)])
            person_keys.append(key)
        else:
            key = hasher.phone_key(ids.phones[rng.choice(phone_pool)])
            phone_keys.append(key)
        keys, times, counties = batch.setdefault(source, ([], [], []))
        keys.append(key)
        times.append(None if hourly is None else HOUR if hourly else TODAY)
        counties.append(COUNTY_BASE + rng.randrange(COUNTIES))

    start = time.perf_counter()
    builder = base.builder()
    for key, phone in zip(new_persons, new_phones, strict=True):
        builder.add_phone_key(phone, builder.add_person_key(key))
    for key, holder in zip(moved, movers, strict=True):
        builder.add_phone_key(key, holder)
    for source, (keys, times, counties) in batch.items():
        _, _, has_county, hourly = next(s for s in BATCH_SOURCES if s[0] == source)
        where = counties if has_county else None
        if hourly:
            builder.add_rows_by_key(source, b"".join(keys), counties=where, hours=times)
        else:
            builder.add_rows_by_key(source, b"".join(keys), times, where)
    if regrade is not None:
        builder.set_county_level(regrade, 3)
    index = builder.finish()
    build_s = time.perf_counter() - start

    start = time.perf_counter()
    touched: set[int] = set()
    found = u32_list(index.person_ids_by_keys(b"".join(person_keys)))
    touched.update(p for p in found if p != UNKNOWN)
    touched.update(u32_list(index.holders_of_phones(index.phone_ids_by_keys(b"".join(phone_keys)))))
    if moved:
        before = base.phone_ids_by_keys(b"".join(moved))
        touched.update(u32_list(base.holders_of_phones(before)))
        touched.update(u32_list(index.holders_of_phones(index.phone_ids_by_keys(b"".join(moved)))))
    if regrade is not None:
        touched.update(u32_list(index.persons_with_rows_in_counties([regrade])))
    listed = le(sorted(touched))
    lookup_s = time.perf_counter() - start
    return Delta(name, index, listed, build_s, lookup_s, rows)


def same(updated: hm.Verdicts, fresh: hm.Verdicts, everyone: bytes) -> bool:
    return (
        updated.colour_counts() == fresh.colour_counts()
        and updated.rule_counts() == fresh.rule_counts()
        and updated.evaluate_many(everyone) == fresh.evaluate_many(everyone)
        and updated.non_green() == fresh.non_green()
    )


def run(args: argparse.Namespace) -> str:
    persons, phones = args.persons, args.phones
    table = Table()
    rng = random.Random(args.seed + 7)
    population = build(persons, phones, args.seed, table)
    base = population.index
    progress("sampling identifiers of registered persons and phones")
    ids = sample_identifiers(base.person_count, base.phone_count, args.seed, rng)
    rules = load_rule_set(DEFAULT_RULE_SET_PATH)
    plans = {
        "full": hm.Plan(rules.plan_rules(), rules.version),
        "shared": hm.Plan(rules.shared_only().plan_rules(), rules.shared_only().version),
    }
    release_free_memory()
    before = memory()["VmRSS"]
    progress("the base verdicts (full and shared-only plans)")
    current = {k: hm.Verdicts(base, plan, TODAY, HOUR) for k, plan in plans.items()}
    release_free_memory()
    held = memory()["VmRSS"] - before
    table.add(
        "resident memory of the base verdicts, both plans (masks by block + window unions)",
        gib(held),
    )
    green, yellow, red = current["full"].colour_counts()
    table.add("colours, full plan (green / yellow / red)", f"{green:,} / {yellow:,} / {red:,}")

    graded = [c for c, level in base.county_levels().items() if level == 2]
    deltas = [
        make_delta(base, ids, rng, "300 registrations (a person and a phone each)", 0, 300),
        make_delta(
            base,
            ids,
            rng,
            "feed batch: 1,000 rows, 300 registrations, 30 phones moved",
            1_000,
            300,
            30,
        ),
        make_delta(
            base,
            ids,
            rng,
            "feed batch: 10,000 rows, 3,000 registrations, 300 phones moved",
            10_000,
            3_000,
            300,
        ),
        make_delta(base, ids, rng, "a county re-graded medium -> high", regrade=rng.choice(graded)),
    ]
    all_same = True
    for delta in deltas:
        listed = len(delta.touched) // 4
        new = delta.index.person_count - base.person_count
        progress(f"{delta.name}: {listed:,} listed, {new:,} new")
        update_s: dict[str, tuple[float, float]] = {}
        full_s: dict[str, tuple[float, float]] = {}
        everyone = le(range(delta.index.person_count))
        for key, plan in plans.items():
            median, least, updated = median_time(
                current[key].update, args.repeat, delta.index, delta.touched
            )
            update_s[key] = (median, least)
            fmedian, fleast, fresh = median_time(
                hm.Verdicts, args.full_repeat, delta.index, plan, TODAY, HOUR
            )
            full_s[key] = (fmedian, fleast)
            ok = same(updated, fresh, everyone)
            all_same = all_same and ok
            del updated, fresh
        table.add(
            f"**{delta.name}**: {listed:,} persons listed + {new:,} new",
            f"version built in {ms(delta.build_s)}; touched persons looked up in "
            f"{ms(delta.lookup_s)}",
        )
        for key in plans:
            (um, ul), (fm, fl) = update_s[key], full_s[key]
            table.add(
                f"    {key} plan: update / full Verdicts (median, min)",
                f"**{ms(um)}** ({ms(ul)}) / {ms(fm)} ({ms(fl)})",
                f"{fm / um:.0f}x faster"
                + ("; target <= 50 ms at 18 M" if delta.rows == 1_000 else ""),
            )
        del everyone
    table.add("updated verdicts equal fresh ones (every person, counts, non-green)", str(all_same))

    # is a bulk holders_of_phones worth having? 1,000 phones, one call vs a Python loop
    sample = rng.sample(list(ids.phones), min(1_000, len(ids.phones)))
    packed = le(sample)
    bulk, _, _ = median_time(base.holders_of_phones, 5, packed)

    def one_by_one() -> set[int]:
        return {h for f in u32_list(packed) if (h := base.holder_of_phone(f)) is not None}

    loop, _, _ = median_time(one_by_one, 5)
    table.add(
        "holders of 1,000 phones: holders_of_phones / a Python loop of holder_of_phone",
        f"{bulk * 1e6:.0f} us / {loop * 1e6:.0f} us",
    )

    command = " ".join(["python -m bench.bench_incremental", *args.argv])
    setting = (
        f"{persons:,} persons, {phones:,} phones, the source catalogue ({population.rows:,} "
        f"rows, {COUNTIES:,} counties graded as in bench_whatif), the default rule set "
        f"({len(plans['full'].rule_ids)} rules; shared-only {len(plans['shared'].rule_ids)}), "
        f"day {TODAY} hour {HOUR}. Each delta is applied to the same base; update timed "
        f"{args.repeat}x, the full Verdicts {args.full_repeat}x."
    )
    machine = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, healthcode_matcher "
        f"{hm.__version__}."
    )
    return "\n".join([f"`{command}`", "", setting, machine, ""]) + table.markdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=FULL_PERSONS)
    parser.add_argument("--phones", type=int, default=FULL_PHONES)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PERSONS:,} persons, {QUICK_PHONES:,} phones"
    )
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--repeat", type=int, default=5, help="timed updates per delta and plan")
    parser.add_argument("--full-repeat", type=int, default=2, help="timed full evaluations")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.persons, args.phones = QUICK_PERSONS, QUICK_PHONES
    print(run(args))


if __name__ == "__main__":
    main()
