"""services/_common/metrics.py: the call interceptor through a real in-process server
(`create_server` puts it first when metrics are on), the scrape-time observers with stand-ins
for the services' objects, the lag arithmetic, and the endpoint over HTTP."""

from __future__ import annotations

import datetime as dt
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from services._common import metrics
from services._common.config import PlatformConfig
from services._common.metrics import IndexLag, Metrics, start_metrics
from services._common.shedding import Shedder
from tests.support import Served

DURATION = "healthcode_rpc_server_duration_seconds"


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Metrics]:
    """This process's metrics, current (as `start_metrics` leaves them), not served."""
    m = Metrics("test")
    monkeypatch.setattr(metrics, "_CURRENT", m)
    yield m
    m.close()


class Behaviours:
    """Handlers that end every way a handler can."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def ok(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def refuse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        raise AssertionError("abort raises")

    def set_code(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        return b""

    def crash(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise ValueError("a bug")

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        self.release.wait(30)
        yield b"last"

    def echoes(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:  # a bidirectional stream, as EvaluateStream
            if request == b"bad":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad entry")
            yield request

    def add(self, server: grpc.Server) -> None:
        unary = grpc.unary_unary_rpc_method_handler
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Calls",
                    {
                        "Ok": unary(self.ok),
                        "Refuse": unary(self.refuse),
                        "SetCode": unary(self.set_code),
                        "Crash": unary(self.crash),
                        "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                        "Echoes": grpc.stream_stream_rpc_method_handler(self.echoes),
                    },
                ),
            )
        )


@pytest.fixture
def served(measured: Metrics) -> Iterator[tuple[Served, Behaviours]]:
    behaviours = Behaviours()
    s = Served.start(behaviours.add, ["test.Calls"])
    yield s, behaviours
    behaviours.release.set()
    s.close()


def _calls(m: Metrics, method: str, code: str) -> float:
    value = m.registry.get_sample_value(
        f"{DURATION}_count", {"service": "test.Calls", "method": method, "code": code}
    )
    return value or 0.0


def test_calls_are_counted_by_method_and_status(
    measured: Metrics, served: tuple[Served, Behaviours]
) -> None:
    s, _ = served
    call = s.channel.unary_unary
    for _ in range(3):
        assert call("/test.Calls/Ok")(b"x") == b"x"
    for method, code in (
        ("Refuse", grpc.StatusCode.FAILED_PRECONDITION),
        ("SetCode", grpc.StatusCode.NOT_FOUND),
        ("Crash", grpc.StatusCode.UNKNOWN),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(f"/test.Calls/{method}")(b"x")
        assert refused.value.code() == code
        assert _calls(measured, method, code.name) == 1
    assert _calls(measured, "Ok", "OK") == 3
    assert _calls(measured, "Ok", "UNKNOWN") == 0
    # The latency histogram: every call in the +Inf bucket, a sum of seconds.
    inf = measured.registry.get_sample_value(
        f"{DURATION}_bucket", {"service": "test.Calls", "method": "Ok", "code": "OK", "le": "+Inf"}
    )
    assert inf == 3
    # Health checks (registered by create_server) are calls like any other.
    health = health_pb2_grpc.HealthStub(s.channel)
    health.Check(health_pb2.HealthCheckRequest(service=""))
    assert (
        measured.registry.get_sample_value(
            f"{DURATION}_count",
            {"service": "grpc.health.v1.Health", "method": "Check", "code": "OK"},
        )
        == 1
    )


def test_streams_are_gauged_while_open_and_counted_when_they_end(
    measured: Metrics, served: tuple[Served, Behaviours]
) -> None:
    s, behaviours = served
    labels = {"service": "test.Calls", "method": "Stream"}
    stream = s.channel.unary_stream("/test.Calls/Stream")
    call = stream(b"")
    assert next(call) == b"first"
    assert measured.registry.get_sample_value("healthcode_rpc_server_streams_open", labels) == 1
    behaviours.release.set()
    assert list(call) == [b"last"]
    _wait(lambda: _calls(measured, "Stream", "OK") == 1)
    assert measured.registry.get_sample_value("healthcode_rpc_server_streams_open", labels) == 0

    behaviours.release.clear()
    cancelled = stream(b"")
    assert next(cancelled) == b"first"
    cancelled.cancel()
    behaviours.release.set()  # the handler goes on, finds its call over
    _wait(lambda: _calls(measured, "Stream", "CANCELLED") == 1)
    assert measured.registry.get_sample_value("healthcode_rpc_server_streams_open", labels) == 0


def test_bidirectional_streams_are_counted_with_their_status(
    measured: Metrics, served: tuple[Served, Behaviours]
) -> None:
    s, _ = served
    echoes = s.channel.stream_stream("/test.Calls/Echoes")
    assert list(echoes(iter([b"a", b"b"]))) == [b"a", b"b"]
    with pytest.raises(grpc.RpcError) as refused:
        list(echoes(iter([b"a", b"bad"])))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _wait(lambda: _calls(measured, "Echoes", "INVALID_ARGUMENT") == 1)
    assert _calls(measured, "Echoes", "OK") == 1


def test_shed_calls_are_counted_with_their_status(measured: Metrics) -> None:
    """The shedder of the server refuses past its limit; the metric reads its count."""
    behaviours = Behaviours()
    s = Served.start(behaviours.add, ["test.Calls"])
    try:
        shedder = _the_shedder(measured)
        shedder.limit = 0  # every unary call refused from now on
        with pytest.raises(grpc.RpcError) as refused:
            s.channel.unary_unary("/test.Calls/Ok")(b"x")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        s.close()
    assert measured.registry.get_sample_value("healthcode_shed_calls_total") == 1
    assert _calls(measured, "Ok", "RESOURCE_EXHAUSTED") == 1


def _the_shedder(m: Metrics) -> Shedder:
    shedders = [s for s in m._shedders if isinstance(s, Shedder)]
    assert len(shedders) == 1
    return shedders[0]


@dataclass
class Feed:
    source: str
    last_updated: dt.datetime | None
    stale: bool


@dataclass
class Engine:
    index_version: int = 7
    feeds: list[Feed] = field(default_factory=list)

    def freshness(self) -> list[Feed]:
        return self.feeds


def test_replica_gauges_and_feed_staleness() -> None:
    m = Metrics("colour")
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    m.watch_replica(
        Engine(7, [Feed("close_contact", recent, False), Feed("confirmed", None, True)])
    )
    get = m.registry.get_sample_value
    assert get("healthcode_index_version") == 7
    age = get("healthcode_feed_age_seconds", {"source": "close_contact"})
    assert age is not None and 7000 < age < 7300
    assert get("healthcode_feed_age_seconds", {"source": "confirmed"}) is None  # never fed
    assert get("healthcode_feed_stale", {"source": "close_contact"}) == 0
    assert get("healthcode_feed_stale", {"source": "confirmed"}) == 1


def test_a_failing_observer_drops_its_metrics_not_the_scrape() -> None:
    m = Metrics("declaration")

    class Broken:
        def pending_count(self) -> int:
            raise RuntimeError("database gone")

    m.watch_outbox(Broken())
    text = _exposition(m)
    assert "healthcode_outbox_depth" not in text
    assert 'healthcode_service_info{service="declaration",worker=""} 1.0' in text


@dataclass
class DayFigures:
    total_displays: int = 5
    total_scans: int = 2
    total_applicants: int = 3
    displays_by_colour: tuple[int, int, int] = (3, 1, 1)
    scans_by_colour: tuple[int, int, int] = (2, 0, 0)
    refused_scans: int = 1


class FakeLog:
    def __init__(self) -> None:
        self.on_commit: object = None

    def counters(self, day: int) -> DayFigures:
        return DayFigures()


def test_display_log_group_commits_and_counters() -> None:
    m = Metrics("display", worker=1)
    log = FakeLog()
    m.watch_display_log(log)  # type: ignore[arg-type]
    assert callable(log.on_commit)
    for size in (1, 3, 40):
        log.on_commit(size)  # type: ignore[operator]
    get = m.registry.get_sample_value
    assert get("healthcode_display_log_commit_size_count") == 3
    assert get("healthcode_display_log_commit_size_sum") == 44
    assert get("healthcode_display_log_commit_size_bucket", {"le": "4.0"}) == 2
    assert get("healthcode_display_shows_total") == 5
    assert get("healthcode_display_today", {"kind": "show", "colour": "red"}) == 1
    assert get("healthcode_display_refused_scans_today") == 1
    assert get("healthcode_service_info", {"service": "display", "worker": "1"}) == 1


def test_risk_index_and_outbox_gauges() -> None:
    @dataclass
    class Published:
        version: int
        published_at: dt.datetime

    @dataclass
    class RiskIndex:
        current: Published
        accepted_version: int

    @dataclass
    class Outbox:
        depth: int

        def pending_count(self) -> int:
            return self.depth

    at = dt.datetime(2021, 1, 6, 12, tzinfo=dt.UTC)
    m = Metrics("risk_index")
    m.watch_risk_index(RiskIndex(Published(41, at), 42))
    m.watch_outbox(Outbox(9))
    get = m.registry.get_sample_value
    assert get("healthcode_index_version") == 41
    assert get("healthcode_index_accepted_version") == 42
    assert get("healthcode_index_published_timestamp_seconds") == at.timestamp()
    assert get("healthcode_outbox_depth") == 9


def test_index_lag_in_versions_and_seconds() -> None:
    held = [10]
    latest = [(10, 1000.0)]
    now = [1000.0]
    lag = IndexLag(lambda: held[0], lambda: latest[0], clock=lambda: now[0])
    lag.probe()
    assert lag.lag() == (0, 0.0)
    latest[0] = (11, 1005.0)  # published; the replica has not got it
    lag.probe()
    latest[0] = (13, 1012.0)
    now[0] = 1020.0
    lag.probe()
    assert lag.lag() == (3, 15.0)  # since version 11 was published
    assert lag.latest == 13
    held[0] = 11
    assert lag.lag() == (2, 8.0)  # the oldest not held that the probe saw: 13
    held[0] = 13
    assert lag.lag() == (0, 0.0)


def test_the_endpoint_serves_the_text_format_over_http() -> None:
    m = Metrics("colour")
    port = m.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            text = reply.read().decode()
    finally:
        m.close()
    assert 'healthcode_service_info{service="colour",worker=""} 1.0' in text
    assert "process_cpu_seconds_total" in text


def test_metrics_are_off_without_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_CURRENT", None)
    off = PlatformConfig.from_env({"HEALTHCODE_COLOUR_METRICS_PORT": "0"})
    assert off.metrics_port("colour") is None
    assert off.metrics_port("display") is None
    assert start_metrics("colour", off) is None
    assert metrics.current() is None
    on = PlatformConfig.from_env({"HEALTHCODE_DISPLAY_METRICS_PORT": "9500"})
    # Worker i of several: the configured port + i.
    assert [on.metrics_port("display", w) for w in (None, 0, 1)] == [9500, 9500, 9501]


def _exposition(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def _wait(ok: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until `ok` (a stream's end is recorded after its last message is sent)."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)
