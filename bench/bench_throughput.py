"""Display throughput against a bare gRPC echo server, same run, same generator (issue 9).

    python -m bench.bench_throughput              # 2,000 people, 20 s a phase, full midnight
    python -m bench.bench_throughput --quick      # a smoke run (seconds)

The four services are started as real processes (`clients.stack`) with a synthetic city loaded
through `healthcode seed`; `bench/echo_server.py` is started beside them. The services and the
echo server are pinned to the first half of the CPUs and the load generator (`healthcode load`,
one asyncio process) to the other half, so the generator is never the servers' competitor.

Phases, each `healthcode load` flat out (closed loop, `--concurrency` calls in flight):
  1. at 1 process, then at 2 (HEALTHCODE_DISPLAY_PROCESSES, and the echo server's --procs):
     the echo server's Show, DisplayService.Show, DisplayService.Scan (tokens from Shows made
     before the phase);
  2. Show with the colour from the colour service (HEALTHCODE_DISPLAY_COLOUR=service: two more
     gRPC hops per Show) beside Show from the display's own replica (one hop);
  3. ColourService.EvaluateStream in batches of 10,000 ID numbers (persons a second);
  4. the midnight profile on Show at 1 process: a base rate of a quarter of the measured Show
     rate, a 10x ramp over --ramp-s, held, back: errors (other than deliberate shedding), p99
     before, during and after, the seconds until p99 is back within 1.5x of its base, and a
     plot (PNG);
  5. a py-spy profile of the display process during a flat-out Show (the top frames by own
     time, GIL holders only).

A Markdown table goes to stdout (the figures `BENCHMARKS.md` records), progress to stderr, the
JSON summaries, the plot and the profile to --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_display import progress
from clients.stack import REPO, Stack, free_port

SEED = 9


def _cpus() -> tuple[set[int], set[int]]:
    """(servers' CPUs, generator's CPUs): the first half and the second half."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


class Bench:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.servers_cpus, self.generator_cpus = _cpus()
        self.rows: list[tuple[str, str, str]] = []
        self.profile: list[tuple[float, str]] = []  # py-spy's top frames during Show
        self.work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
        self.stack: Stack | None = None
        self.cluster: Any = None
        self.echo: subprocess.Popen[bytes] | None = None
        self.echo_port = 0

    # -- processes ----------------------------------------------------------------------------

    def start_stack(
        self, processes: int, colour_source: str = "replica", storage: str = "sqlite"
    ) -> Stack:
        """The four services on the servers' CPUs (children inherit the affinity); `storage`
        postgresql: their tables in a durable throwaway cluster on the same CPUs."""
        os.sched_setaffinity(0, self.servers_cpus)
        try:
            env = {
                "HEALTHCODE_LOG_LEVEL": "WARNING",
                "HEALTHCODE_DISPLAY_PROCESSES": str(processes),
                "HEALTHCODE_COLOUR_PROCESSES": str(processes),
                "HEALTHCODE_DISPLAY_COLOUR": colour_source,
            }
            if storage == "postgresql":
                env |= {
                    "HEALTHCODE_STORAGE": "postgresql",
                    "HEALTHCODE_POSTGRES_DSN": self.postgres().new_database(),
                }
            stack = Stack.on_free_ports(
                self.work / f"data-{processes}-{colour_source}-{storage}", env
            )
            stack.start()
            stack.wait_healthy(timeout_s=120)
        finally:
            os.sched_setaffinity(0, self.servers_cpus | self.generator_cpus)
        self.stack = stack
        return stack

    def stop_stack(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    def postgres(self) -> Any:
        """Debian's PostgreSQL 15 (`make postgres-deps`) with fsync and synchronous commit on,
        started once, on the servers' CPUs (the caller has pinned this process there)."""
        if self.cluster is None:
            from tests.pg import Cluster  # the tests' throwaway cluster, made durable

            self.cluster = Cluster(durable=True)
            self.cluster.start()
        return self.cluster

    def start_echo(self, processes: int) -> None:
        self.stop_echo()
        self.echo_port = free_port()
        cpus = ",".join(str(c) for c in sorted(self.servers_cpus))
        self.echo = subprocess.Popen(
            ["taskset", "-c", cpus, sys.executable, "-m", "bench.echo_server"]
            + ["--port", str(self.echo_port), "--procs", str(processes)],
            cwd=REPO,
            env=self.echo_env(),
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _port_open(self.echo_port):
            if time.monotonic() > deadline or self.echo.poll() is not None:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.1)

    def echo_env(self) -> dict[str, str]:
        """Mutual TLS for the echo server too, with the stack's credentials: Show and the
        echo then pay the same transport, and the difference is the display's own work."""
        env = dict(os.environ)
        if self.stack is not None:
            env["HEALTHCODE_ECHO_CREDENTIALS"] = str(self.stack.credentials_dir)
        return env

    def stop_echo(self) -> None:
        if self.echo is not None:
            self.echo.send_signal(signal.SIGTERM)
            self.echo.wait(timeout=30)
            self.echo = None

    def healthcode(self, *args: str, pin: bool = True) -> subprocess.CompletedProcess[str]:
        """The installed CLI against the running stack, on the generator's CPUs."""
        assert self.stack is not None
        cli = Path(sys.executable).with_name("healthcode")
        command = [str(cli)] if cli.exists() else [sys.executable, "-m", "clients.cli"]
        if pin:
            command = ["taskset", "-c", ",".join(map(str, sorted(self.generator_cpus))), *command]
        env = self.stack.env()
        env["HEALTHCODE_ECHO_ADDR"] = f"127.0.0.1:{self.echo_port}"
        env["HEALTHCODE_ECHO_CREDENTIALS"] = str(self.stack.credentials_dir)
        done = subprocess.run(
            [*command, *args], env=env, cwd=REPO, capture_output=True, text=True, check=False
        )
        if done.returncode not in (0, 1):  # 1: some calls failed; the summary says which
            raise RuntimeError(f"healthcode {shlex.join(args)}:\n{done.stdout}\n{done.stderr}")
        return done

    def seed(self) -> None:
        progress(f"seeding {self.args.people:,} people")
        self.healthcode(
            "seed",
            "--people",
            str(self.args.people),
            "--seed",
            str(SEED),
            "--out",
            str(self.work / f"seed-{time.monotonic_ns()}"),
            pin=False,
        )

    # -- load -----------------------------------------------------------------------------------

    def load(self, name: str, *args: str) -> dict[str, Any]:
        summary = self.out / f"{name}.json"
        self.healthcode(
            "load",
            "--sample",
            str(min(self.args.people, 20_000)),
            "--city",
            str(self.args.people),
            "--seed",
            str(SEED),
            "--channels",
            "8",
            "--json",
            str(summary),
            *args,
        )
        result: dict[str, Any] = json.loads(summary.read_text(encoding="utf-8"))
        progress(
            f"{name}: {result['throughput_per_s']:,.0f}/s ok, {result['items_per_s']:,.0f} "
            f"items/s, p99 {result['latency_ms']['p99']:.1f} ms, errors {result['errors']}"
        )
        return result

    def flat(self, name: str, target: str, call: str, *extra: str) -> dict[str, Any]:
        return self.load(
            name,
            "--target",
            target,
            "--call",
            call,
            "--duration",
            str(self.args.seconds),
            "--concurrency",
            str(self.args.concurrency),
            *extra,
        )

    def add(self, what: str, measured: str, target: str = "") -> None:
        self.rows.append((what, measured, target))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _rate(result: dict[str, Any]) -> float:
    return float(result["throughput_per_s"])


def _errors(result: dict[str, Any]) -> str:
    errors = {k: v for k, v in result["errors"].items() if k != "RESOURCE_EXHAUSTED"}
    shed = result["errors"].get("RESOURCE_EXHAUSTED", 0)
    return f"{sum(errors.values())} errors{f' {errors}' if errors else ''}, {shed:,} shed"


def throughput(bench: Bench, processes: int) -> dict[str, float]:
    stack = bench.start_stack(processes)
    bench.start_echo(processes)  # after the stack: it serves with the stack's credentials
    try:
        bench.seed()
        echo = bench.flat(f"echo-{processes}p", "echo", "show")
        pid = stack.processes["display"].pid
        profile: subprocess.Popen[bytes] | None = None
        raw = bench.out / f"show-{processes}p.pyspy.txt"
        if processes == 1 and shutil.which("py-spy", path=str(Path(sys.executable).parent)):
            profile = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)]
                + ["--format", "raw", "--output", str(raw), "--rate", "100", "--gil"]
                + ["--nonblocking", "--subprocesses", "--duration", str(int(bench.args.seconds))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        show = bench.flat(f"show-{processes}p", "display", "show")
        if profile is not None:
            profile.wait(timeout=120)
        scan = bench.flat(
            f"scan-{processes}p", "display", "scan", "--tokens", str(bench.args.tokens)
        )
        figures = {"echo": _rate(echo), "show": _rate(show), "scan": _rate(scan)}
        bench.add(
            f"echo server, Show's messages, {processes} process(es)",
            f"{_rate(echo):,.0f}/s (p99 {echo['latency_ms']['p99']:.0f} ms; {_errors(echo)})",
        )
        bench.add(
            f"DisplayService.Show, {processes} process(es)",
            f"{_rate(show):,.0f}/s = {_rate(show) / _rate(echo):.2f}x echo "
            f"(p99 {show['latency_ms']['p99']:.0f} ms; {_errors(show)})",
            "0.8x echo" if processes == 1 else "1.8x Show at 1 process",
        )
        bench.add(
            f"DisplayService.Scan, {processes} process(es)",
            f"{_rate(scan):,.0f}/s = {_rate(scan) / _rate(echo):.2f}x echo "
            f"(p99 {scan['latency_ms']['p99']:.0f} ms; {_errors(scan)})",
            "0.8x echo",
        )
        if processes == 1:
            stream = bench.load(
                "evaluate-stream",
                "--target",
                "colour",
                "--call",
                "evaluate-stream",
                "--batch",
                "10000",
                "--duration",
                str(bench.args.seconds),
                "--concurrency",
                "8",
            )
            bench.add(
                "ColourService.EvaluateStream, 10,000 ID numbers a message",
                f"{stream['items_per_s']:,.0f} persons/s ({_errors(stream)})",
                "1,000,000 persons/s",
            )
            midnight(bench, _rate(show))
            if raw.is_file():
                bench.profile = summarise_profile(raw)
        return figures
    finally:
        bench.stop_stack()
        bench.stop_echo()


def three_hops(bench: Bench, one_hop: float) -> None:
    bench.start_stack(1, colour_source="service")
    bench.start_echo(1)
    try:
        bench.seed()
        show = bench.flat("show-colour-service", "display", "show")
        bench.add(
            "Show with the colour from the colour service (HEALTHCODE_DISPLAY_COLOUR=service)",
            f"{_rate(show):,.0f}/s; one hop (own replica): {one_hop:,.0f}/s "
            f"({one_hop / max(_rate(show), 1):.2f}x)",
        )
    finally:
        bench.stop_stack()
        bench.stop_echo()


def on_postgres(bench: Bench, on_sqlite: float) -> None:
    """Show with the display log and token claims in PostgreSQL (HEALTHCODE_STORAGE), beside
    Show on SQLite from the first phase."""
    bench.start_stack(1, storage="postgresql")
    try:
        bench.seed()
        show = bench.flat("show-postgresql", "display", "show")
        bench.add(
            "Show with the storage in PostgreSQL (HEALTHCODE_STORAGE=postgresql, fsync on)",
            f"{_rate(show):,.0f}/s; on SQLite: {on_sqlite:,.0f}/s "
            f"({_rate(show) / max(on_sqlite, 1):.2f}x; p99 {show['latency_ms']['p99']:.0f} ms; "
            f"{_errors(show)})",
        )
    finally:
        bench.stop_stack()


def midnight(bench: Bench, show_rate: float) -> None:
    a = bench.args
    base = max(5.0, round(show_rate / 4))
    result = bench.load(
        "midnight",
        "--target",
        "display",
        "--call",
        "show",
        "--rate",
        str(base),
        "--profile",
        "midnight",
        "--base-s",
        str(a.base_s),
        "--ramp-s",
        str(a.ramp_s),
        "--hold-s",
        str(a.hold_s),
        "--peak-factor",
        "10",
        "--plot",
        str(bench.out / "midnight.png"),
    )
    phases = {p["phase"]: p for p in result["phases"]}
    before = phases["before"]
    after = result["phases"][-1]
    peak = max(result["phases"], key=lambda p: p.get("p99_ms", 0))
    # Seconds after the ramp back ends until a one-second window's p99 is within 1.5x of base.
    back_at = a.base_s + 2 * a.ramp_s + a.hold_s
    recovered = None
    for w in result["windows"]:
        if w["second"] >= back_at and w["ok"] and w["p99_ms"] <= 1.5 * max(before["p99_ms"], 1):
            recovered = w["second"] - back_at
            break
    bench.add(
        f"midnight profile on Show: base {base:,.0f}/s, 10x over {a.ramp_s:.0f} s, "
        f"held {a.hold_s:.0f} s",
        f"{_errors(result)}; p99 before {before['p99_ms']:.0f} ms, at the worst phase "
        f"({peak['phase']}) {peak['p99_ms']:.0f} ms, after {after['p99_ms']:.0f} ms; back within "
        + ("not within the run" if recovered is None else f"{recovered:.0f} s")
        + " of the ramp's end",
        "no errors but shedding; p99 back within 10 s",
    )


def summarise_profile(raw: Path, top: int = 12) -> list[tuple[float, str]]:
    """(share of samples, frame) by own time, from py-spy's raw collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    return [(n / max(total, 1), frame) for frame, n in own.most_common(top)]


def run(args: argparse.Namespace) -> str:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, out)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        one = throughput(bench, 1)
        two = throughput(bench, 2)
        bench.add(
            "Show, 2 processes / 1 process",
            f"{two['show'] / max(one['show'], 1):.2f}x (echo: {two['echo'] / max(one['echo'], 1):.2f}x)",
            "1.8x",
        )
        three_hops(bench, one["show"])
        on_postgres(bench, one["show"])
    finally:
        bench.stop_stack()
        bench.stop_echo()
        if bench.cluster is not None:
            bench.cluster.remove()
        shutil.rmtree(bench.work, ignore_errors=True)
    lines = [
        f"Command: `python -m bench.bench_throughput {' '.join(sys.argv[1:])}`".rstrip(),
        (
            f"Run {started} on {platform.node()}, {os.cpu_count()} CPUs; servers pinned to CPUs "
            f"{sorted(bench.servers_cpus)}, the generator to {sorted(bench.generator_cpus)}; "
            f"{args.people:,} people; {args.seconds:.0f} s a phase, {args.concurrency} calls in "
            "flight, 8 channels, one generator process."
        ),
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in bench.rows),
        "",
        f"The midnight plot: `{out / 'midnight.png'}`.",
    ]
    profile = bench.profile
    if profile:
        lines += ["", "py-spy, display process during the flat-out Show (own time, GIL held):", ""]
        lines += [f"- {share:5.1%} {frame}" for share, frame in profile]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=2_000, help="city size")
    parser.add_argument("--seconds", type=float, default=20.0, help="per flat-out phase")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens made for Scan")
    parser.add_argument("--base-s", type=float, default=30.0, help="midnight: base seconds")
    parser.add_argument("--ramp-s", type=float, default=60.0, help="midnight: ramp seconds")
    parser.add_argument("--hold-s", type=float, default=30.0, help="midnight: peak seconds")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds a phase")
    args = parser.parse_args(argv)
    if args.quick:
        args.people, args.seconds, args.tokens = 300, 2.0, 2_000
        args.base_s, args.ramp_s, args.hold_s = 2.0, 2.0, 2.0
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
