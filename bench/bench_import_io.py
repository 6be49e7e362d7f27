"""Where an import's cost goes: CPU seconds and bytes written per person, by service.

    python -m bench.bench_import_io --people 1000000

Starts the four services (`clients.stack`), writes a synthetic city's people file (kept in
--cache, so a second run reuses it), imports it with `healthcode import` and waits until the
risk index holds every person. Prints the rates, and for the declaration service and the risk
index the CPU time (utime + stime from /proc) and the bytes written to storage (`write_bytes`
from /proc/<pid>/io: the WAL, checkpoints into the database, snapshots) per person. Bytes
written per person that grow with the population are the sign of random-key B-tree inserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_city import SEED, accepted_version, healthcode, start_stack, wait_people_in_index
from clients import population


def _usage(pid: int) -> tuple[int, float]:
    """(bytes written to storage, CPU seconds) of a process so far."""
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(io["write_bytes"]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--cache", default=tempfile.gettempdir(), help="where the file is kept")
    parser.add_argument("--batch", type=int, default=50_000, help="rows an ImportPeople message")
    args = parser.parse_args(argv)
    people = args.people
    cached = Path(args.cache) / f"healthcode-people-{people}-s{SEED}.csv"
    if not cached.exists():
        population.write_people(cached, population.SyntheticCity(people, SEED), lambda _n: None)
    work = Path(tempfile.mkdtemp(prefix="bench-import-io-"))
    file = work / "people.csv"
    shutil.copyfile(cached, file)
    stack = start_stack(work / "data")
    try:
        pids = {name: stack.processes[name].pid for name in ("declaration", "risk_index")}
        before = {name: _usage(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        healthcode(stack, "import", str(file), "--batch", str(args.batch))
        acked = time.perf_counter() - start
        wait_people_in_index(stack, people)
        stack.wait_colour_version(accepted_version(stack), timeout_s=3600)
        held = time.perf_counter() - start
        after = {name: _usage(pid) for name, pid in pids.items()}
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"Command: `python -m bench.bench_import_io --people {people} --batch {args.batch}`")
    print(f"- acknowledged in {acked:.1f} s ({people / acked:,.0f} people/s)")
    print(f"- held by the risk index and the replicas in {held:.1f} s ({people / held:,.0f}/s)")
    for name in pids:
        written = after[name][0] - before[name][0]
        cpu = after[name][1] - before[name][1]
        print(
            f"- {name}: {written / 2**30:.2f} GiB written ({written / people / 1024:.1f} KiB a "
            f"person), {cpu:.1f} CPU-s ({cpu / people * 1e5:.2f} s per 100,000 people)"
        )


if __name__ == "__main__":
    main()
