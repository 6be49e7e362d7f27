"""Metrics on a Prometheus endpoint, one per service process (issue 12, item 3).

`start_metrics(service, port, host, worker)` serves `http://host:port/metrics` (plain HTTP,
loopback by default like every other port; off when HEALTHCODE_<SERVICE>_METRICS_PORT is unset
or 0) and makes this process's `Metrics` current: `server.create_server` then puts its call
interceptor first in the chain and reports its shedder; the service's `__main__` adds what only
it knows (`watch_replica`, `watch_risk_index`, `watch_outbox`, `watch_display_log`).
docs/observability.md lists every metric and what to alert on.

Why prometheus-client and not OpenTelemetry's metrics SDK with its Prometheus exporter: the
per-call cost. Recording one histogram value with three attributes costs 9-17 us in the
OpenTelemetry SDK (1.45, exemplars off or on) against 1.3-2 us for a prometheus-client
histogram child looked up once per (method, status) here: a Show takes about 160 us, so the
SDK would add 6-10 % to the hot path (our whole interceptor: about 4 us; bench/bench_metrics.py).
The gRPC instrumentation (opentelemetry-instrumentation-grpc 0.66b2) records spans only, no
metrics. Traces stay OpenTelemetry's (telemetry.py).

Worker processes (services/_common/workers.py: N workers on one port): worker i serves its own
endpoint on the configured port + i, and the supervisor serves none. Each worker is one
Prometheus target; sums over a service are `sum by (...)` in PromQL. Aggregating in the
supervisor would need every worker to write its figures to shared files (prometheus-client's
multiprocess mode), which gauges of what one process holds (its index version) do not survive.

Labels are method names, status codes, source names, colours and kinds: bounded, and never an
identifier. A callback that fails leaves its metrics out of that scrape (logged once), never
the scrape.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import grpc
from healthcode.v1 import risk_index_pb2, risk_index_pb2_grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services._common.auth import process_security, secure_channel
from services._common.config import RECONNECT_OPTIONS, PlatformConfig
from services._common.days import today

log = logging.getLogger(__name__)

# Seconds. A Show is ~0.2 ms, a feed batch of 50,000 rows a few seconds; a stream's duration is
# its lifetime (minutes to days: +Inf).
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Displays per group commit: 1 when quiet, up to the writer's batch limit (512) at a peak.
COMMIT_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# How often a replica asks the risk index for its latest version (lag gauges).
LAG_PROBE_INTERVAL_S = 5.0
COLOURS = ("green", "yellow", "red")


class Metrics:
    """One process's metrics: a registry, the call interceptor, and scrape-time observers."""

    def __init__(self, service: str, worker: int | None = None) -> None:
        self.service = service
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=True)
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self.calls = CallMetrics(self.registry)
        info = Gauge(
            "healthcode_service_info",
            "This process: its service and worker index (empty: the only process).",
            ["service", "worker"],
            registry=self.registry,
        )
        info.labels(service, "" if worker is None else str(worker)).set(1)
        self._http: Any = None
        self._shedders: list[ShedderView] = []
        self._closers: list[Callable[[], None]] = []
        self.port = 0

    # -- serving ------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (plain HTTP) on a daemon thread; the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:
                log.exception("stopping a metrics observer failed")
        self._closers.clear()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def observe(self, name: str, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add metrics computed at each scrape by `collect`."""
        self.registry.register(_Observed(name, collect))

    # -- what every service has -----------------------------------------------------------

    def interceptor(self) -> CallMetrics:
        return self.calls

    def watch_shedder(self, shedder: ShedderView) -> None:
        """Calls shed (RESOURCE_EXHAUSTED before any work) and calls in progress, summed over
        the process's servers (a service has one)."""
        self._shedders.append(shedder)
        if len(self._shedders) > 1:
            return
        shedders = self._shedders

        def collect() -> Iterator[Metric]:
            shed = CounterMetricFamily(
                "healthcode_shed_calls",
                "Unary calls refused by load shedding (RESOURCE_EXHAUSTED, RetryInfo).",
            )
            shed.add_metric([], sum(s.shed for s in shedders))
            yield shed
            yield GaugeMetricFamily(
                "healthcode_calls_in_flight",
                "Unary calls in their handlers now (the shedder's count).",
                value=sum(s.in_flight for s in shedders),
            )
            yield GaugeMetricFamily(
                "healthcode_calls_in_flight_limit",
                "Unary calls in progress past which new ones are shed.",
                value=sum(s.limit for s in shedders),
            )

        self.observe("shedding", collect)

    # -- per service ------------------------------------------------------------------------

    def watch_replica(self, engine: HeldIndex, risk_index_addr: str | None = None) -> None:
        """A colour replica (the colour service's, or a display process's): the index version
        held, every feed's staleness, and, with `risk_index_addr`, the lag behind the risk
        index (asked every LAG_PROBE_INTERVAL_S)."""
        lag: IndexLag | None = None
        if risk_index_addr is not None:
            channel = secure_channel(risk_index_addr, process_security(), RECONNECT_OPTIONS)
            stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)

            def latest() -> tuple[int, float]:
                reply = stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest(), timeout=2.0)
                return int(reply.version), reply.published_at.ToDatetime(dt.UTC).timestamp()

            lag = IndexLag(lambda: engine.index_version, latest)
            lag.start()
            self._closers.append(channel.close)
            self._closers.append(lag.stop)

        def collect() -> Iterator[Metric]:
            yield GaugeMetricFamily(
                "healthcode_index_version",
                "The index version this process holds (the risk index: its latest published).",
                value=engine.index_version,
            )
            if lag is not None:
                versions, seconds = lag.lag()
                yield GaugeMetricFamily(
                    "healthcode_index_latest_seen_version",
                    "The risk index's latest version, as the lag probe last saw it.",
                    value=lag.latest,
                )
                yield GaugeMetricFamily(
                    "healthcode_index_lag_versions",
                    "Versions the risk index has published that this replica does not hold.",
                    value=versions,
                )
                yield GaugeMetricFamily(
                    "healthcode_index_lag_seconds",
                    "How long since the risk index published the oldest version this replica "
                    "does not hold (0: it holds the latest seen).",
                    value=seconds,
                )
            yield from feed_freshness(engine.freshness())

        self.observe("replica", collect)

    def watch_risk_index(self, risk_index: PublishedIndex) -> None:
        """The risk index: the version published last, when, and the version accepted."""

        def collect() -> Iterator[Metric]:
            current = risk_index.current
            yield GaugeMetricFamily(
                "healthcode_index_version",
                "The index version this process holds (the risk index: its latest published).",
                value=current.version,
            )
            yield GaugeMetricFamily(
                "healthcode_index_accepted_version",
                "The version that will carry every change accepted so far.",
                value=risk_index.accepted_version,
            )
            yield GaugeMetricFamily(
                "healthcode_index_published_timestamp_seconds",
                "When the latest version was published (Unix time).",
                value=current.published_at.timestamp(),
            )

        self.observe("risk_index", collect)

    def watch_outbox(self, outbox: Outbox) -> None:
        """The declaration service's outbox: messages not yet delivered to the risk index."""

        def collect() -> Iterator[Metric]:
            yield GaugeMetricFamily(
                "healthcode_outbox_depth",
                "Outbox messages waiting for the risk index (dead letters not counted).",
                value=outbox.pending_count(),
            )

        self.observe("outbox", collect)

    def watch_display_log(self, display_log: DisplayLogView) -> None:
        """A display process's log: the size of each group commit, and its counters."""
        commit_size = Histogram(
            "healthcode_display_log_commit_size",
            "Displays and scans made durable by one group commit (one transaction, one fsync).",
            buckets=COMMIT_SIZE_BUCKETS,
            registry=self.registry,
        )
        display_log.on_commit = commit_size.observe

        def collect() -> Iterator[Metric]:
            day = display_log.counters(today())
            for name, doc, value in (
                (
                    "healthcode_display_shows",
                    "Codes shown, logged by this process.",
                    day.total_displays,
                ),
                ("healthcode_display_scans", "Codes scanned and accepted.", day.total_scans),
                (
                    "healthcode_display_applicants",
                    "First displays of a person.",
                    day.total_applicants,
                ),
            ):
                counter = CounterMetricFamily(name, doc + " Since the log began.")
                counter.add_metric([], value)
                yield counter
            today_by = GaugeMetricFamily(
                "healthcode_display_today",
                "Today's accepted shows and scans by colour (this process's log).",
                labels=["kind", "colour"],
            )
            for kind, by_colour in (
                ("show", day.displays_by_colour),
                ("scan", day.scans_by_colour),
            ):
                for colour, n in zip(COLOURS, by_colour, strict=True):
                    today_by.add_metric([kind, colour], n)
            yield today_by
            yield GaugeMetricFamily(
                "healthcode_display_refused_scans_today",
                "Today's scans refused (a replayed or expired token, ...).",
                value=day.refused_scans,
            )

        self.observe("display_log", collect)


def feed_freshness(feeds: Sequence[FeedView]) -> Iterator[Metric]:
    """Per source: seconds since its last accepted batch, and whether that is stale."""
    now = time.time()
    age = GaugeMetricFamily(
        "healthcode_feed_age_seconds",
        "Seconds since the source's latest batch was accepted (absent: never fed).",
        labels=["source"],
    )
    stale = GaugeMetricFamily(
        "healthcode_feed_stale",
        "1 when the source is older than its max staleness (or never fed): its verdicts say so.",
        labels=["source"],
    )
    for feed in feeds:
        if feed.last_updated is not None:
            age.add_metric([feed.source], max(0.0, now - feed.last_updated.timestamp()))
        stale.add_metric([feed.source], 1 if feed.stale else 0)
    yield age
    yield stale


class CallMetrics(grpc.ServerInterceptor):
    """Per method and status: how many calls and how long they took, in one histogram
    (`healthcode_rpc_server_duration_seconds`; its `_count` is the call count). Streams are
    counted when they end, their duration being their lifetime, and gauged while open.

    First in the chain (server.create_server), so calls refused by the interceptors after it
    (a malformed body, load shedding, an unknown caller) are counted with their status too.
    Unknown methods never reach it (grpc answers UNIMPLEMENTED first): the method label is
    bounded by the services' methods."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "healthcode_rpc_server_duration_seconds",
            "Server calls by method and gRPC status: latency (streams: lifetime) and count.",
            ["service", "method", "code"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._open = Gauge(
            "healthcode_rpc_server_streams_open",
            "Response streams open now (WatchIndex, WatchCounters, EvaluateStream, ...).",
            ["service", "method"],
            registry=registry,
        )
        # (method, status) -> its histogram child: labels() parses and locks on every call;
        # a dict lookup does not. Races only create the same child twice.
        self._children: dict[tuple[str, grpc.StatusCode], Any] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        child = self._children.get((method, code))
        if child is None:
            service, _, name = method.lstrip("/").rpartition("/")
            child = self._duration.labels(service, name, code.name)
            self._children[(method, code)] = child
        child.observe(seconds)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(
                    self._stream(handler.stream_stream, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._unary(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behaviour: Any, method: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                response = behaviour(request, context)
            except BaseException:
                self.observe(method, _status(context, failed=True), time.perf_counter() - start)
                raise
            self.observe(method, _status(context, failed=False), time.perf_counter() - start)
            return response

        return measured

    def _stream(self, behaviour: Any, method: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        service, _, name = method.lstrip("/").rpartition("/")
        open_streams = self._open.labels(service, name)

        def measured(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            open_streams.inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                yield from behaviour(request, context)
                # A handler that saw its call end (the client cancelled, or keepalive found
                # the connection dead) and returned: the client never got an OK.
                if context.is_active() or context.code() is not None:  # type: ignore[attr-defined]
                    code = _status(context, failed=False)
                else:
                    code = grpc.StatusCode.CANCELLED
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED  # grpc stopped reading: the call had ended
                raise
            except BaseException:
                code = _status(context, failed=True)
                raise
            finally:
                open_streams.dec()
                self.observe(method, code, time.perf_counter() - start)

        return measured


def _status(context: grpc.ServicerContext, *, failed: bool) -> grpc.StatusCode:
    """The status a handler left: the one it set or aborted with; OK when it returned without
    one, UNKNOWN when it raised without one (what grpc answers then)."""
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class IndexLag:
    """How far a replica is behind the risk index, from `latest()` asked periodically.

    Versions: the latest seen minus the version held. Seconds: now minus the publication time
    of the oldest version seen that is not held (0 when the replica holds the latest seen). A
    replica on a live stream holds each version within milliseconds, so both stay 0; a stalled
    or half-open stream shows as a growing lag. Up to one probe interval late."""

    def __init__(
        self,
        held: Callable[[], int],
        latest: Callable[[], tuple[int, float]],
        interval_s: float = LAG_PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._held = held
        self._latest_of = latest
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._latest = 0
        # Versions seen but perhaps not held -> when each was published.
        self._unheld: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-lag", daemon=True)
        self._failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def probe(self) -> None:
        """Ask the risk index once."""
        version, published_at = self._latest_of()
        with self._lock:
            self._latest = max(self._latest, version)
            if version > self._held():
                self._unheld.setdefault(version, published_at)

    @property
    def latest(self) -> int:
        """The latest version the risk index reported (0: not asked successfully yet)."""
        return self._latest

    def lag(self) -> tuple[int, float]:
        held = self._held()
        with self._lock:
            for version in [v for v in self._unheld if v <= held]:
                del self._unheld[version]
            versions = max(0, self._latest - held)
            oldest = min(self._unheld.values(), default=None)
        if versions == 0 or oldest is None:
            return versions, 0.0
        return versions, max(0.0, self._clock() - oldest)

    def _run(self) -> None:
        while True:
            try:
                self.probe()
                self._failures = 0
            except grpc.RpcError as exc:
                self._failures += 1
                if self._failures == 1:  # one line per outage, not one per probe
                    code = exc.code() if isinstance(exc, grpc.Call) else None
                    log.warning("index lag: the risk index did not answer (%s)", code)
            if self._stop.wait(self._interval):
                return


class _Observed(Collector):
    """Metrics computed at scrape time; a failing callback drops only its own metrics."""

    def __init__(self, name: str, collect: Callable[[], Iterable[Metric]]) -> None:
        self._name = name
        self._collect = collect
        self._warned = False

    def describe(self) -> list[Metric]:
        return []  # nothing checked at registration (collect may need a live service)

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._collect())
        except Exception:
            if not self._warned:
                self._warned = True
                log.exception("metrics: %s could not be read; left out of the scrape", self._name)
            return []


# -- what the observers read (the services' own types, by shape) ------------------------------


class ShedderView(Protocol):
    @property
    def shed(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def limit(self) -> int: ...


class FeedView(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def last_updated(self) -> dt.datetime | None: ...
    @property
    def stale(self) -> bool: ...


class HeldIndex(Protocol):
    @property
    def index_version(self) -> int: ...
    def freshness(self) -> Sequence[FeedView]: ...


class _Publication(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def published_at(self) -> dt.datetime: ...


class PublishedIndex(Protocol):
    @property
    def current(self) -> _Publication: ...
    @property
    def accepted_version(self) -> int: ...


class Outbox(Protocol):
    def pending_count(self) -> int: ...


class _DayFigures(Protocol):
    @property
    def total_displays(self) -> int: ...
    @property
    def total_scans(self) -> int: ...
    @property
    def total_applicants(self) -> int: ...
    @property
    def displays_by_colour(self) -> tuple[int, int, int]: ...
    @property
    def scans_by_colour(self) -> tuple[int, int, int]: ...
    @property
    def refused_scans(self) -> int: ...


class DisplayLogView(Protocol):
    on_commit: Callable[[int], None] | None

    def counters(self, day: int) -> _DayFigures: ...


# -- the process's metrics ----------------------------------------------------------------------

_CURRENT: Metrics | None = None


def start_metrics(
    service: str, platform: PlatformConfig, worker: int | None = None
) -> Metrics | None:
    """Serve this process's metrics on the bind host and HEALTHCODE_<SERVICE>_METRICS_PORT
    (+ the worker index) and make them current; None, and nothing served, when that is unset or
    0. Call before `create_server`, so its calls are measured. A port that cannot be bound
    fails the start (OSError), as the service port would."""
    global _CURRENT
    port = platform.metrics_port(service, worker)
    if port is None:
        return None
    host = platform.host
    metrics = Metrics(service, worker)
    bound = metrics.serve(host, port)
    _CURRENT = metrics
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return metrics


def current() -> Metrics | None:
    """This process's metrics, if `start_metrics` turned them on."""
    return _CURRENT
