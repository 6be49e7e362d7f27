"""An exam's candidate list verified end to end through the real services (R12, issue 11 item 7).

    python -m bench.bench_exams                  # 50,000 candidates, 45,000 of them registered
    python -m bench.bench_exams --candidates 500 --registered 450    # a smoke run (seconds)

The four services are started as real processes (`clients.stack`); a synthetic city of
`--registered` people is loaded through `healthcode seed` (the import and ingest paths, with
feed rows for every source, so some candidates are yellow or red). The candidate CSV holds those
people and `--candidates - --registered` more who never registered (same synthetic city, later
indices: valid, distinct ID numbers), with Chinese names and exam numbers. Then
`healthcode exam verify` runs as its own process exactly as an organiser runs it: read and
validate the file, EvaluateStream in batches of 10,000 ID numbers as the exam-organiser partner,
write the result CSV. Its wall time is the figure: the whole command, process start included.

A Markdown table goes to stdout (what `BENCHMARKS.md` records), progress to stderr.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from healthcode.v1 import risk_index_pb2, risk_index_pb2_grpc

from bench.bench_display import progress
from clients import population
from clients.channel import open_channel
from clients.stack import REPO, Stack

SEED = 12


def _healthcode(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("healthcode")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "clients.cli"]
    done = subprocess.run(
        [*command, *args],
        env=stack.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"healthcode {shlex.join(args)}:\n{done.stdout}\n{done.stderr}")
    return done


def write_candidates(path: Path, count: int, seed: int) -> None:
    city = population.SyntheticCity(count, seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["candidate_number", "name", "id_number"])
        n = 0
        for block in city.blocks():
            for person in block:
                writer.writerow([f"2020{120000 + n:08d}", person.name, person.id_number])
                n += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=50_000)
    parser.add_argument("--registered", type=int, default=45_000)
    parser.add_argument("--out", type=Path, default=None, help="Keep the files here.")
    args = parser.parse_args(argv)
    if not 0 < args.registered <= args.candidates:
        parser.error("--registered must be between 1 and --candidates")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-exams-"))
    work.mkdir(parents=True, exist_ok=True)

    stack = Stack.on_free_ports(work / "data", {"HEALTHCODE_LOG_LEVEL": "WARNING"})
    progress("starting the four services")
    stack.start()
    try:
        stack.wait_healthy(timeout_s=120)
        progress(f"seeding {args.registered:,} registered people (import and feeds)")
        started = time.perf_counter()
        _healthcode(
            stack,
            "seed",
            "--people",
            str(args.registered),
            "--seed",
            str(SEED),
            "--out",
            str(work / "seed"),
        )
        seeded_s = time.perf_counter() - started
        with open_channel(stack.peers.risk_index) as channel:
            stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
            accepted = stub.GetIndexVersion(
                risk_index_pb2.GetIndexVersionRequest()
            ).accepted_version
        stack.wait_colour_version(accepted, timeout_s=120)

        candidates = work / "candidates.csv"
        write_candidates(candidates, args.candidates, SEED)
        results = work / "results.csv"
        progress(f"verifying {args.candidates:,} candidates")
        started = time.perf_counter()
        done = _healthcode(stack, "exam", "verify", str(candidates), "--out", str(results))
        wall_s = time.perf_counter() - started
        decisions = {"pass": 0, "refer": 0, "not registered": 0}
        with results.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                decisions[row["decision"]] += 1
                decisions["not registered"] += row["note"] == "not registered"
        unregistered = args.candidates - args.registered
        if decisions["not registered"] != unregistered:
            raise RuntimeError(
                f"{decisions['not registered']:,} candidates not registered, expected "
                f"{unregistered:,}:\n{done.stdout}"
            )
    finally:
        stack.stop()

    rate = args.candidates / wall_s
    summary = " ".join(done.stdout.split()).split(" Results:")[0]
    command = "python -m bench.bench_exams" + (
        f" --candidates {args.candidates} --registered {args.registered}"
        if (args.candidates, args.registered) != (50_000, 45_000)
        else ""
    )
    print(f"Command: `{command}`")
    print()
    print(
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; the four services and the "
        "CLI on one machine, mutual TLS, the organiser's partner certificate."
    )
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| candidates (registered / never registered) | {args.candidates:,} "
          f"({args.registered:,} / {unregistered:,}) |")  # fmt: skip
    print(f"| city loaded before (healthcode seed, not measured below) | {seeded_s:.1f} s |")
    print(
        f"| `healthcode exam verify`, whole command (read, validate, EvaluateStream in batches "
        f"of 10,000, write the result) | {wall_s:.2f} s ({rate:,.0f} candidates/s) |"
    )
    print(
        f"| decisions | {decisions['pass']:,} pass, {decisions['refer']:,} refer "
        f"({decisions['not registered']:,} of them not registered) |"
    )
    print(f"| the command's own summary | {summary} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
