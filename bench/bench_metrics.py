"""What the metrics interceptor costs a call (services/_common/metrics.py).

    python -m bench.bench_metrics              # 200,000 handler calls, 5,000 gRPC calls
    python -m bench.bench_metrics --quick

1. The handler path alone: a unary behaviour called directly, then through `CallMetrics`
   (`intercept_service` wrapping the handler, as grpc did once per call before the chain was
   kept per method (services/_common/pipeline.py), plus the call with its timing and histogram
   observation). The difference is an upper bound on what a call pays.
2. The same cost with OpenTelemetry's metrics SDK instead (one histogram record with the same
   three attributes), the alternative this module does not take.
3. Real unary calls over loopback to `create_server` (plain text) with metrics off and on:
   end to end, noisy on a shared machine; the first two figures are the ones to quote.

Prints a Markdown table; every figure is measured in this process, on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from services._common import metrics
from services._common.metrics import CallMetrics, Metrics
from services._common.server import create_server, stop

METHOD = "/healthcode.v1.DisplayService/Show"


class _Details:
    method = METHOD
    invocation_metadata = ()


class _Context:
    def code(self) -> None:
        return None


def _per_call_us(run: Callable[[int], None], n: int, repeats: int = 5) -> float:
    """The median over `repeats` of the time per call, in microseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(n)
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def handler_path(n: int) -> tuple[float, float]:
    def behaviour(request: bytes, _context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behaviour)

    def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return handler

    interceptor = CallMetrics(CollectorRegistry())
    context = _Context()
    details = _Details()

    def plain(count: int) -> None:
        for _ in range(count):
            handler.unary_unary(b"x", context)

    def measured(count: int) -> None:
        for _ in range(count):
            wrapped = interceptor.intercept_service(continuation, details)  # type: ignore[arg-type]
            wrapped.unary_unary(b"x", context)  # type: ignore[union-attr]

    return _per_call_us(plain, n), _per_call_us(measured, n)


def otel_record(n: int) -> float:
    provider = MeterProvider(
        metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOffExemplarFilter()
    )
    histogram = provider.get_meter("bench").create_histogram("rpc.server.duration", unit="s")
    attributes = {"service": "healthcode.v1.DisplayService", "method": "Show", "code": "OK"}

    def record(count: int) -> None:
        for _ in range(count):
            histogram.record(0.0002, attributes)

    return _per_call_us(record, n)


def grpc_calls(n: int, with_metrics: bool) -> float:
    metrics._CURRENT = Metrics("bench") if with_metrics else None

    def add(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda r, _c: r)}
                ),
            )
        )

    server, port = create_server(add, ["bench.Echo"], security=None)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/bench.Echo/Echo")
            echo(b"warm")

            def calls(count: int) -> None:
                for _ in range(count):
                    echo(b"x")

            return _per_call_us(calls, n, repeats=3)
    finally:
        stop(server, None)
        metrics._CURRENT = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer calls (a smoke run).")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    calls = 500 if args.quick else 5_000
    plain, measured = handler_path(n)
    otel = otel_record(n)
    off = grpc_calls(calls, with_metrics=False)
    on = grpc_calls(calls, with_metrics=True)
    print("| what | us per call |")
    print("|---|---:|")
    print(f"| handler called directly | {plain:.2f} |")
    print(f"| handler through CallMetrics (wrap + time + observe) | {measured:.2f} |")
    print(f"| **CallMetrics' own cost** | **{measured - plain:.2f}** |")
    print(f"| OpenTelemetry SDK: one histogram record, 3 attributes | {otel:.2f} |")
    print(f"| gRPC unary call over loopback, metrics off | {off:.1f} |")
    print(f"| gRPC unary call over loopback, metrics on | {on:.1f} |")


if __name__ == "__main__":
    main()
