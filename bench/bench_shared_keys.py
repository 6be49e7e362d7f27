"""N worker processes holding one index: their own copies of the keys against one shared file.

    python -m bench.bench_shared_keys                          # 18 M persons, 25 M phones, 2 workers
    python -m bench.bench_shared_keys --persons 1000000 --phones 1400000 --workers 3

Builds the city of `bench_matcher` (its registry and 42 sources), writes its snapshot, then
starts `--workers` processes twice, one after the other, each loading that snapshot as a
replica does when it starts:
- **own**: each process keeps every key in its own memory (one display or colour process);
- **shared**: each then reads the person and phone keys from `persons.keys` and `phones.keys`
  that every worker maps (`Index.share_keys`, what workers of one machine do).

For each it reports what the workers hold, from /proc/PID/smaps_rollup: resident memory (RSS)
each, and the proportional set size (PSS: a page shared by k processes counts 1/k in each)
summed over the workers, which is what the N workers together cost the machine. And what a
look-up costs: `Index.person_id` (hash and find) over 200,000 registered people, in each mode.

A Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import healthcode_matcher as hm

from bench.bench_matcher import Table, build_index, progress, release_free_memory
from clients.stack import REPO

LOOKUPS = 200_000


def smaps(pid: int) -> dict[str, int]:
    """Rss, Pss, Pss_Anon and Pss_File of a process, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
                out[key] = int(value.split()[0]) * 1024
    return out


def worker(snapshot: str, secret_hex: str, mode: str, shared_dir: str, numbers: str) -> None:
    """One worker (its own process): load the snapshot, share its keys or not, time look-ups,
    report on stdout, then hold the index until stdin closes."""
    start = time.perf_counter()
    index = hm.Index.load(snapshot, bytes.fromhex(secret_hex))
    load_s = time.perf_counter() - start
    share_s, done = 0.0, dict[str, str]()
    if mode == "shared":
        start = time.perf_counter()
        index, done = index.share_keys(shared_dir)
        share_s = time.perf_counter() - start
    release_free_memory()
    people = Path(numbers).read_text(encoding="ascii").split()
    person_id = index.person_id
    start = time.perf_counter_ns()
    found = sum(person_id(number) is not None for number in people)
    lookup_ns = (time.perf_counter_ns() - start) / len(people)
    report = {
        "load_s": load_s,
        "share_s": share_s,
        "done": done,
        "found": found,
        "lookup_ns": lookup_ns,
        "shared_persons": index.shared_person_count,
    }
    print(json.dumps(report), flush=True)
    sys.stdin.read()  # hold the index until the bench has measured every worker


def measure(
    mode: str, workers: int, snapshot: Path, secret: bytes, shared_dir: Path, numbers: Path
) -> tuple[list[dict[str, object]], list[dict[str, int]]]:
    """Start the workers one after another (the first one writes the shared files; the others
    map them) and measure them all once every one holds its index."""
    procs, reports = [], []
    try:
        for i in range(workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.bench_shared_keys", "--worker"]
                + [str(snapshot), secret.hex(), mode, str(shared_dir), str(numbers)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"{mode} worker {i} exited with {proc.wait()}")
            reports.append(json.loads(line))
            progress(f"{mode} worker {i} ready: {reports[-1]}")
        memory = [smaps(p.pid) for p in procs]
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=120)
    return reports, memory


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run(args: argparse.Namespace) -> str:
    table = Table()
    population = build_index(args.persons, args.phones, args.seed, table)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-shared-keys-", dir=args.dir) as work:
        snapshot = Path(work) / "index.snapshot"
        progress(f"writing the snapshot {snapshot}")
        population.index.save(str(snapshot))
        numbers = Path(work) / "people.txt"
        numbers.write_text("\n".join(population.sample_numbers[:LOOKUPS]), encoding="ascii")
        secret = population.secret
        del population
        release_free_memory()
        shared_dir = Path(work) / "shared-keys"
        shared_dir.mkdir()
        results = {}
        for mode in ("own", "shared"):
            results[mode] = measure(mode, args.workers, snapshot, secret, shared_dir, numbers)
        files = sum(f.stat().st_size for f in shared_dir.iterdir())
    for mode, (reports, memory) in results.items():
        pss = sum(m["Pss"] for m in memory)
        rss = " / ".join(gib(m["Rss"]) for m in memory)
        anon = sum(m["Pss_Anon"] for m in memory)
        file_ = sum(m["Pss_File"] for m in memory)
        lookups = " / ".join(f"{r['lookup_ns']:,.0f} ns" for r in reports)
        setup = " / ".join(
            f"{float(r['load_s']) + float(r['share_s']):.1f} s"  # type: ignore[arg-type]
            for r in reports
        )
        rows.append(
            f"| {mode} | {gib(pss)} (anonymous {gib(anon)}, file {gib(file_)}) | {rss} "
            f"| {setup} | {lookups} |"
        )
    command = "python -m bench.bench_shared_keys " + shlex.join(sys.argv[1:])
    title = (
        f"`{command.strip()}` on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M')}: {args.persons:,} persons, {args.phones:,} phones, "
        f"{args.workers} workers; the shared key files {gib(files)}"
    )
    header = (
        "| keys | the workers together (PSS) | each worker (RSS) | each: load (+ share) "
        "| each: `person_id` |"
    )
    return "\n".join([title, "", header, "|---|---|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=18_000_000)
    parser.add_argument("--phones", type=int, default=25_000_000)
    parser.add_argument("--workers", type=int, default=2, help="processes holding the index")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--dir", default=None, help="where the snapshot and key files go")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
