"""Traces by OTLP (issue 12, item 3): with the standard OTEL_* variables set, the real service
processes send their spans to an OTLP/gRPC collector: here a tiny one in the test
(opentelemetry-proto's TraceService on a free loopback port) that keeps what it is sent.

After a registration, a feed batch and a Show, the collector holds spans of every service, the
Show's server span among them, and no attribute (of a span, its events or its resource) holds an
ID number or phone number, whether one of those used or anything shaped like one.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otel_common_pb2

from clients import feedgen
from clients.stack import Stack
from tests.e2e.rules_support import stubs
from tests.e2e.waits import SHANGHAI, eventually
from tests.support import running_stack

PEOPLE = feedgen.make_population(2, 1213, no_phone_rate=0.0)
ID_LIKE = re.compile(r"(?<![\d.])\d{17}[\dXx](?![\d.])")
PHONE_LIKE = re.compile(r"(?<![\d.])1[3-9]\d{9}(?![\d.])")


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, list[str]]]:
        """(service.name, span name, every attribute value as text) of every span."""
        with self._lock:
            requests = list(self.requests)
        out = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _texts(resource_spans.resource.attributes)
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        texts = [span.name, *resource, *_texts(span.attributes)]
                        for event in span.events:
                            texts += [event.name, *_texts(event.attributes)]
                        texts.append(span.status.message)
                        out.append((service, span.name, texts))
        return out


def _texts(attributes: Iterable[otel_common_pb2.KeyValue]) -> list[str]:
    return [f"{a.key}={a.value}" for a in attributes]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    keeper = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(keeper, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield keeper, port
    server.stop(None)


@pytest.fixture
def traced_stack(tmp_path: Path, collector: tuple[Collector, int]) -> Iterator[Stack]:
    _keeper, port = collector
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export within a fraction of a second
    }
    yield from running_stack(tmp_path / "data", env)


def test_spans_reach_an_otlp_collector_without_identifiers(
    traced_stack: Stack, collector: tuple[Collector, int]
) -> None:
    keeper, _port = collector
    with stubs(traced_stack) as s:
        s.register(PEOPLE)
        s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
        day = dt.datetime.now(SHANGHAI).date()
        s.ingest([feedgen.row("close_contact", id_number=PEOPLE[0].id_number, day=day)], "otlp")
        version = s.wait_colour()
        for person in PEOPLE:
            s.show(person.id_number, min_index_version=version)

    wanted = {
        ("declaration", "/healthcode.v1.DeclarationService/Register"),
        ("risk_index", "/healthcode.v1.RiskIndexService/IngestBatch"),
        ("display", "/healthcode.v1.DisplayService/Show"),
    }
    spans = eventually(
        "the collector to receive the spans of the declaration, risk index and display",
        keeper.spans,
        lambda got: wanted <= {(service, name) for service, name, _ in got},
    )
    numbers = [x for p in PEOPLE for x in (p.id_number, *p.phones)]
    for service, name, texts in spans:
        for text in texts:
            assert not any(n in text for n in numbers), f"{service} {name}: a number used"
            assert not ID_LIKE.search(text), f"{service} {name}: shaped like an ID number"
            assert not PHONE_LIKE.search(text), f"{service} {name}: shaped like a phone"
