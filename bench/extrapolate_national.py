"""What a national deployment needs per province, extrapolated from what was measured.

    python -m bench.extrapolate_national                   # 1.4 billion people, 34 provinces
    python -m bench.extrapolate_national --json out.json   # the same figures as JSON
    python -m bench.extrapolate_national --figures f.json  # other measured figures (same keys)

Not a simulation and not a promise: every input below is either a figure from BENCHMARKS.md
(its command quoted next to it) or a stated assumption, and the arithmetic is linear. What the
arithmetic assumes:

- the matcher's memory, snapshot load and whole-population evaluation grow linearly with the
  people of a province (measured at 18 M people with 25 M phones and 42 sources; roaring
  bitmaps and the sorted registries are linear in what they hold);
- one display process answers the measured Shows per second times the measured fall with
  population size (at 1 M people against 2,000; not measured at 18 M or beyond), and runs at
  most at the autoscaler's CPU target;
- demand: the seed's own figure (more than a billion displays by 18 M people in 291 days) for
  the mean rate, and two peaks: that mean times a factor, and a midnight crowd (a share of the
  province within a few minutes, the seed's "people believed the window opened at midnight").

Each province runs its own stack (deploy/README.md, "Past one machine"): one risk index, the
display and colour replicas below, its own storage; provinces exchange shared-scope status by
keyed hashes (R6), so no process holds more than one province's people.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 2**30

# Measured per-process figures. Each key's source is the line next to it in BENCHMARKS.md.
MEASURED: dict[str, float] = {
    # `make bench-matcher`: 18,000,000 persons, 25,000,000 phones, 42 sources
    "matcher_people": 18_000_000,
    "matcher_resident_gib": 1.34,  # VmRSS over the process before it, after the build
    "matcher_peak_gib": 1.92,  # VmHWM during the build
    "snapshot_gib": 0.86,  # snapshot save: 0.86 GiB
    "snapshot_load_s": 8.4,  # snapshot load: 8.40 s
    "evaluation_s": 0.51,  # whole-population evaluation: Verdicts(index, plan, today)
    # `make bench-throughput`, 3ee9bec, quiet run: mutual TLS, tokens, COSE code tokens
    "show_per_s_per_process": 1_172,  # DisplayService.Show, 1 process, one pinned core
    "evaluate_stream_persons_per_s": 2_634_423,  # EvaluateStream, 10,000 ID numbers a message
    # `bench.bench_city --people 1000000`: Show per second at 1,000,000 people / at 2,000
    "show_size_factor": 374 / 482,  # 0.78x
    # `bench.bench_import_io --people 1000000 --batch 50000`: people/s into the risk index
    "import_people_per_s": 7_283,
}

# Assumptions: not measured, stated, and changeable on the command line.
ASSUMED: dict[str, float] = {
    # The seed: more than 1,000,000,000 displays by 18 M people in 291 days (MISSION.md).
    "displays_per_person_per_day": 1e9 / 291 / 18e6,
    "peak_factor": 10.0,  # the midnight profile of `make bench-throughput` ramps to 10x its base
    "midnight_share": 0.10,  # of a province's people showing a code ...
    "midnight_window_s": 600.0,  # ... within these ten minutes
    "cpu_target": 0.60,  # the autoscaler's target (deploy/k8s/colour.yaml, display.yaml)
    "min_colour_replicas": 2,  # for availability, not load
    "display_record_bytes": 150.0,  # one display log record (not measured)
    "retention_days": 30.0,  # HEALTHCODE_DISPLAY_RETENTION_DAYS default
}

# The largest province by the 2020 census (Guangdong, 126.0 M); the mean is computed.
LARGEST_PROVINCE = ("largest (Guangdong, 2020 census)", 126_012_510)


@dataclass(frozen=True, slots=True)
class Province:
    """One province's stack, from its population."""

    name: str
    people: int
    index_resident_gib: float
    index_peak_gib: float
    snapshot_gib: float
    snapshot_load_s: float
    evaluation_s: float
    first_import_h: float
    mean_displays_per_s: float
    peak_displays_per_s: float
    midnight_displays_per_s: float
    show_capacity_per_process: float
    display_processes: int
    colour_replicas: int
    replica_memory_gib: float
    display_log_gib: float


def province(name: str, people: int, m: Mapping[str, float], a: Mapping[str, float]) -> Province:
    scale = people / m["matcher_people"]
    mean = people * a["displays_per_person_per_day"] / 86_400
    peak = mean * a["peak_factor"]
    midnight = people * a["midnight_share"] / a["midnight_window_s"]
    # What one process answers at this size, kept under the autoscaler's CPU target.
    capacity = m["show_per_s_per_process"] * m["show_size_factor"] * a["cpu_target"]
    processes = max(1, math.ceil(max(peak, midnight) / capacity))
    # Colour answers Explain, partners' batch checks (EvaluateStream) and the CLI, not the
    # displays (each display holds its own replica): a day of every person checked once in
    # batches is under a minute of one process, so colour is sized for availability.
    batch_s = people / m["evaluate_stream_persons_per_s"]
    colour = max(int(a["min_colour_replicas"]), math.ceil(batch_s / 86_400))
    displays_per_day = people * a["displays_per_person_per_day"]
    log_bytes = displays_per_day * a["retention_days"] * a["display_record_bytes"]
    return Province(
        name=name,
        people=people,
        index_resident_gib=m["matcher_resident_gib"] * scale,
        index_peak_gib=m["matcher_peak_gib"] * scale,
        snapshot_gib=m["snapshot_gib"] * scale,
        snapshot_load_s=m["snapshot_load_s"] * scale,
        evaluation_s=m["evaluation_s"] * scale,
        first_import_h=people / m["import_people_per_s"] / 3600,
        mean_displays_per_s=mean,
        peak_displays_per_s=peak,
        midnight_displays_per_s=midnight,
        show_capacity_per_process=capacity,
        display_processes=processes,
        colour_replicas=colour,
        # Every process holding a replica (displays, colours, the risk index) holds the index
        # at its peak size; one memory-mapped copy per machine (issue 9) is not built.
        replica_memory_gib=(processes + colour + 1) * m["matcher_peak_gib"] * scale,
        display_log_gib=log_bytes / GIB,
    )


def national(
    people: int, provinces: int, m: Mapping[str, float], a: Mapping[str, float]
) -> list[Province]:
    """The mean province, the largest one, and the sum over `provinces` mean provinces."""
    mean = province(f"mean of {provinces}", round(people / provinces), m, a)
    largest = province(*LARGEST_PROVINCE, m, a)
    return [mean, largest]


ROWS: list[tuple[str, str]] = [
    ("people", "{:,.0f}"),
    ("index_resident_gib", "{:.1f} GiB"),
    ("index_peak_gib", "{:.1f} GiB"),
    ("snapshot_gib", "{:.1f} GiB"),
    ("snapshot_load_s", "{:.0f} s"),
    ("evaluation_s", "{:.1f} s"),
    ("first_import_h", "{:.1f} h"),
    ("mean_displays_per_s", "{:,.0f}/s"),
    ("peak_displays_per_s", "{:,.0f}/s"),
    ("midnight_displays_per_s", "{:,.0f}/s"),
    ("show_capacity_per_process", "{:,.0f}/s"),
    ("display_processes", "{:,}"),
    ("colour_replicas", "{:,}"),
    ("replica_memory_gib", "{:,.0f} GiB"),
    ("display_log_gib", "{:,.0f} GiB"),
]
LABELS = {
    "people": "people",
    "index_resident_gib": "index per replica, resident",
    "index_peak_gib": "index per replica, peak (installing a version)",
    "snapshot_gib": "index snapshot",
    "snapshot_load_s": "replica restart from its snapshot",
    "evaluation_s": "whole-population evaluation (per version or plan)",
    "first_import_h": "first import of everyone, at the rate measured at 1 M (SQLite)",
    "mean_displays_per_s": "displays/s, mean (the seed's rate)",
    "peak_displays_per_s": "displays/s, peak (mean x peak factor)",
    "midnight_displays_per_s": "displays/s, midnight crowd",
    "show_capacity_per_process": "Shows/s one display process takes (at CPU target)",
    "display_processes": "display processes for the larger peak",
    "colour_replicas": "colour replicas",
    "replica_memory_gib": "memory for every index copy (displays, colours, risk index)",
    "display_log_gib": "display log kept (retention days)",
}


def table(rows: Sequence[Province], provinces: int, people: int) -> str:
    head = ["figure", *(p.name for p in rows), f"country ({provinces} x mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summed = {"people", "display_processes", "colour_replicas", "replica_memory_gib"}
    summed |= {"display_log_gib", "mean_displays_per_s", "peak_displays_per_s"}
    summed |= {"midnight_displays_per_s"}
    for key, fmt in ROWS:
        values = [fmt.format(getattr(p, key)) for p in rows]
        total = fmt.format(getattr(rows[0], key) * provinces) if key in summed else ""
        if key == "people":
            total = fmt.format(people)
        lines.append(f"| {LABELS[key]} | " + " | ".join(values) + f" | {total} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=float, default=1.4e9, help="default 1.4e9")
    parser.add_argument("--provinces", type=int, default=34, help="default 34")
    parser.add_argument("--figures", type=Path, help="JSON of measured figures (MEASURED keys)")
    parser.add_argument(
        "--assume", action="append", default=[], metavar="KEY=VALUE", help="change an assumption"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    measured = dict(MEASURED)
    if args.figures is not None:
        given = json.loads(args.figures.read_text(encoding="utf-8"))
        unknown = set(given) - set(MEASURED)
        if unknown:
            parser.error(f"--figures: unknown keys {sorted(unknown)}; known: {sorted(MEASURED)}")
        measured.update({k: float(v) for k, v in given.items()})
    assumed = dict(ASSUMED)
    for item in args.assume:
        key, _, value = item.partition("=")
        if key not in ASSUMED:
            parser.error(f"--assume {key}: not an assumption; known: {sorted(ASSUMED)}")
        assumed[key] = float(value)
    rows = national(int(args.people), args.provinces, measured, assumed)
    print(table(rows, args.provinces, int(args.people)))
    print()
    print("assumed: " + ", ".join(f"{k}={v:g}" for k, v in assumed.items()))
    if args.json is not None:
        payload = {
            "measured": measured,
            "assumed": assumed,
            "provinces": [asdict(p) for p in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
