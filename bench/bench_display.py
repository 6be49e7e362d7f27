"""Display throughput (亮码 per second) through the real services, beside a gRPC baseline.

    python -m bench.bench_display                 # 2,000 persons, 20 s per call, 8 clients
    python -m bench.bench_display --quick         # 300 persons, 5 s per call, 4 clients

Starts the four services as real processes (`clients.stack`: free loopback ports, a temporary
data directory), loads a population the way `make run` does (`clients.demo.load_demo`: people
registered, counties graded, feeds for every source), then measures, one after the other and
with the same number of client processes (`multiprocessing`, one gRPC channel each, so the
kernel spreads connections over the server's threads):

  (a) baseline: gRPC health `Check` on the display service, what a Python gRPC server answers
      at all on this machine;
  (b) `DisplayService.Show` for random registered persons: display -> declaration (masked name,
      cached 60 s) -> colour -> token signed -> the display log committed -> reply;
  (c) `DisplayService.Scan` of the fresh tokens (b) issued, each scanned once: signature, live
      colour, the token claimed in the transaction that logs the scan.

Every call has a 10 s deadline. Any failed call fails the run (exit status 1). A Markdown
table goes to stdout, progress to stderr. The stack is stopped at the end whatever happens.
Clients and services share this machine's CPUs: the figures are for the whole box.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import random
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import FrameType
from typing import Any

QUICK = {"persons": 300, "seconds": 5.0, "clients": 4}
CALL_TIMEOUT_S = 10.0
WARMUP_CALLS = 20
# At most this many calls per client and phase, whatever --seconds says.
MAX_CALLS_PER_CLIENT = 500_000
TOKEN_TTL_S = 60
# A token older than this is not scanned (it might expire in flight): skipped, not an error.
TOKEN_MAX_AGE_S = TOKEN_TTL_S - 5
SEED = 7

_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Job:
    """What one client process does in one phase."""

    kind: str  # "health", "show" or "scan"
    address: str
    index: int
    seconds: float
    id_numbers: list[str] = field(default_factory=list)
    tokens: list[tuple[float, str]] = field(default_factory=list)  # (issued at, token)
    data_dir: str = ""  # the stack's: its credentials, as the CLI finds them


@dataclass
class Outcome:
    index: int
    started: float  # time.time() after the barrier
    ended: float
    latencies_s: list[float]
    errors: dict[str, int]
    first_error: str
    tokens: list[tuple[float, str]]
    skipped: int  # scan: tokens too old to scan
    ran_out: bool  # scan: every token used before the time was up


def _client(job: Job, barrier: Barrier, results: Any) -> None:
    """One client process: one channel, a warm-up, the barrier, then calls until time is up."""
    # Imported here: the parent forks nothing gRPC-related (spawn), each child sets up its own.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from healthcode.v1 import common_pb2, display_pb2, display_pb2_grpc

    from clients.channel import open_channel
    from services._common.logs import redact

    rng = random.Random(SEED * 1000 + job.index)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    first_error = ""
    tokens: list[tuple[float, str]] = []
    skipped = 0
    ran_out = False
    if job.data_dir:
        os.environ["HEALTHCODE_DATA_DIR"] = job.data_dir
    with open_channel(job.address, timeout_s=CALL_TIMEOUT_S) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        display = display_pb2_grpc.DisplayServiceStub(channel)
        device = display_pb2.Device(device_id=f"bench-{job.kind}-{job.index}", place="bench")
        verifier = common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_VERIFIER, principal=f"bench-gate-{job.index}"
        )
        health_request = health_pb2.HealthCheckRequest(service="")

        def show_request() -> display_pb2.ShowRequest:
            ref = common_pb2.PersonRef(id_number=rng.choice(job.id_numbers))
            actor = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ref)
            return display_pb2.ShowRequest(actor=actor, person=ref, device=device)

        # Warm-up outside the measurement (connection, first calls); for Scan a health check,
        # since every token can be scanned only once.
        for _ in range(WARMUP_CALLS):
            if job.kind == "show":
                display.Show(show_request(), timeout=CALL_TIMEOUT_S)
            else:
                health.Check(health_request, timeout=CALL_TIMEOUT_S)
        barrier.wait(timeout=120)
        started = time.time()
        t0 = time.perf_counter()
        deadline = t0 + job.seconds
        queue = iter(job.tokens)
        while len(latencies) + sum(errors.values()) < MAX_CALLS_PER_CLIENT:
            now = time.perf_counter()
            if now >= deadline:
                break
            try:
                if job.kind == "health":
                    health.Check(health_request, timeout=CALL_TIMEOUT_S)
                    latencies.append(time.perf_counter() - now)
                elif job.kind == "show":
                    request = show_request()
                    now = time.perf_counter()
                    issued = time.time()
                    reply = display.Show(request, timeout=CALL_TIMEOUT_S)
                    latencies.append(time.perf_counter() - now)
                    tokens.append((issued, reply.token))
                else:
                    item = next(queue, None)
                    if item is None:
                        ran_out = True
                        break
                    issued, token = item
                    if time.time() - issued > TOKEN_MAX_AGE_S:
                        skipped += 1
                        continue
                    request_s = display_pb2.ScanRequest(actor=verifier, token=token, device=device)
                    now = time.perf_counter()
                    display.Scan(request_s, timeout=CALL_TIMEOUT_S)
                    latencies.append(time.perf_counter() - now)
            except grpc.RpcError as e:
                code = e.code().name if isinstance(e, grpc.Call) else "RPC_ERROR"
                errors[code] = errors.get(code, 0) + 1
                if not first_error:
                    detail = e.details() if isinstance(e, grpc.Call) else str(e)
                    first_error = f"{code}: {redact(detail or '')}"[:300]
        ended = time.time()
    results.put(
        Outcome(job.index, started, ended, latencies, errors, first_error, tokens, skipped, ran_out)
    )


@dataclass
class Phase:
    label: str
    clients: int
    calls: int
    window_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    first_error: str
    outcomes: list[Outcome]
    note: str = ""

    @property
    def per_second(self) -> float:
        return self.calls / self.window_s if self.window_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_values) // 1)))  # ceil(q * n), at least 1
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_phase(label: str, jobs: list[Job]) -> Phase:
    """Start one process per job, release them together, collect what each measured."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    processes = [ctx.Process(target=_client, args=(job, barrier, results)) for job in jobs]
    progress(f"{label}: {len(jobs)} client processes, {jobs[0].seconds:g} s")
    outcomes: list[Outcome] = []
    try:
        for p in processes:
            p.start()
        # Bounded: start-up and warm-up, the measured time, the last calls' deadlines.
        deadline = time.monotonic() + 120 + jobs[0].seconds + CALL_TIMEOUT_S + 30
        while len(outcomes) < len(jobs):
            try:
                outcomes.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"{label}: a client process exited with status {dead[0].exitcode}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: the clients did not finish in time") from None
        for p in processes:
            p.join(timeout=30)
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    latencies = sorted(x for o in outcomes for x in o.latencies_s)
    errors: dict[str, int] = {}
    for o in outcomes:
        for code, n in o.errors.items():
            errors[code] = errors.get(code, 0) + n
    first_error = next((o.first_error for o in outcomes if o.first_error), "")
    window = max(o.ended for o in outcomes) - min(o.started for o in outcomes)
    phase = Phase(
        label,
        len(jobs),
        len(latencies),
        window,
        percentile(latencies, 0.50) * 1000,
        percentile(latencies, 0.99) * 1000,
        errors,
        first_error,
        sorted(outcomes, key=lambda o: o.index),
    )
    progress(
        f"{label}: {phase.calls:,} calls in {window:.1f} s = {phase.per_second:,.0f}/s, "
        f"p50 {phase.p50_ms:.2f} ms, p99 {phase.p99_ms:.2f} ms, errors {phase.error_count}"
    )
    return phase


def markdown(command: str, header: list[str], phases: list[Phase], notes: list[str]) -> str:
    lines = [f"Command: `{command}`", "", *header, ""]
    lines += [
        "| call | client processes | calls | calls/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for ph in phases:
        errs = ", ".join(f"{n} {c}" for c, n in sorted(ph.errors.items())) if ph.errors else "0"
        lines.append(
            f"| {ph.label} | {ph.clients} | {ph.calls:,} | {ph.per_second:,.0f} | "
            f"{ph.p50_ms:.2f} | {ph.p99_ms:.2f} | {errs} |"
        )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> tuple[int, str]:
    """The whole benchmark; (exit status, report)."""
    # Imported here so that spawned clients, which import this module, stay light.
    from clients.demo import load_demo
    from clients.stack import Stack

    signal.signal(signal.SIGTERM, _on_sigterm)
    command = "python -m bench.bench_display" + (" " + shlex.join(args.argv) if args.argv else "")
    status = 1
    phases: list[Phase] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="healthcode-bench-display-") as tmp:
        stack = Stack.on_free_ports(Path(tmp), {"HEALTHCODE_DISPLAY_TOKEN_TTL_S": str(TOKEN_TTL_S)})
        try:
            progress("starting the four services on free loopback ports")
            stack.start()
            stack.wait_healthy(timeout_s=90)
            progress(f"all SERVING; loading {args.persons:,} persons and feeds (clients.demo)")
            t = time.monotonic()
            people = load_demo(stack.peers, args.persons, SEED, progress)
            stack.wait_healthy(timeout_s=60)
            load_s = time.monotonic() - t
            ids = [p.id_number for p in people.population]
            address = stack.peers.display

            def jobs(kind: str, tokens: list[list[tuple[float, str]]] | None = None) -> list[Job]:
                return [
                    Job(
                        kind,
                        address,
                        i,
                        args.seconds,
                        ids if kind == "show" else [],
                        tokens[i] if tokens else [],
                        str(stack.data_dir),
                    )
                    for i in range(args.clients)
                ]

            baseline = run_phase("(a) baseline: grpc.health.v1.Health/Check", jobs("health"))
            phases.append(baseline)
            stack.check_alive()
            show = run_phase("(b) DisplayService.Show (random registered person)", jobs("show"))
            phases.append(show)
            stack.check_alive()
            scan = run_phase(
                "(c) DisplayService.Scan (fresh token from (b), once each)",
                jobs("scan", [o.tokens for o in show.outcomes]),
            )
            phases.append(scan)
            stack.check_alive()
            skipped = sum(o.skipped for o in scan.outcomes)
            if any(o.ran_out for o in scan.outcomes):
                notes.append(
                    "(c) ran out of tokens before its time was up in at least one client (each "
                    "scans only the tokens its counterpart issued in (b)); its window ends with "
                    "the last client."
                )
            if skipped:
                notes.append(f"(c) skipped {skipped:,} tokens older than {TOKEN_MAX_AGE_S} s.")
            status = 1 if any(ph.error_count for ph in phases) else 0
            for ph in phases:
                if ph.first_error:
                    notes.append(f"first error in {ph.label.split()[0]}: {ph.first_error}")
            header = [
                (
                    f"{args.persons:,} registered persons (loaded in {load_s:.1f} s), "
                    f"{args.clients} client processes, {args.seconds:g} s per call; "
                    "every call with a 10 s deadline."
                ),
                (
                    f"{os.cpu_count()} CPUs, Python {platform.python_version()}; the four "
                    "services and the client processes share them, all on 127.0.0.1."
                ),
            ]
        except KeyboardInterrupt:
            progress("interrupted")
            header = []
            status = 1
        finally:
            progress("stopping the stack")
            codes = stack.stop()
            progress("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
    if not header:
        return status, ""
    notes.append(
        f"Result: {'FAILED, errors above' if status else 'no errors'} (exit status {status})."
    )
    return status, markdown(command, header, phases, notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per call")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="{persons} persons, {seconds:g} s, {clients} clients".format(**QUICK),
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.persons, args.seconds, args.clients = (
            QUICK["persons"],
            QUICK["seconds"],
            QUICK["clients"],
        )
    if not 10 <= args.persons <= 100_000:
        parser.error("--persons: 10-100,000")
    if not 0.5 <= args.seconds <= 25:
        # (c) scans tokens issued in (b); both within one 60 s token lifetime.
        parser.error("--seconds: 0.5-25")
    if not 1 <= args.clients <= 64:
        parser.error("--clients: 1-64")
    import grpc

    from services._common.logs import redact

    try:
        status, report = run(args)
    except (RuntimeError, OSError, grpc.RpcError) as e:
        # A service that did not start (StackError), a failed load or client: say so, exit 1.

        progress(f"FAILED: {type(e).__name__}: {redact(str(e))}")
        sys.exit(1)
    if report:
        print(report)
    sys.exit(status)


if __name__ == "__main__":
    main()
