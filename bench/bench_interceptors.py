"""What building the server's interceptor chain on every call costs, against building it once
per method (services/_common/pipeline.py, issue 9).

    python -m bench.bench_interceptors             # 20 rounds of 1,000 calls, mutual TLS
    python -m bench.bench_interceptors --plain     # plain text: no authentication interceptor
    python -m bench.bench_interceptors --quick

1. The handler look-up alone, in-process: what grpc's server does for each call before the
   handler runs (its interceptor pipeline asked for the method's handler), with the five
   interceptors run per call, then with `MethodPipeline` in front of them.
2. Real unary calls from one client over loopback to two `create_server` servers started side
   by side, one with `per_method_chain=False` (every interceptor on every call, as before) and
   one with the chain kept per method. Both have the chain a service has: metrics on, the
   malformed-body check, the shedder, authentication (mutual TLS and a person's bearer token,
   unless --plain) and tracing (sampled as a service samples: DEFAULT_TRACE_RATIO, exported
   nowhere). The handler deserializes a ShowRequest and answers a few bytes.

The two are measured in alternation, several rounds, and the medians printed, wall-clock and
CPU time (client and server share this process: the CPU figure is less exposed to other
processes than the wall-clock one). On a shared machine the second table is noisy, and only
figures from the same run compare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import grpc
from grpc import _interceptor
from healthcode.v1 import display_pb2

from services._common import metrics
from services._common.auth import Security, TokenIssuer, create_issuer_keys
from services._common.malformed import MalformedRequests
from services._common.metrics import Metrics
from services._common.pipeline import MethodPipeline
from services._common.pki import create_dev_credentials
from services._common.server import create_server, stop
from services._common.shedding import Shedder
from services._common.telemetry import server_interceptor, setup_tracing

SERVICE = "healthcode.v1.DisplayService"
SHOW = f"/{SERVICE}/Show"
MODES = {"per call": False, "per method": True}


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def _show(_request: display_pb2.ShowRequest, _context: grpc.ServicerContext) -> bytes:
    return b"green"


def _add_show(server: grpc.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _show, request_deserializer=display_pb2.ShowRequest.FromString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Show": handler}),)
    )


def lookup_us(n: int, security: Security | None) -> dict[str, float]:
    """Microseconds per call for grpc's handler look-up through the chain, by mode."""
    handler = grpc.unary_unary_rpc_method_handler(
        _show, request_deserializer=display_pb2.ShowRequest.FromString
    )

    def registered(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return handler

    chain: list[grpc.ServerInterceptor] = [
        Metrics("bench").interceptor(),
        MalformedRequests(),
        Shedder(12),
        *([security.interceptor()] if security is not None else []),
        server_interceptor(),
    ]
    pipelines = {
        "per call": _interceptor._ServicePipeline(chain),
        "per method": _interceptor._ServicePipeline([MethodPipeline(chain)]),
    }
    details = _Details(SHOW, (("authorization", "Bearer x"), ("user-agent", "bench")))
    times: dict[str, list[float]] = {mode: [] for mode in pipelines}
    for _ in range(5):  # the two modes alternate
        for mode, pipeline in pipelines.items():
            start = time.perf_counter()
            for _ in range(n):
                pipeline.execute(registered, details)
            times[mode].append((time.perf_counter() - start) / n * 1e6)
    return {mode: statistics.median(us) for mode, us in times.items()}


@contextmanager
def _served(credentials: Path | None) -> Iterator[dict[str, Callable[[], bytes]]]:
    """One client call per mode, each to its own server (plain text without `credentials`)."""
    security: Security | None = None
    client: Security | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    if credentials is not None:
        security = Security.load(credentials, "display")
        client = Security.load(credentials, "cli")
        token = TokenIssuer(credentials).person(bytes(range(16)), "110***********001X")
        metadata = (("authorization", f"Bearer {token}"),)
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []
    calls: dict[str, Callable[[], bytes]] = {}
    body = display_pb2.ShowRequest().SerializeToString()
    try:
        for mode, per_method in MODES.items():
            server, port = create_server(
                _add_show, [SERVICE], security=security, per_method_chain=per_method
            )
            servers.append(server)
            target = f"127.0.0.1:{port}"
            channel = (
                grpc.insecure_channel(target)
                if client is None
                else grpc.secure_channel(target, client.channel_credentials())
            )
            channels.append(channel)
            show = channel.unary_unary(SHOW)

            def call(show: grpc.UnaryUnaryMultiCallable = show) -> bytes:
                return show(body, metadata=metadata, timeout=10)  # type: ignore[no-any-return]

            assert call() == b"green"
            calls[mode] = call
        yield calls
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            stop(server, None)


class Round(NamedTuple):
    wall_s: float  # per call
    cpu_s: float  # per call, this process: the client and the server both


def served_calls(calls: int, rounds: int, credentials: Path | None) -> dict[str, list[Round]]:
    """Each round's time per call, by mode, the modes alternating (and their order too)."""
    measured: dict[str, list[Round]] = {mode: [] for mode in MODES}
    with _served(credentials) as clients:
        for call in clients.values():  # warm both connections and both caches
            for _ in range(min(200, calls)):
                call()
        for round_ in range(rounds):
            order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
            for mode in order:
                call = clients[mode]
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    call()
                measured[mode].append(
                    Round((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls)
                )
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000, help="Calls per mode per round.")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="Plain text, no authentication.")
    parser.add_argument("--quick", action="store_true", help="A smoke run: few calls.")
    args = parser.parse_args()
    calls, rounds, lookups = args.calls, args.rounds, 20_000
    if args.quick:
        calls, rounds, lookups = 200, 2, 2_000

    previous = metrics._CURRENT
    metrics._CURRENT = Metrics("bench")  # the metrics interceptor in the chain, as `--metrics`
    setup_tracing("bench")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-interceptors-") as tmp:
            credentials: Path | None = None
            if not args.plain:
                credentials = Path(tmp)
                create_dev_credentials(credentials)
                create_issuer_keys(credentials)
            security = None if credentials is None else Security.load(credentials, "display")
            looked_up = lookup_us(lookups, security)
            measured = served_calls(calls, rounds, credentials)
    finally:
        metrics._CURRENT = previous

    chain = "metrics, malformed, shedder, " + ("" if args.plain else "auth, ") + "tracing"
    print(f"Chain: {chain}; {'plain text' if args.plain else 'mutual TLS + bearer token'}.")
    print()
    print("| handler look-up, in-process (median of 5) | us per call |")
    print("|---|---:|")
    for mode, us in looked_up.items():
        print(f"| chain built {mode} | {us:.2f} |")
    print(f"| **saved per call** | **{looked_up['per call'] - looked_up['per method']:.2f}** |")
    print()
    print(
        f"| unary calls over loopback, {rounds} rounds x {calls} | calls/s | wall us per call "
        "| best round, us | CPU us per call (client + server) |"
    )
    print("|---|---:|---:|---:|---:|")
    wall = {mode: statistics.median(r.wall_s for r in rs) * 1e6 for mode, rs in measured.items()}
    cpu = {mode: statistics.median(r.cpu_s for r in rs) * 1e6 for mode, rs in measured.items()}
    for mode, rs in measured.items():
        best = min(r.wall_s for r in rs) * 1e6
        print(
            f"| chain built {mode} | {1e6 / wall[mode]:,.0f} | {wall[mode]:.1f} | {best:.1f} "
            f"| {cpu[mode]:.1f} |"
        )
    # Each round measures both modes back to back: their ratio is less exposed to the
    # machine's load drifting than the medians are.
    paired = statistics.median(
        a.wall_s / b.wall_s for a, b in zip(measured["per call"], measured["per method"])
    )
    print(
        f"| **per method / per call** | **x{paired:.3f}** (median of paired rounds) "
        f"| {wall['per call'] - wall['per method']:+.1f} saved | "
        f"| **{cpu['per call'] - cpu['per method']:+.1f} saved** |"
    )


if __name__ == "__main__":
    main()
