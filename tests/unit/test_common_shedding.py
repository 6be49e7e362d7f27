"""Load shedding through a real grpc server (services/_common/shedding.py): past the limit a
call is refused at once with RESOURCE_EXHAUSTED and RetryInfo, secondary calls are refused
first, health checks never are, and the service recovers when the load falls."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services._common.server import SHEDDERS, create_server, stop

SERVICE = "healthcode.test.Slow"


class Slow:
    """`Work` (primary) and `GetStatus` (secondary) each wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.entered.release()
        self.release.wait(30)
        return request

    def add_to(self, server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.handle)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Work": handler, "GetStatus": handler}
                ),
            )
        )


@pytest.fixture
def slow_server() -> Iterator[tuple[Slow, grpc.Channel, grpc.Server]]:
    slow = Slow()
    server, port = create_server(slow.add_to, [SERVICE], max_workers=8, max_in_flight=4)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield slow, channel, server
    finally:
        slow.release.set()
        channel.close()
        stop(server, None)


def _call(channel: grpc.Channel, method: str) -> grpc.Future:
    return channel.unary_unary(f"/{SERVICE}/{method}").future(b"x", timeout=30)


def _retry_delay_ms(error: grpc.RpcError) -> int:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToMilliseconds()
    raise AssertionError(f"no RetryInfo in {status}")


def test_past_the_limit_calls_are_shed_with_a_retry_delay_and_secondary_ones_first(
    slow_server: tuple[Slow, grpc.Channel, grpc.Server],
) -> None:
    slow, channel, server = slow_server
    shedder = SHEDDERS[id(server)]
    assert (shedder.limit, shedder.secondary_limit) == (4, 1)
    first = _call(channel, "Work")
    assert slow.entered.acquire(timeout=10)
    # One call in progress: a secondary call (a status page) is already refused...
    with pytest.raises(grpc.RpcError) as secondary:
        _call(channel, "GetStatus").result()
    assert secondary.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _retry_delay_ms(secondary.value) >= 200
    # ... while primary calls are admitted up to the limit.
    more = [_call(channel, "Work") for _ in range(3)]
    for _ in more:
        assert slow.entered.acquire(timeout=10)
    assert shedder.in_flight == 4
    assert shedder.busy()  # secondary content is shed now: a Show leaves out its reasons
    with pytest.raises(grpc.RpcError) as refused:
        _call(channel, "Work").result()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in (refused.value.details() or "")
    assert _retry_delay_ms(refused.value) >= 200
    # Health checks are never shed: a load balancer must still see the process alive.
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert shedder.shed == 2
    # The load falls: every admitted call completes and new ones are served again.
    slow.release.set()
    assert [f.result() for f in [first, *more]] == [b"x"] * 4
    assert _call(channel, "Work").result() == b"x"
    assert _call(channel, "GetStatus").result() == b"x"
    assert shedder.in_flight == 0 and not shedder.busy()


def test_a_call_that_waited_too_long_for_a_thread_is_shed_with_a_retry_delay() -> None:
    # Two threads, both held: a third call waits in the pool's queue. Past 50 ms of waiting it
    # is refused as soon as a thread takes it, instead of being served late.
    slow = Slow()
    server, port = create_server(
        slow.add_to, [SERVICE], max_workers=2, max_in_flight=2, max_queue_wait_s=0.05
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        shedder = SHEDDERS[id(server)]
        held = [_call(channel, "Work") for _ in range(2)]
        for _ in held:
            assert slow.entered.acquire(timeout=10)
        late = _call(channel, "Work")
        threading.Event().wait(0.3)  # it waits for a thread
        slow.release.set()
        with pytest.raises(grpc.RpcError) as refused:
            late.result()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "wait" in (refused.value.details() or "")
        assert _retry_delay_ms(refused.value) >= 200
        assert [f.result() for f in held] == [b"x", b"x"] and shedder.shed == 1
        # Not waiting any more: served.
        assert _call(channel, "Work").result() == b"x"
    finally:
        slow.release.set()
        channel.close()
        stop(server, None)


def test_the_queue_wait_is_known_only_inside_the_pool() -> None:
    from services._common.shedding import QueueTimedPool, queue_wait_s

    assert queue_wait_s() is None
    with QueueTimedPool(max_workers=1) as pool:
        waited = pool.submit(queue_wait_s).result(timeout=10)
    assert waited is not None and 0 <= waited < 10
    assert queue_wait_s() is None


def test_with_a_queue_wait_limit_busy_means_calls_wait_not_calls_in_progress() -> None:
    from services._common.shedding import Shedder

    # The display: as many calls in progress as threads, so a few phones at once never cost a
    # Show its reasons; calls waiting half the limit for a thread do.
    shedder = Shedder(8, secondary_limit=8, max_queue_wait_s=0.25)
    assert not shedder.busy()
    shedder.recent_wait_s = 0.1
    assert not shedder.busy()
    shedder.recent_wait_s = 0.2
    assert shedder.busy()
    # Without a wait limit, only calls in progress count.
    assert not Shedder(8, secondary_limit=2).busy()
