"""Where an import's cost goes: CPU seconds and bytes written per person, by service.

    python -m bench.bench_import_io --people 1000000

Starts the four services (`clients.stack`), writes a synthetic city's people file (kept in
--cache, so a second run reuses it), imports it with `healthcode import` and waits until the
risk index holds every person. Prints the rates, and for the declaration service and the risk
index the CPU time (utime + stime from /proc) and the bytes written to storage (`write_bytes`
from /proc/<pid>/io: the WAL, checkpoints into the database, snapshots) per person. Bytes
written per person that grow with the population are the sign of random-key B-tree inserts.

`--storage postgresql` runs the services on a durable throwaway cluster with the city's settings
(`bench.bench_city.CITY_POSTGRES`) and counts PostgreSQL's own CPU and writes beside theirs
(every process of the cluster, the ones that ended during the import included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.bench_city import (
    CITY_POSTGRES,
    SEED,
    accepted_version,
    healthcode,
    start_stack,
    wait_people_in_index,
)
from clients import population


def _usage(pid: int, children: bool = False) -> tuple[int, float]:
    """(bytes written to storage, CPU seconds) of a process so far; with `children`, also the
    CPU of its children that have ended (cutime, cstime)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return int(io["write_bytes"]), ticks / os.sysconf("SC_CLK_TCK")


def _cluster_usage(cluster: Any) -> tuple[int, float]:
    """The whole PostgreSQL cluster's (bytes written, CPU seconds): the postmaster with its
    ended children, and every live child."""
    postmaster, children = cluster.processes()
    written, cpu = _usage(postmaster, children=True)
    for pid in children:
        try:
            w, c = _usage(pid)
        except OSError:  # ended in between (its time is in the postmaster's cutime now)
            continue
        written, cpu = written + w, cpu + c
    return written, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--cache", default=tempfile.gettempdir(), help="where the file is kept")
    parser.add_argument("--batch", type=int, default=50_000, help="rows an ImportPeople message")
    parser.add_argument("--storage", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)
    people = args.people
    cached = Path(args.cache) / f"healthcode-people-{people}-s{SEED}.csv"
    if not cached.exists():
        population.write_people(cached, population.SyntheticCity(people, SEED), lambda _n: None)
    work = Path(tempfile.mkdtemp(prefix="bench-import-io-"))
    file = work / "people.csv"
    shutil.copyfile(cached, file)
    cluster: Any = None
    storage: dict[str, str] = {}
    if args.storage == "postgresql":
        from tests.pg import Cluster  # the tests' throwaway cluster, made durable

        cluster = Cluster(durable=True, settings=CITY_POSTGRES)
        cluster.start()
        storage = {
            "HEALTHCODE_STORAGE": "postgresql",
            "HEALTHCODE_POSTGRES_DSN": cluster.new_database(),
        }
    stack = start_stack(work / "data", storage)
    try:
        names = ("declaration", "risk_index", "colour", "display")
        usage: dict[str, Callable[[], tuple[int, float]]] = {
            name: partial(_usage, stack.processes[name].pid) for name in names
        }
        if cluster is not None:
            usage["postgresql"] = partial(_cluster_usage, cluster)
        before = {name: measure() for name, measure in usage.items()}
        start = time.perf_counter()
        healthcode(stack, "import", str(file), "--batch", str(args.batch))
        acked = time.perf_counter() - start
        wait_people_in_index(stack, people)
        stack.wait_colour_version(accepted_version(stack), timeout_s=3600)
        held = time.perf_counter() - start
        after = {name: measure() for name, measure in usage.items()}
    finally:
        stack.stop()
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"Command: `python -m bench.bench_import_io --people {people} --batch {args.batch} "
        f"--storage {args.storage}`"
    )
    print(f"- acknowledged in {acked:.1f} s ({people / acked:,.0f} people/s)")
    print(f"- held by the risk index and the replicas in {held:.1f} s ({people / held:,.0f}/s)")
    for name in usage:
        written = after[name][0] - before[name][0]
        cpu = after[name][1] - before[name][1]
        print(
            f"- {name}: {written / 2**30:.2f} GiB written ({written / people / 1024:.1f} KiB a "
            f"person), {cpu:.1f} CPU-s ({cpu / people * 1e5:.2f} s per 100,000 people)"
        )


if __name__ == "__main__":
    main()
