"""The whole platform at city scale, through its real processes (issue 8).

    python -m bench.bench_city --storage postgresql   # 18 M people (make bench-city)
    python -m bench.bench_city --people 200000        # a smaller city, on SQLite
    python -m bench.bench_city --quick                # 3,000 people, 10 s of load (smoke test)

`make bench-city` runs the city on PostgreSQL (a durable throwaway cluster, `CITY_POSTGRES`):
at 18 M people SQLite's write-ahead log writes a whole page for every random-key row a
transaction inserts, several pages a person (BENCHMARKS.md, "The 18 M attempt"), where
PostgreSQL logs the row and writes a page once per checkpoint. `--cache DIR` keeps the people
file (six minutes to write at 18 M) for the next run.

Starts the four services as real processes (`clients.stack`: free loopback ports, a temporary
data directory, versions published at most once a second), then, one after the other:

 1. writes a reproducible synthetic city (`clients.population.SyntheticCity`, about 1.4 phones
    a person, transit cards, districts) and imports it with `healthcode import` (the
    client-streaming ImportPeople RPC, stored in bulk, handed to the risk index in chunks):
    the time until the import is acknowledged, and until the colour replica holds it;
 2. grades the counties and ingests feeds for every source of the default rule set with
    `healthcode ingest`;
 3. resident memory of each process;
 4. restarts the risk index, then the colour replica, each to gRPC health SERVING (the risk
    index from its snapshot plus the changes after it, the replica from its own snapshot
    plus the deltas since);
 5. steady load for --load-seconds: 200 registrations a second (Register) and one feed batch
    of 1,000 rows a second (IngestBatch, close contacts), while probes measure the time from a
    write's reply until Show returns the new colour (a new person's code; red for a person just
    named a close contact), the bytes each version costs on WatchIndex (a watcher of its own),
    and the colour replica's time to apply a delta (its GetStatus);
 6. Show throughput at this size beside the same at 2,000 people, same run, same clients
    (`bench.bench_display`'s client processes), over 2,000 people of each city (the display's
    holder cache warm in both: the index's size alone); and over 20,000 people of the big
    city (the holder cache mostly cold).

A Markdown table goes to stdout, progress to stderr. The stacks are stopped at the end.

`--keep DIR` imports and feeds the city in DIR and keeps it (the services' data, and the
PostgreSQL cluster stopped); `--resume DIR` starts that city again and measures steps 3-6
only, as often as wanted: at 18 M people the import alone takes over an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from bench.bench_display import Job, percentile, progress, run_phase
from clients import feedgen, population
from clients.channel import open_channel
from clients.stack import REPO, Stack
from services._common.days import format_day, hour_of_date, now_shanghai, today

CITY = 18_000_000
SMALL = 2_000
FOUR_SERVICES = ("declaration", "risk_index", "colour", "display")
QUICK = {"people": 3_000, "load_seconds": 10.0, "show_seconds": 5.0, "clients": 4}
REGISTRATIONS_PER_S = 200
FEED_ROWS_PER_BATCH = 1_000
SEED = 18
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="bench-city")
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="bench-city-feed")
GRID = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="bench-grid")
DEVICE = display_pb2.Device(device_id="bench-probe", place="bench")
# How long a probe waits for a write to show before it counts the write as not shown, how
# often it asks, and how many probes may wait at once (probes must not be the load).
PROBE_LIMIT_S = 30.0
PROBE_EVERY_S = 0.1
MAX_PROBES = 16


@dataclass
class Figures:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (what, measured, target)

    def add(self, what: str, measured: str, target: str = "") -> None:
        self.rows.append((what, measured, target))
        progress(f"{what}: {measured}")


def healthcode(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed CLI against this stack, as a user runs it."""
    env = stack.env()  # HEALTHCODE_<SERVICE>_ADDR of this stack
    cli = Path(sys.executable).with_name("healthcode")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "clients.cli"]
    done = subprocess.run(
        [*command, *args], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"healthcode {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_people_in_index(stack: Stack, people: int, timeout_s: float = 7200.0) -> None:
    """Until the risk index holds every imported person: the declaration service acknowledges
    an import once it is stored, and hands it to the risk index after, through its outbox."""
    deadline = time.monotonic() + timeout_s
    with open_channel(stack.peers.risk_index) as ch:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(ch)
        while stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).person_count < people:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the risk index does not hold {people:,} people")
            time.sleep(0.5)


def accepted_version(stack: Stack) -> int:
    with open_channel(stack.peers.risk_index) as ch:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(ch)
        return int(stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).accepted_version)


def start_stack(data_dir: Path, storage: dict[str, str] | None = None) -> Stack:
    """The four services on free ports; `storage`: HEALTHCODE_STORAGE and its DSN (default
    the embedded SQLite files in `data_dir`)."""
    stack = Stack.on_free_ports(
        data_dir,
        {
            "HEALTHCODE_LOG_LEVEL": "INFO",
            "HEALTHCODE_RISK_INDEX_PUBLISH_INTERVAL_S": "1",
            "HEALTHCODE_COLOUR_FRESHNESS_S": "5",
            **(storage or {}),
        },
    )
    stack.start()
    stack.wait_healthy(timeout_s=120)
    return stack


def people_file(people: int, directory: Path) -> Path:
    """The synthetic city's people file in `directory`, written unless a finished one is there
    (writing 18 M people takes about six minutes; the file is the same for the same seed)."""
    file = directory / f"healthcode-people-{people}-s{SEED}.csv"
    if not file.exists():
        t = time.perf_counter()
        population.write_people(file, population.SyntheticCity(people, SEED), lambda _n: None)
        progress(f"wrote {people:,} people in {time.perf_counter() - t:.1f} s")
    return file


def load_city(
    stack: Stack, people: int, work: Path, figures: Figures | None, cache: Path | None = None
) -> list[str]:
    """Write (or reuse from `cache`), import and feed a city; the ID numbers of a sample of
    its people."""
    city = population.SyntheticCity(people, SEED)
    people_file_ = people_file(people, cache or work)
    t = time.perf_counter()
    healthcode(
        stack, "import", str(people_file_), "--batch", "50000",
        "--checkpoint", str(work / "import.checkpoint"),
        "--report", str(work / "import.rejected.csv"),
    )  # fmt: skip
    imported_s = time.perf_counter() - t
    wait_people_in_index(stack, people)
    stack.wait_colour_version(accepted_version(stack), timeout_s=3600)
    visible_s = time.perf_counter() - t
    phones = (
        sum(len(p.phones) for block in city.blocks() for p in block) if people <= 200_000 else 0
    )
    if figures is not None:
        figures.add(
            f"import of {people:,} people (`healthcode import`), acknowledged",
            f"{imported_s:,.1f} s ({people / imported_s:,.0f} people/s)",
            "18 M and 25 M phones in 15 min or less (20,000/s)",
        )
        figures.add(
            "... and every person in the risk index and the colour replica",
            f"{visible_s:,.1f} s ({people / visible_s:,.0f} people/s)",
        )
        if phones:
            figures.add("phones imported", f"{phones:,} ({phones / people:.2f} a person)")
    now = now_shanghai()
    with open_channel(stack.peers.risk_index) as ch:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(ch)
        for county, level in feedgen.COUNTY_LEVELS.items():
            if level:
                request = risk_index_pb2.SetCountyLevelRequest(actor=ADMIN, county=county)
                request.level = common_pb2.CountyRiskLevel.ValueType(level)
                stub.SetCountyLevel(request)
    feed_file = work / f"feeds-{people}.jsonl"
    t = time.perf_counter()
    rows = population.write_feeds(
        feed_file, city, now.date(), hour_of_date(now.date(), now.hour), on_block=lambda _n: None
    )
    healthcode(stack, "ingest", str(feed_file), "--batch-size", "10000")
    stack.wait_colour_version(accepted_version(stack), timeout_s=3600)
    if figures is not None:
        figures.add(
            f"feeds: {rows:,} rows for every source (`healthcode ingest`)",
            f"{time.perf_counter() - t:,.1f} s",
        )
    return sample_of(people)


def measure_restarts(stack: Stack, figures: Figures) -> None:
    for name, target in (("risk_index", "30 s or less"), ("colour", "15 s or less")):
        stack.stop_one(name)
        t = time.perf_counter()
        stack.start((name,))
        stack.wait_healthy(timeout_s=600)
        figures.add(f"{name} restart to SERVING", f"{time.perf_counter() - t:,.1f} s", target)


class Watcher(threading.Thread):
    """Counts the versions and bytes WatchIndex sends a replica that is current."""

    def __init__(self, address: str, known: int) -> None:
        super().__init__(daemon=True, name="bench-watch")
        self.channel = open_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.call = risk_index_pb2_grpc.RiskIndexServiceStub(self.channel).WatchIndex(
            risk_index_pb2.WatchIndexRequest(known_version=known)
        )
        self.sizes: list[int] = []
        self.snapshots = 0

    def run(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for message in self.call:
                if message.HasField("delta"):
                    if message.version != message.delta.from_version:
                        self.sizes.append(message.ByteSize())
                else:
                    self.snapshots += 1

    def stop(self) -> None:
        self.call.cancel()
        self.channel.close()


def steady_load(stack: Stack, sample: list[str], seconds: float, figures: Figures) -> None:
    """Registrations and feed batches at a fixed rate; probes time each write until Show."""
    stop = threading.Event()
    lock = threading.Lock()
    delays: dict[str, list[float]] = {"registration": [], "feed batch": []}
    not_shown = {"registration": 0, "feed batch": 0}
    fresh: list[str] = []  # people registered during the load, not yet named in a feed
    new_people = iter(feedgen.synthetic_id_numbers(int(seconds * REGISTRATIONS_PER_S) * 2, 4242))
    collisions: list[str] = []
    watcher = Watcher(stack.peers.risk_index, accepted_version(stack))
    watcher.start()
    with open_channel(stack.peers.colour) as ch:
        before = colour_pb2_grpc.ColourServiceStub(ch).GetStatus(colour_pb2.GetStatusRequest())

    probes = threading.BoundedSemaphore(MAX_PROBES)

    def start_probe(kind: str, id_number: str, written: float, want_red: bool) -> bool:
        if not probes.acquire(blocking=False):
            return False  # enough probes in flight: this write is not sampled

        def run() -> None:
            try:
                probe(kind, id_number, written, want_red)
            finally:
                probes.release()

        threading.Thread(target=run, daemon=True).start()
        return True

    def probe(kind: str, id_number: str, written: float, want_red: bool) -> None:
        ref = common_pb2.PersonRef(id_number=id_number)
        actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ref)
        with open_channel(stack.peers.display) as ch:
            display = display_pb2_grpc.DisplayServiceStub(ch)
            while time.perf_counter() - written < PROBE_LIMIT_S:
                with contextlib.suppress(grpc.RpcError):
                    shown = display.Show(
                        display_pb2.ShowRequest(actor=actor, person=ref, device=DEVICE), timeout=5
                    )
                    if not want_red or shown.verdict.colour == common_pb2.COLOUR_RED:
                        with lock:
                            delays[kind].append(time.perf_counter() - written)
                        return
                time.sleep(PROBE_EVERY_S)
        with lock:
            not_shown[kind] += 1

    def register_loop() -> None:
        with open_channel(stack.peers.declaration) as ch:
            stub = declaration_pb2_grpc.DeclarationServiceStub(ch)
            n = 0
            start = time.perf_counter()
            while not stop.is_set():
                due = start + n / REGISTRATIONS_PER_S
                if (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
                id_number = next(new_people)
                try:
                    stub.Register(
                        declaration_pb2.RegisterRequest(
                            actor=GRID, name="压测", id_number=id_number
                        )
                    )
                except grpc.RpcError as e:
                    # A synthetic number the city already holds (both are drawn from the same
                    # space): not a new person, so not a write to time. (Under another name:
                    # ALREADY_EXISTS; registered by someone else, the grid worker holds no
                    # mandate for them: PERMISSION_DENIED.)
                    if isinstance(e, grpc.Call) and e.code() in (
                        grpc.StatusCode.ALREADY_EXISTS,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        collisions.append(id_number)
                        continue
                    raise
                written = time.perf_counter()
                if n % 50 == 0 and start_probe("registration", id_number, written, False):
                    with lock:  # every 50th, 4 a second: later named in a feed batch
                        fresh.append(id_number)
                n += 1

    def feed_loop() -> None:
        rng = random.Random(SEED + 1)
        day = format_day(today() - 1)
        with open_channel(stack.peers.risk_index) as ch:
            stub = risk_index_pb2_grpc.RiskIndexServiceStub(ch)
            n = 0
            start = time.perf_counter()
            while not stop.is_set():
                due = start + n
                if (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
                with lock:
                    target = fresh.pop(0) if len(fresh) > 5 else None
                named = [rng.choice(sample) for _ in range(FEED_ROWS_PER_BATCH - 1)]
                if target is not None:
                    named.append(target)
                stub.IngestBatch(
                    risk_index_pb2.IngestBatchRequest(
                        actor=FEED,
                        source="close_contact",
                        batch_id=f"bench-city-{os.getpid()}-{n}",
                        rows=[risk_index_pb2.FeedRow(id_number=i, day=day) for i in named],
                    )
                )
                written = time.perf_counter()
                if target is not None:
                    start_probe("feed batch", target, written, True)
                n += 1

    writers = [threading.Thread(target=f, daemon=True) for f in (register_loop, feed_loop)]
    for w in writers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in writers:
        w.join(timeout=60)
    time.sleep(PROBE_LIMIT_S / 3)
    watcher.stop()
    with open_channel(stack.peers.colour) as ch:
        after = colour_pb2_grpc.ColourServiceStub(ch).GetStatus(colour_pb2.GetStatusRequest())
    if collisions:
        progress(f"{len(collisions)} generated numbers were already in the city: skipped")
    for kind in ("registration", "feed batch"):
        d = sorted(delays[kind])
        figures.add(
            f"{kind} reply -> Show shows it (p50 / p99 / max, {len(d)} probes, "
            f"{not_shown[kind]} not shown in {PROBE_LIMIT_S:.0f} s)",
            f"{percentile(d, 0.5) * 1000:,.0f} / {percentile(d, 0.99) * 1000:,.0f} / "
            f"{(d[-1] if d else 0) * 1000:,.0f} ms",
            "p99 2 s or less",
        )
    sizes = sorted(float(n) for n in watcher.sizes)
    figures.add(
        f"WatchIndex bytes per version ({len(sizes)} versions, {watcher.snapshots} snapshots)",
        f"median {percentile(sizes, 0.5) / 1024:,.1f} KiB, max {(sizes[-1] if sizes else 0) / 1024:,.1f} KiB",
        "under 1 MiB",
    )
    figures.add(
        f"colour replica applying a delta ({after.deltas_applied - before.deltas_applied} deltas; "
        "last 1,000: p50 / p99 / max)",
        f"{after.delta_apply_ms_p50:,.1f} / {after.delta_apply_ms_p99:,.1f} / "
        f"{after.delta_apply_ms_max:,.1f} ms",
        "a 1,000-row delta in 50 ms or less",
    )


def show_rate(stack: Stack, sample: list[str], seconds: float, clients: int) -> float:
    jobs = [
        Job("show", stack.peers.display, i, seconds, sample, data_dir=str(stack.data_dir))
        for i in range(clients)
    ]
    phase = run_phase("show", jobs)
    if phase.error_count:
        raise RuntimeError(f"Show failed {phase.error_count} times: {phase.first_error}")
    return phase.per_second


# A city's PostgreSQL: the index pages in memory, and checkpoints far enough apart that a
# bulk import writes each page once per checkpoint rather than once per transaction; full
# pages in the WAL compressed. Durable (fsync and synchronous commit on), as deployed.
CITY_POSTGRES = {
    "shared_buffers": "2GB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "wal_compression": "lz4",
    # An import only inserts: insert-driven vacuums of the growing tables (each larger than the
    # last) were half of the slow phase's samples at 5-10 M. Autovacuum still runs for the
    # rows updated and deleted (the outbox), and ANALYZE still runs.
    "autovacuum_vacuum_insert_threshold": "-1",
}


def pss_mib(pid: int) -> float:
    """Proportional set size: shared memory (PostgreSQL's buffers) counted once across the
    processes that map it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # the process ended in between
        pass
    return 0.0


def postgres_pss_mib(cluster: Any) -> float:
    """All of a cluster's processes (the postmaster and its children)."""
    postmaster, children = cluster.processes()
    return sum(pss_mib(pid) for pid in [postmaster, *children])


def sample_of(people: int) -> list[str]:
    """The ID numbers `load_city` returns for a city of this size (the same seed)."""
    city = population.SyntheticCity(people, SEED)
    rng = random.Random(SEED)
    return [city.id_number(rng.randrange(people))[0] for _ in range(min(people, 20_000))]


def run(args: argparse.Namespace) -> tuple[int, str]:
    figures = Figures()
    kept = Path(args.keep or args.resume) if (args.keep or args.resume) else None
    work = kept if kept is not None else Path(tempfile.mkdtemp(prefix="bench-city-"))
    work.mkdir(parents=True, exist_ok=True)
    stacks: list[Stack] = []
    cluster: Any = None
    cache = Path(args.cache) if args.cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    record = work / "city.json"
    city_dsn = ""

    def storage() -> dict[str, str]:
        if cluster is None:
            return {}
        return {
            "HEALTHCODE_STORAGE": "postgresql",
            "HEALTHCODE_POSTGRES_DSN": cluster.new_database(),
        }

    try:
        if args.resume:
            # A city imported and fed by an earlier `--keep` run: start it again as it was.
            kept_city = json.loads(record.read_text(encoding="utf-8"))
            args.people = int(kept_city["people"])
            city_storage: dict[str, str] = {}
            if kept_city.get("postgres"):
                from tests.pg import Cluster

                cluster = Cluster.reopen(Path(kept_city["postgres"]))
                cluster.start()
                city_storage = {
                    "HEALTHCODE_STORAGE": "postgresql",
                    "HEALTHCODE_POSTGRES_DSN": kept_city["dsn"],
                }
            progress(f"resuming the city of {args.people:,} people kept in {work}")
            t = time.perf_counter()
            stack = start_stack(work / "city", city_storage)
            stacks.append(stack)
            figures.add(
                f"the kept city's four services, started to SERVING at {args.people:,} people",
                f"{time.perf_counter() - t:,.1f} s",
            )
            sample = sample_of(args.people)
        else:
            if args.storage == "postgresql":
                from tests.pg import Cluster  # the tests' throwaway cluster, made durable

                cluster = Cluster(durable=True, settings=CITY_POSTGRES)
                cluster.start()
                progress(f"PostgreSQL in {cluster.directory}: {CITY_POSTGRES}")
            city_storage = storage()
            city_dsn = city_storage.get("HEALTHCODE_POSTGRES_DSN", "")
            stack = start_stack(work / "city", city_storage)
            stacks.append(stack)
            sample = load_city(stack, args.people, work, figures, cache)
            if kept is not None:
                record.write_text(
                    json.dumps(
                        {
                            "people": args.people,
                            "postgres": str(cluster.directory) if cluster is not None else "",
                            "dsn": city_dsn,
                        }
                    ),
                    encoding="utf-8",
                )
                progress(f"the city is kept in {work}: `--resume {work}` measures it again")
        for name, process in stack.processes.items():
            figures.add(f"resident memory, {name}", f"{rss_mib(process.pid):,.0f} MiB")
        total = sum(rss_mib(stack.processes[name].pid) for name in FOUR_SERVICES)
        figures.add(
            "resident memory, all four services (not the gateway)",
            f"{total / 1024:,.2f} GiB",
            "8 GiB or less",
        )
        # What they cost the machine: pages the replicas share (the key files every replica
        # maps, services/display/README.md) counted once, split among the processes mapping
        # them; RSS counts them in each.
        figures.add(
            "proportional set size, all four services",
            f"{sum(pss_mib(stack.processes[n].pid) for n in FOUR_SERVICES) / 1024:,.2f} GiB",
        )
        if cluster is not None:
            figures.add(
                "PostgreSQL, all its processes (proportional set size)",
                f"{postgres_pss_mib(cluster) / 1024:,.2f} GiB",
            )
        measure_restarts(stack, figures)
        steady_load(stack, sample, args.load_seconds, figures)
        # Over the whole sample the display's holder cache is mostly cold (a declaration look-up
        # a Show); over as many people as the small city has, it is warm in both cities, so
        # the comparison is of the index's size alone.
        wide_rate = show_rate(stack, sample, args.show_seconds, args.clients)
        city_rate = show_rate(stack, sample[:SMALL], args.show_seconds, args.clients)
        small = start_stack(work / "small", storage())
        stacks.append(small)
        (work / "small-files").mkdir(exist_ok=True)
        small_sample = load_city(small, SMALL, work / "small-files", None)
        small_rate = show_rate(small, small_sample, args.show_seconds, args.clients)
        figures.add(
            f"Show per second at {args.people:,} people / at {SMALL:,}, the same number of "
            f"people shown in both (same run, {args.clients} clients)",
            f"{city_rate:,.0f} / {small_rate:,.0f} ({city_rate / small_rate:.2f}x)",
            "must not fall with size",
        )
        figures.add(
            f"Show per second at {args.people:,} people over {len(sample):,} of them (the "
            "holder cache mostly cold: a declaration look-up a Show)",
            f"{wide_rate:,.0f}",
        )
    finally:
        for s in stacks:
            s.stop()
        if cluster is not None:
            if kept is not None:
                cluster.stop()  # kept for `--resume`, with the city's data directory
            else:
                cluster.remove()
        if kept is not None:
            shutil.rmtree(work / "small", ignore_errors=True)
            shutil.rmtree(work / "small-files", ignore_errors=True)
    command = "python -m bench.bench_city " + shlex.join(sys.argv[1:])
    lines = [
        (
            f"`{command.strip()}` on {platform.node()} ({os.cpu_count()} cores), "
            f"{time.strftime('%Y-%m-%d %H:%M')}"
        ),
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        *(f"| {w} | {m} | {t} |" for w, m, t in figures.rows),
    ]
    return 0, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=CITY, help="city size (default 18 M)")
    parser.add_argument("--load-seconds", type=float, default=120.0, help="steady load, s")
    parser.add_argument("--show-seconds", type=float, default=20.0, help="per Show phase, s")
    parser.add_argument("--clients", type=int, default=8, help="Show client processes")
    parser.add_argument("--quick", action="store_true", help="a small city, short phases")
    parser.add_argument(
        "--storage",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the services' storage: the embedded SQLite files, or a durable throwaway "
        "PostgreSQL cluster (Debian's, `make postgres-deps`) with a city's settings",
    )
    parser.add_argument(
        "--cache", help="keep the synthetic people file here and reuse it (default: not kept)"
    )
    kept = parser.add_mutually_exclusive_group()
    kept.add_argument(
        "--keep",
        metavar="DIR",
        help="import and feed the city in DIR and keep it there (the services' data and the "
        "PostgreSQL cluster, stopped), so that `--resume DIR` measures it again without the "
        "import (at 18 M an import takes over an hour)",
    )
    kept.add_argument(
        "--resume",
        metavar="DIR",
        help="start the city kept by `--keep DIR` and measure everything after the import: "
        "memory, restarts, the steady load, Show at size",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    status, table = run(args)
    print(table)
    sys.exit(status)


if __name__ == "__main__":
    main()
