"""A channel to a target naming several replicas spreads its calls over all of them (the colour
service's headless Service in Kubernetes: deploy/k8s/colour.yaml)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services._common.auth import secure_channel


class CountingHealth(health.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.checks += 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def replicas() -> Iterator[list[tuple[int, CountingHealth]]]:
    running = []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
        servicer = CountingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        running.append((server, port, servicer))
    yield [(port, servicer) for _, port, servicer in running]
    for server, _, _ in running:
        server.stop(None)


def test_calls_to_a_target_of_several_replicas_reach_every_replica(
    replicas: list[tuple[int, CountingHealth]],
) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in replicas)
    with secure_channel(target, None) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(20):
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
    counts = [servicer.checks for _, servicer in replicas]
    assert sum(counts) == 20
    assert min(counts) > 0, counts  # the first address alone (pick_first) would take all 20


def test_a_single_address_is_left_to_grpcs_default(
    replicas: list[tuple[int, CountingHealth]],
) -> None:
    port, servicer = replicas[0]
    with secure_channel(f"127.0.0.1:{port}", None) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert servicer.checks == 1
