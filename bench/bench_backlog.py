"""Why a synchronous grpcio server drops calls under overload, and how many threads avoid it.

    python -m bench.bench_backlog                   # the table of BENCHMARKS.md
    python -m bench.bench_backlog --threads 8 --door 64 --seconds 5

A bare synchronous grpcio server whose Show burns `--work-us` of Python (the display's own
work is about that) runs pinned to the first CPU, with each pair of handler threads and
`maximum_concurrent_rpcs` (the door) in turn. `healthcode load` on the other CPU offers it
`--rate` calls a second, open loop, for `--seconds`. The table says how many calls were answered,
refused at the door (RESOURCE_EXHAUSTED) or dropped by grpc's core (CANCELLED).

grpcio's synchronous server takes calls from the core one at a time, on one thread, which
needs the GIL between two calls. Calls not taken yet wait in the core; past
`grpc.server.max_pending_requests` (1,000) the core drops them at random, and the client sees
CANCELLED with no retry advice. The more handler threads run Python, the less often the
accepting thread gets the GIL: with many, an overload is dropped; with few, it is refused at
the door. services/display/config.py chooses its threads from this.

With `--aio` the server is a grpc.aio one instead (an event loop, no handler threads; the wait
awaited; the door counted by the handler). It drops an overload the same way: its loop takes one
call from the core per turn, and a turn runs whatever handlers are ready, so calls pile up in
the core just as behind a starved accepting thread (BENCHMARKS.md).

A Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from healthcode.v1 import display_pb2, display_pb2_grpc

from bench.bench_display import progress
from bench.echo_server import fixed_show_response
from clients.stack import REPO, free_port

CONFIGS = ((64, 512), (16, 64), (8, 64), (4, 32))
MAX_SLOT_WAIT_S = 0.25


def _burn(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def serve(
    port: int, threads: int, door: int, work_us: float, wait_ms: float, cpu_slots: int
) -> None:
    """The busy server (run in its own process by `run`): each call burns `work_us` of Python,
    then waits `wait_ms` without the GIL (a database commit, a peer call). With `cpu_slots`,
    at most that many calls burn at once; the others wait for a slot, off the GIL, and one
    that waited over MAX_SLOT_WAIT_S is refused (RESOURCE_EXHAUSTED)."""
    reply = fixed_show_response()
    slots: queue.SimpleQueue[None] = queue.SimpleQueue()  # get/put in C: no GIL while blocked
    for _ in range(cpu_slots):
        slots.put(None)

    class Busy(display_pb2_grpc.DisplayServiceServicer):
        def Show(
            self, request: display_pb2.ShowRequest, context: grpc.ServicerContext
        ) -> display_pb2.ShowResponse:
            if cpu_slots:
                try:
                    slots.get(timeout=MAX_SLOT_WAIT_S)
                except queue.Empty:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no CPU slot")
                try:
                    _burn(work_us)
                finally:
                    slots.put(None)
            else:
                _burn(work_us)
            if wait_ms:
                time.sleep(wait_ms / 1000)
            return reply

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads), maximum_concurrent_rpcs=door
    )
    display_pb2_grpc.add_DisplayServiceServicer_to_server(Busy(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_aio(port: int, door: int, work_us: float, wait_ms: float) -> None:
    """The same busy server on grpc.aio: one event loop accepts and runs every call, and the
    wait is awaited (a commit handed to a thread), so no thread is held while it lasts.

    The door is the handler's own: a call that finds `door` calls in progress is refused
    (RESOURCE_EXHAUSTED) before any work. grpc.aio's `maximum_concurrent_rpcs` is no door: past
    it the server stops taking calls from the core, which is where they are dropped."""
    reply = fixed_show_response()
    in_progress = 0

    class Busy(display_pb2_grpc.DisplayServiceServicer):
        async def Show(  # type: ignore[override]
            self, request: display_pb2.ShowRequest, context: grpc.aio.ServicerContext
        ) -> display_pb2.ShowResponse:
            nonlocal in_progress
            if in_progress >= door:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "calls in progress")
            in_progress += 1
            try:
                _burn(work_us)
                if wait_ms:
                    await asyncio.sleep(wait_ms / 1000)
                return reply
            finally:
                in_progress -= 1

    async def main() -> None:
        server = grpc.aio.server()
        display_pb2_grpc.add_DisplayServiceServicer_to_server(Busy(), server)  # type: ignore[abstract]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def offer(port: int, rate: float, seconds: float, cpu: int, out: Path) -> dict[str, object]:
    """`healthcode load` at `rate` against the server, pinned to `cpu`; its JSON summary."""
    env = dict(os.environ, HEALTHCODE_DATA_DIR=str(out))  # no credentials: plain text
    summary = out / f"load-{port}.json"
    command = [sys.executable, "-m", "clients.cli", "load", "--target", "echo"]
    command += ["--address", f"127.0.0.1:{port}", "--rate", str(rate)]
    command += ["--duration", str(seconds), "--json", str(summary)]
    subprocess.run(
        ["taskset", "-c", str(cpu), *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    result: dict[str, object] = json.loads(summary.read_text(encoding="utf-8"))
    return result


def run(args: argparse.Namespace) -> str:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = cpus[0], cpus[-1]
    configs = [(args.threads, args.door)] if args.threads else list(CONFIGS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as work:
        for threads, door in configs:
            port = free_port()
            server = subprocess.Popen(
                ["taskset", "-c", str(server_cpu), sys.executable, "-m", "bench.bench_backlog"]
                + ["--serve", str(port), "--threads", str(threads), "--door", str(door)]
                + ["--work-us", str(args.work_us), "--wait-ms", str(args.wait_ms)]
                + ["--cpu-slots", str(args.cpu_slots)]
                + (["--aio"] if args.aio else []),
                cwd=REPO,
            )
            try:
                time.sleep(2)
                progress(f"{threads} threads, door {door}: {args.rate:,.0f} calls/s offered")
                result = offer(port, args.rate, args.seconds, load_cpu, Path(work))
            finally:
                server.terminate()
                server.wait(timeout=30)
            errors: dict[str, int] = result["errors"]  # type: ignore[assignment]
            latency: dict[str, float] = result["latency_ms"]  # type: ignore[assignment]
            rows.append(
                f"| {threads} / {door} | {result['throughput_per_s']:,.0f}/s | "
                f"{latency['p99']:,.0f} ms | {errors.get('CANCELLED', 0):,} | "
                f"{errors.get('RESOURCE_EXHAUSTED', 0):,} |"
            )
            progress(rows[-1])
    command = "python -m bench.bench_backlog " + shlex.join(sys.argv[1:])
    title = (
        f"`{command.strip()}` on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M')}: a handler of {args.work_us:,.0f} µs, "
        f"{args.rate:,.0f} calls/s offered for {args.seconds:g} s"
        + (f", then a wait of {args.wait_ms:g} ms" if args.wait_ms else "")
        + (f"; {args.cpu_slots} CPU slots" if args.cpu_slots else "")
        + ("; grpc.aio" if args.aio else "")
    )
    header = (
        "| handler threads / `maximum_concurrent_rpcs` | answered | p99 | CANCELLED "
        "| RESOURCE_EXHAUSTED |"
    )
    return "\n".join([title, "", header, "|---|---|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="calls offered a second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long, s")
    parser.add_argument("--work-us", type=float, default=700.0, help="Python work a call, µs")
    parser.add_argument("--threads", type=int, default=0, help="one setting: handler threads")
    parser.add_argument("--door", type=int, default=0, help="... and maximum_concurrent_rpcs")
    parser.add_argument(
        "--wait-ms", type=float, default=0.0, help="then a wait off the GIL a call, ms (a commit)"
    )
    parser.add_argument(
        "--cpu-slots", type=int, default=0, help="at most this many calls burn at once (0: any)"
    )
    parser.add_argument(
        "--aio",
        action="store_true",
        help="serve on grpc.aio (one event loop; --threads is ignored, --door is its own)",
    )
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve and args.aio:
        serve_aio(args.serve, args.door, args.work_us, args.wait_ms)
        return
    if args.serve:
        serve(args.serve, args.threads, args.door, args.work_us, args.wait_ms, args.cpu_slots)
        return
    if args.threads and not args.door:
        args.door = 8 * args.threads
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
