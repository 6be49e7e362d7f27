"""OpenTelemetry tracing: one provider per process, spans propagated across gRPC calls.

Servers get the OpenTelemetry server interceptor from `server.create_server`; clients make their
channels with `instrumented_channel`, whose interceptor injects the trace context into the call
metadata so a display's span and the colour call it makes share one trace. Span attributes are
the instrumentation's (method, status, peer); it records no payloads, so no identifier reaches a
trace, and our code must not add any.

Sampling: one request in a hundred starts a recorded trace (a display's span and the calls it
makes are then recorded together: the sampler follows the parent), unless the standard
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` variables say otherwise. Recording every span
of a city's midnight peak would cost the hot path more than the display itself.

Export: `HEALTHCODE_TRACE_CONSOLE=1` prints spans on stdout; `HEALTHCODE_TRACE_FILE=PATH`
appends every span as one JSON line to PATH (the processes of a deployment may share one file:
each batch is one append). Both are for development and tests. A deployment exports by OTLP
over gRPC to a collector (Jaeger, Tempo, the OpenTelemetry Collector) when the standard
variables say so (`otlp_requested`): `OTEL_TRACES_EXPORTER=otlp`, or an
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` with OTEL_TRACES_EXPORTER
unset. The exporter reads the other OTEL_EXPORTER_OTLP_* variables itself (headers, TLS
certificate, insecure, timeout, compression) and OTEL_BSP_* set the batching. Only the gRPC
protocol is installed: OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf is refused at start.
docs/observability.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext, server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from services._common.auth import process_security, secure_channel
from services._common.config import RECONNECT_OPTIONS

__all__ = [
    "RECONNECT_OPTIONS",
    "JsonLinesSpanExporter",
    "client_interceptor",
    "instrumented_channel",
    "server_interceptor",
    "setup_tracing",
]


# The share of requests that start a recorded trace, when OTEL_TRACES_SAMPLER is not set.
DEFAULT_TRACE_RATIO = 0.01


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Install (once per process) a tracer provider named after the service.

    `exporter` receives every span synchronously (tests pass an `InMemorySpanExporter`; every
    request is then traced). Without one, spans are sampled (DEFAULT_TRACE_RATIO, or the
    OTEL_TRACES_SAMPLER variables) and propagated; `HEALTHCODE_TRACE_CONSOLE=1` prints them,
    `HEALTHCODE_TRACE_FILE=PATH` appends them to a file as JSON lines, and the OTEL_* variables
    may send them to an OTLP collector (`otlp_requested`).
    Calling it again (several services in one test process) adds the exporter to the existing
    provider, because OpenTelemetry allows the global provider to be set only once.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        sampler: Sampler | None = None  # None: the OTEL_TRACES_SAMPLER variables decide
        if exporter is not None:
            sampler = ALWAYS_ON
        elif "OTEL_TRACES_SAMPLER" not in os.environ:
            sampler = ParentBased(TraceIdRatioBased(DEFAULT_TRACE_RATIO))
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), sampler=sampler
        )
        trace.set_tracer_provider(provider)
        if os.environ.get("HEALTHCODE_TRACE_CONSOLE") == "1":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        if trace_file := os.environ.get("HEALTHCODE_TRACE_FILE", ""):
            provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(trace_file)))
        if otlp_requested(os.environ):
            provider.add_span_processor(BatchSpanProcessor(otlp_exporter(os.environ)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def otlp_requested(env: Mapping[str, str]) -> bool:
    """Whether the standard OpenTelemetry variables ask for OTLP export of traces."""
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if exporters:
        return "otlp" in {name.strip().lower() for name in exporters.split(",")}
    return any(
        env.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    """The OTLP/gRPC span exporter, configured by the OTEL_EXPORTER_OTLP_* variables."""
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    ) or "grpc"
    if protocol.strip() != "grpc":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only 'grpc' is installed "
            "(opentelemetry-exporter-otlp-proto-grpc); point it at the collector's gRPC port "
            "(4317)"
        )
    # Imported here: a process that exports no OTLP does not load it.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class JsonLinesSpanExporter(SpanExporter):
    """Every span as one JSON line (OpenTelemetry's own `to_json`) appended to a file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(span.to_json(indent=None) + "\n" for span in spans).encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            # One O_APPEND write per batch: lines of several processes do not interleave.
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def instrumented_channel(
    target: str, options: list[tuple[str, int | str]] | None = None
) -> grpc.Channel:
    """A channel to a peer whose calls carry the current trace context, reconnecting within a
    second of the peer's return: mutual TLS with this process's certificate (plain text only in
    an insecure development run)."""
    channel = secure_channel(
        target, process_security(), options=[*RECONNECT_OPTIONS, *(options or [])]
    )
    # The OpenTelemetry interceptor implements its own interceptor interface (grpcext), not
    # grpc's, so it is attached with grpcext's intercept_channel. It wraps server-streaming
    # calls in a plain generator, which loses `cancel()`; long-lived watch streams (WatchIndex,
    # WatchCounters) are therefore left untraced and keep their grpc.Call.
    interceptor = client_interceptor(filter_=_not_server_streaming)
    return grpcext.intercept_channel(channel, interceptor)  # type: ignore[no-any-return]


def _not_server_streaming(client_info: object) -> bool:
    # Unary calls' info has no is_server_stream attribute; streaming calls' info does.
    return not getattr(client_info, "is_server_stream", False)
