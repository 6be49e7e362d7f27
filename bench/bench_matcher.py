"""The matcher at city scale, side by side with the plain-Python reference over pyroaring.

    python -m bench.bench_matcher                 # 18,000,000 persons, 25,000,000 phones
    python -m bench.bench_matcher --quick         # 200,000 persons, 300,000 phones

One run builds a synthetic population through the real path (`synthetic_id_numbers` ->
`IndexBuilder.add_persons`, `synthetic_phones` -> `add_phones` with holders), 42 sources of
realistic sizes (thousands of confirmed cases up to millions of railway and telecom rows; dated
over 1 to 28 days, undated control lists, county-keyed and phone-keyed ones, three clearing
sources) and a 42-check plan of 30 rules, then measures: index build, whole-population
evaluation (`Verdicts`), one person from Python (`Verdicts.evaluate` / `colour`,
`Matcher.colour`), a batch (`evaluate_many`), a raw ID number to a verdict, the reference per
person and in batch, snapshot save and load, and resident memory. It prints a Markdown table
on stdout; progress goes to stderr. Sizes scale with --persons; every figure is measured in
this process, on this machine.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import os
import platform
import random
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import healthcode_matcher as hm
from healthcode_matcher.reference import ReferenceEvaluator
from pyroaring import BitMap

from services._common.days import day_number

FULL_PERSONS = 18_000_000
FULL_PHONES = 25_000_000
QUICK_PERSONS = 200_000
QUICK_PHONES = 300_000
# About the number of counties in the country. County codes are 2048..4095 (0 is reserved by
# the index; an offset of 2**11 keeps their generation at C speed).
COUNTIES = 2_048
COUNTY_BASE = 2_048
TODAY = day_number(dt.date(2021, 1, 15))  # the Tianjin report's winter
CHUNK = 1_000_000  # identifiers registered per call, so the input never sits in memory twice


@dataclass(frozen=True)
class SourceSpec:
    """One source, sized for the full city (18 M persons); smaller runs scale it down."""

    name: str
    keyed_by: str  # "person" | "phone"
    rows: int  # rows over all its buckets at full size
    days: int | None  # daily buckets ending today; None: one undated bucket (a control list)
    has_county: bool = False


SOURCES: tuple[SourceSpec, ...] = (
    # national case lists and contacts
    SourceSpec("confirmed", "person", 6_000, 28),
    SourceSpec("suspected", "person", 4_000, 14),
    SourceSpec("asymptomatic", "person", 3_000, 14),
    SourceSpec("nat_positive", "person", 3_000, 14),
    SourceSpec("close_contact", "person", 80_000, 14),
    SourceSpec("secondary_contact", "person", 300_000, 14),
    SourceSpec("co_traveller", "person", 40_000, 14),
    SourceSpec("inbound_traveller", "person", 200_000, 28),
    # travel with the county it came from
    SourceSpec("railway_passenger", "person", 2_500_000, 14, has_county=True),
    SourceSpec("civil_aviation_passenger", "person", 900_000, 14, has_county=True),
    SourceSpec("highway_checkpoint", "person", 1_200_000, 14, has_county=True),
    SourceSpec("declared_travel", "person", 1_500_000, 14, has_county=True),
    # telecom and apps, keyed by phone
    SourceSpec("telecom_roaming", "phone", 6_000_000, 14, has_county=True),
    SourceSpec("ride_hailing", "phone", 800_000, 14, has_county=True),
    SourceSpec("telecom_case_proximity", "phone", 400_000, 14),
    SourceSpec("telecom_border_roaming", "phone", 150_000, 28),
    SourceSpec("venue_scan_outbreak", "phone", 500_000, 14),
    SourceSpec("contact_tracing_app", "phone", 200_000, 14),
    SourceSpec("express_delivery_cold_chain", "phone", 100_000, 14),
    # cold chain, health care, declarations
    SourceSpec("cold_chain_worker", "person", 250_000, None),
    SourceSpec("cold_chain_exposed", "person", 8_000, 14),
    SourceSpec("fever_clinic", "person", 40_000, 14),
    SourceSpec("declared_symptoms", "person", 120_000, 3),
    SourceSpec("declared_fever", "person", 30_000, 3),
    SourceSpec("nursing_home_staff", "person", 100_000, None),
    SourceSpec("medical_staff_exposed", "person", 15_000, None),
    SourceSpec("school_absence", "person", 50_000, 7),
    SourceSpec("grassroots_screening", "person", 150_000, 14),
    SourceSpec("home_quarantine", "person", 60_000, 14),
    # other provinces' codes and local control lists
    SourceSpec("beijing_red", "person", 3_000, None),
    SourceSpec("beijing_yellow", "person", 40_000, None),
    SourceSpec("hebei_red", "person", 2_000, None),
    SourceSpec("hebei_yellow", "person", 30_000, None),
    SourceSpec("national_platform_red", "person", 5_000, None),
    SourceSpec("public_security_watch", "person", 20_000, None),
    SourceSpec("district_control", "person", 50_000, None),
    SourceSpec("quarantine_hotel", "person", 25_000, None),
    SourceSpec("migrant_worker_from_risk_area", "person", 200_000, None),
    SourceSpec("port_worker", "person", 30_000, None),
    # what clears a rule: a negative test, a community check, a verified second SIM
    SourceSpec("nat_negative", "person", 4_000_000, 7),
    SourceSpec("community_verified", "person", 60_000, None),
    SourceSpec("phone_verified", "phone", 40_000, None),
)


def rule(
    rule_id: str,
    colour: str,
    checks: list[dict[str, Any]],
    match: str = "any",
    clears: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule_id, "colour": colour, "match": match, "checks": checks}
    if clears:
        out["clears"] = clears
    return out


def c(source: str, days: int | None = None, min_level: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"source": source}
    if days is not None:
        out["days"] = days
    if min_level is not None:
        out["min_level"] = min_level
    return out


# 30 rules, 42 checks (raising and clearing); every source above is read by exactly one check.
RULES: list[dict[str, Any]] = [
    rule("confirmed", "red", [c("confirmed", 28)]),
    rule("suspected", "red", [c("suspected", 14)]),
    rule("asymptomatic", "red", [c("asymptomatic", 14)]),
    rule("nat-positive", "red", [c("nat_positive", 14)]),
    rule("close-contact", "red", [c("close_contact", 14)], clears=[c("nat_negative", 2)]),
    rule(
        "secondary-contact",
        "yellow",
        [c("secondary_contact", 14)],
        clears=[c("community_verified")],
    ),
    rule("co-traveller", "yellow", [c("co_traveller", 14)]),
    rule("inbound", "yellow", [c("inbound_traveller", 28)]),
    rule(
        "high-risk-county",
        "red",
        [
            c("railway_passenger", 14, 3),
            c("civil_aviation_passenger", 14, 3),
            c("highway_checkpoint", 14, 3),
        ],
    ),
    rule("medium-risk-county-declared", "yellow", [c("declared_travel", 14, 2)]),
    rule(
        "roaming-risk-county",
        "yellow",
        [c("telecom_roaming", 14, 2)],
        clears=[c("phone_verified")],
    ),
    rule("case-proximity", "yellow", [c("telecom_case_proximity", 14)]),
    rule("border-roaming", "yellow", [c("telecom_border_roaming", 28)]),
    rule("ride-hailing-high-risk", "yellow", [c("ride_hailing", 14, 3)]),
    rule("cold-chain", "yellow", [c("cold_chain_worker"), c("cold_chain_exposed", 14)], "all"),
    rule("cold-chain-delivery", "yellow", [c("express_delivery_cold_chain", 14)]),
    rule("fever-clinic", "yellow", [c("fever_clinic", 14)]),
    rule("symptoms", "yellow", [c("declared_symptoms", 1)]),
    rule("care-worker-fever", "red", [c("nursing_home_staff"), c("declared_fever", 3)], "all"),
    rule("beijing-red", "red", [c("beijing_red")]),
    rule("beijing-yellow", "yellow", [c("beijing_yellow")]),
    rule("hebei-red", "red", [c("hebei_red")]),
    rule("hebei-yellow", "yellow", [c("hebei_yellow")]),
    rule("national-red", "red", [c("national_platform_red")]),
    rule("public-security", "yellow", [c("public_security_watch")]),
    rule(
        "district-control",
        "red",
        [c("district_control"), c("quarantine_hotel"), c("home_quarantine", 14)],
    ),
    rule(
        "screening",
        "yellow",
        [
            c("grassroots_screening", 14),
            c("school_absence", 7),
            c("venue_scan_outbreak", 14),
            c("contact_tracing_app", 14),
        ],
    ),
    rule("medical-exposure", "yellow", [c("medical_staff_exposed")]),
    rule("migrant-worker", "yellow", [c("migrant_worker_from_risk_area")]),
    rule("port-worker", "yellow", [c("port_worker")]),
]
# County levels: a few high, more medium, many low (the rest are level 0).
HIGH, MEDIUM, LOW = 60, 120, 300


# -- reporting ------------------------------------------------------------------------------------

_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def memory() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back, so VmRSS shows what is still held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def per_call(ns: float) -> str:
    return f"{ns / 1000:.2f} us" if ns >= 1000 else f"{ns:.0f} ns"


def rate(per_second: float) -> str:
    return f"{per_second / 1e6:.2f} M persons/s"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, figure: str, value: str, baseline: str = "") -> None:
        self.rows.append((figure, value, baseline))
        progress(f"{figure}: {value}")

    def markdown(self) -> str:
        lines = ["| figure | value | baseline / target |", "|---|---|---|"]
        lines += [f"| {f} | {v} | {b} |" for f, v, b in self.rows]
        return "\n".join(lines)


def timed(action: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action(*args)
    return time.perf_counter() - start, result


# -- synthetic data -------------------------------------------------------------------------------

# A byte keeps its low `bits` bits.
_MASKS = {bits: bytes(b & ((1 << bits) - 1) for b in range(256)) for bits in range(8)}


def random_ids(rng: random.Random, count: int, limit: int) -> BitMap:
    """About `count` distinct ids drawn uniformly from [0, limit), made with C-speed byte
    operations (no per-id Python work): random u32s are masked to the bit length of `limit`
    and those >= limit dropped."""
    if count <= 0 or limit <= 0:
        return BitMap()
    bits = max(1, (limit - 1).bit_length())
    draw = int(count * (1 << bits) / limit) + 1
    raw = bytearray(rng.randbytes(4 * draw))
    whole, rest = divmod(bits, 8)
    for byte in range(whole + (1 if rest else 0), 4):
        raw[byte::4] = bytes(draw)
    if rest:
        raw[whole::4] = raw[whole::4].translate(_MASKS[rest])
    values = little_u32(raw)
    ids = BitMap(values)
    ids.remove_range(limit, 1 << 32)
    return ids  # about `count`: a few repeated draws collapse


def random_counties(rng: random.Random, count: int) -> bytes:
    """`count` county codes in [COUNTY_BASE, COUNTY_BASE + COUNTIES) as little-endian u32."""
    assert COUNTIES == COUNTY_BASE == 2_048  # 11 random bits, then bit 11 set
    raw = bytearray(rng.randbytes(2 * count))
    raw[1::2] = raw[1::2].translate(bytes((b & 0x07) | 0x08 for b in range(256)))
    short = array("H")
    short.frombytes(bytes(raw))
    return to_le(array("I", short))


def little_u32(raw: bytes | bytearray) -> array[int]:
    values = array("I")
    values.frombytes(bytes(raw))
    if sys.byteorder != "little":
        values.byteswap()
    return values


def to_le(values: array[int]) -> bytes:
    if sys.byteorder != "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def line_chunks(data: bytes, count: int, per_chunk: int) -> Iterator[bytes]:
    """Slices of `per_chunk` lines of newline-separated fixed-width identifiers."""
    width = data.index(b"\n") + 1
    assert len(data) == count * width - 1, "synthetic identifiers are fixed width"
    for start in range(0, count, per_chunk):
        yield data[start * width : min(count, start + per_chunk) * width - 1]


def scaled(rows: int, persons: int) -> int:
    return max(20, round(rows * persons / FULL_PERSONS))


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Population:
    index: hm.Index
    secret: bytes
    sample_numbers: list[str]  # raw ID numbers of sampled persons, for evaluate_id_number
    rows: int


def build_index(persons: int, phones: int, seed: int, table: Table) -> Population:
    rng = random.Random(seed)
    secret = rng.randbytes(32)
    progress(f"generating {persons:,} ID numbers and {phones:,} phone numbers")
    generate_s, id_numbers = timed(hm.synthetic_id_numbers, persons, seed)
    phones_s, phone_numbers = timed(hm.synthetic_phones, phones, seed)
    table.add("synthetic identifiers (not part of the build)", f"{generate_s + phones_s:.1f} s")
    width = id_numbers.index(b"\n") + 1
    sample_positions = sorted(rng.sample(range(persons), min(persons, 200_000)))
    sample_numbers = [
        id_numbers[i * width : i * width + width - 1].decode() for i in sample_positions
    ]

    # Holders: phone i belongs to person i; the phones beyond the population are second SIMs
    # of persons drawn at random (from the lowest power of two, to stay at C speed).
    extra = max(0, phones - persons)
    holder_bits = max(1, persons.bit_length() - 1)
    raw = bytearray(rng.randbytes(4 * extra))
    whole, rest = divmod(holder_bits, 8)
    for byte in range(whole + (1 if rest else 0), 4):
        raw[byte::4] = bytes(extra)
    if rest:
        raw[whole::4] = raw[whole::4].translate(_MASKS[rest])
    holders = to_le(array("I", range(min(persons, phones)))) + bytes(raw)
    del raw

    start = time.perf_counter()
    builder = hm.Index(secret).builder()
    for number, chunk in enumerate(line_chunks(id_numbers, persons, CHUNK)):
        builder.add_persons(chunk)
        progress(f"persons registered: {min(persons, (number + 1) * CHUNK):,}")
    del id_numbers
    persons_s = time.perf_counter() - start
    for number, chunk in enumerate(line_chunks(phone_numbers, phones, CHUNK)):
        at = number * CHUNK
        builder.add_phones(chunk, holders[4 * at : 4 * (at + CHUNK)])
        progress(f"phones registered: {min(phones, at + CHUNK):,}")
    del phone_numbers, holders
    registry_s = time.perf_counter() - start

    rows_total = 0
    rows_s = 0.0  # only the index's own work; making random rows is not counted
    for spec in SOURCES:
        builder.define_source(spec.name, spec.keyed_by, spec.has_county)
        limit = persons if spec.keyed_by == "person" else phones
        total = scaled(spec.rows, persons)
        days: list[int | None] = (
            [None] if spec.days is None else list(range(TODAY - spec.days + 1, TODAY + 1))
        )
        for day in days:
            ids = random_ids(rng, max(1, total // len(days)), limit)
            ids_le = to_le(ids.to_array())
            counties = random_counties(rng, len(ids)) if spec.has_county else None
            start = time.perf_counter()
            builder.add_rows(spec.name, ids_le, day, counties)
            rows_s += time.perf_counter() - start
            rows_total += len(ids)
        progress(f"source {spec.name}: {total:,} rows over {len(days)} bucket(s)")
    levels = rng.sample(range(COUNTY_BASE, COUNTY_BASE + COUNTIES), HIGH + MEDIUM + LOW)
    for position, county in enumerate(levels):
        builder.set_county_level(
            county, 3 if position < HIGH else 2 if position < HIGH + MEDIUM else 1
        )
    finish_s, index = timed(builder.finish)
    build_s = registry_s + rows_s + finish_s
    table.add(
        "index build: registry + 42 sources",
        f"{build_s:.1f} s (persons {persons_s:.1f} s, phones {registry_s - persons_s:.1f} s, "
        f"{rows_total:,} rows {rows_s:.1f} s)",
        "target <= 60 s at 18 M",
    )
    return Population(index, secret, sample_numbers, rows_total)


def measure_per_call(call: Callable[[int], object], ids: list[int]) -> float:
    """Mean ns of `call(id)` over `ids`, from a Python loop (the loop's own cost included)."""
    start = time.perf_counter_ns()
    for person in ids:
        call(person)
    return (time.perf_counter_ns() - start) / len(ids)


def loop_overhead(ids: list[int]) -> float:
    def nothing(_: int) -> None:
        return None

    return measure_per_call(nothing, ids)


def run(args: argparse.Namespace) -> str:
    persons, phones = args.persons, args.phones
    table = Table()
    release_free_memory()
    empty = memory()["VmRSS"]
    population = build_index(persons, phones, args.seed, table)
    index = population.index
    release_free_memory()
    mem = memory()
    table.add(
        "resident memory after the build: VmRSS (over the process before it) / VmHWM",
        f"{gib(mem['VmRSS'])} ({gib(mem['VmRSS'] - empty)}) / {gib(mem['VmHWM'])}",
        "target <= 1.5 GB at 18 M (a dict of 18 M hashes alone: 2.3 GB); the peak includes "
        "the raw identifiers fed in",
    )

    plan = hm.Plan(RULES, version="bench")
    assert plan.check_count == 42, plan.check_count
    progress("evaluating the whole population (Verdicts)")
    verdicts_s, verdicts = timed(hm.Verdicts, index, plan, TODAY)
    table.add(
        "whole-population evaluation: Verdicts(index, plan, today)",
        f"{verdicts_s:.2f} s ({rate(persons / verdicts_s)})",
        "done once per index version or plan",
    )
    green, yellow, red = verdicts.colour_counts()
    table.add("colours (green / yellow / red)", f"{green:,} / {yellow:,} / {red:,}")

    rng = random.Random(args.seed + 1)
    sample = [rng.randrange(persons) for _ in range(min(args.per_person_sample, 10 * persons))]
    overhead = loop_overhead(sample)

    # (c) the reference, built first so that (a) and (c) can be compared on the same persons
    progress("reference: window unions of the 42 checks")
    ref_build_s, reference = timed(ReferenceEvaluator, index, RULES, TODAY)
    ref_sample = sample[: args.reference_sample]
    progress(f"reference per person: {len(ref_sample):,} persons")
    ref_ns = measure_per_call(reference.evaluate, ref_sample)

    progress(f"per-person calls: {len(sample):,} persons, four loops")
    matcher = hm.Matcher(verdicts)
    evaluate_ns = measure_per_call(verdicts.evaluate, sample)
    colour_ns = measure_per_call(verdicts.colour, sample)
    live_ns = measure_per_call(matcher.colour, sample)
    table.add(
        f"(a) one person from Python: Verdicts.evaluate (mean of {len(sample):,})",
        per_call(evaluate_ns),
        f"reference per person {per_call(ref_ns)}; target <= 1 us",
    )
    table.add("(a) one person: Verdicts.colour", per_call(colour_ns), "")
    table.add("(a) one person: Matcher.colour (behind the atomic swap)", per_call(live_ns), "")
    table.add("    of which the Python for-loop itself", per_call(overhead), "")

    disagreements = 0
    for person in ref_sample:
        mine = verdicts.evaluate(person)
        theirs = reference.evaluate(person)
        if (mine.colour, mine.fired_mask, mine.cleared_mask) != tuple(theirs):
            disagreements += 1
    table.add(
        f"(c) reference per person (pyroaring, {len(ref_sample):,} sampled persons)",
        per_call(ref_ns),
        f"its window unions took {ref_build_s:.2f} s; "
        f"disagreements with the matcher: {disagreements}",
    )

    progress("evaluate_many over every person")
    all_ids = to_le(array("I", range(persons)))
    many_s, (colours, masks) = timed(verdicts.evaluate_many, all_ids)
    assert len(colours) == persons and len(masks) == 8 * persons
    random_ids_le = to_le(array("I", sample))
    sample_s, _ = timed(verdicts.evaluate_many, random_ids_le)
    del all_ids, colours, masks

    progress("reference batch: mapping phone unions to holders")
    prepare_s, _ = timed(reference.prepare_batch)
    everyone = BitMap(range(persons))
    batch_s, batch = timed(reference.evaluate_batch, everyone)
    start = time.perf_counter()
    listed = reference.evaluate_batch(BitMap(sample)).colours(sample)
    listed_s = time.perf_counter() - start
    assert listed == verdicts.evaluate_many(random_ids_le)[0], "reference batch disagrees"
    table.add(
        "(b) batch: evaluate_many over every person (colour + fired mask each)",
        rate(persons / many_s),
        f"reference batch over everyone {rate(persons / batch_s)} (sets, no per-person "
        "answer); target >= 10 M/s",
    )
    table.add(
        f"(b) batch: evaluate_many of {len(sample):,} random persons",
        rate(len(sample) / sample_s),
        f"reference batch of the same persons {rate(len(sample) / listed_s)} "
        "(BitMap of the batch, algebra, then a colour per person; no masks)",
    )
    agree = batch.colour_counts() == (green, yellow, red)
    agree = agree and batch.rule_counts() == verdicts.rule_counts()
    table.add(
        "(c) reference batch (BitMap algebra over all persons; sets per rule, no masks)",
        rate(persons / batch_s),
        f"phone unions mapped to holders first in {prepare_s:.2f} s; "
        f"colour and rule counts {'agree' if agree else 'DISAGREE'} with the matcher",
    )

    progress("evaluate_id_number")
    numbers = population.sample_numbers[: args.per_person_sample]
    start = time.perf_counter_ns()
    for number in numbers:
        verdicts.evaluate_id_number(number)
    id_ns = (time.perf_counter_ns() - start) / len(numbers)
    table.add(
        f"raw ID number -> verdict: evaluate_id_number (mean of {len(numbers):,})",
        per_call(id_ns),
        "target <= 2 us",
    )
    del reference, batch, everyone
    release_free_memory()

    with tempfile.TemporaryDirectory(dir=args.snapshot_dir) as directory:
        path = Path(directory) / "index.snap"
        progress(f"saving the snapshot to {path}")
        save_s, _ = timed(index.save, str(path))
        size = path.stat().st_size
        progress("loading the snapshot")
        load_s, loaded = timed(hm.Index.load, str(path), population.secret)
        assert loaded.person_count == index.person_count
        table.add("snapshot save", f"{save_s:.2f} s ({gib(size)})", "")
        table.add("snapshot load", f"{load_s:.2f} s", "target <= 10 s at 18 M")
        del loaded
    mem = memory()
    table.add(
        "resident memory at the end (VmRSS / VmHWM)", f"{gib(mem['VmRSS'])} / {gib(mem['VmHWM'])}"
    )

    command = " ".join(["python -m bench.bench_matcher", *args.argv])
    setting = (
        f"{persons:,} persons, {phones:,} phones, {len(SOURCES)} sources ({population.rows:,} "
        f"rows, {COUNTIES:,} counties of which {HIGH} high, {MEDIUM} medium, {LOW} low), plan of "
        f"{len(RULES)} rules / {plan.check_count} checks, day {TODAY}."
    )
    machine = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, healthcode_matcher "
        f"{hm.__version__}. The matcher evaluates the whole population when `Verdicts` is built; "
        "a per-person call then reads the stored verdict. The reference computes each check's "
        "window union once, then tests membership per person."
    )
    header = [f"`{command}`", "", setting, machine, ""]
    return "\n".join(header) + table.markdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=FULL_PERSONS)
    parser.add_argument("--phones", type=int, default=FULL_PHONES)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PERSONS:,} persons, {QUICK_PHONES:,} phones"
    )
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--per-person-sample", type=int, default=1_000_000)
    parser.add_argument("--reference-sample", type=int, default=100_000)
    parser.add_argument("--snapshot-dir", default=None, help="where the snapshot is written")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.persons, args.phones = QUICK_PERSONS, QUICK_PHONES
    print(run(args))


if __name__ == "__main__":
    main()
