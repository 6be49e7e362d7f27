"""The server factory every service uses: health, reflection, tracing, graceful stop.

`create_server(add_servicers, [SERVICE_NAME], port=0)` returns a started server that reports
SERVING, with its bound port; `serve_forever(server)` blocks until SIGTERM/SIGINT and stops it
with a grace period. Tests call `stop(server, None)` instead.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services._common import metrics
from services._common.auth import Security, process_security
from services._common.config import KEEPALIVE
from services._common.malformed import MalformedRequests
from services._common.pipeline import MethodPipeline
from services._common.shedding import QueueTimedPool, Shedder
from services._common.telemetry import server_interceptor

logger = logging.getLogger(__name__)

# Health servicers by server, so `serve_forever` and `stop` can report NOT_SERVING before the
# listener closes (a load balancer stops routing first, then in-flight calls finish).
_HEALTH: dict[int, health.HealthServicer] = {}
_NAMES: dict[int, list[str]] = {}
# Each server's plain-text health-only server, where one was asked for (`health_port`).
_HEALTH_ONLY: dict[int, grpc.Server] = {}
# Each server's shedder, for status pages and tests (calls in progress, calls shed).
SHEDDERS: dict[int, Shedder] = {}
# Each server's per-method interceptor chain, for tests (the methods whose chain is built).
PIPELINES: dict[int, MethodPipeline] = {}

# 64 MiB: an index snapshot chunk is <= 1 MiB, a 50,000-row batch is a few MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def create_server(
    add_servicers: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    port: int = 0,
    host: str = "127.0.0.1",
    max_workers: int = 16,
    ready: bool = True,
    max_in_flight: int = 0,
    reuse_port: bool = False,
    security: Security | None = None,
    health_port: int | None = None,
    per_method_chain: bool = True,
    max_queue_wait_s: float | None = None,
) -> tuple[grpc.Server, int]:
    """Build, bind and START a server; return it with the bound port (port 0: a free one).

    With `ready=False` health reports NOT_SERVING until `set_serving(server, True)`: a replica
    that cannot answer yet (no index loaded) is not routed to.

    `add_servicers(server)` registers the service's servicers; `service_names` are their full
    names (`healthcode.v1.RiskIndexService`), reported SERVING by the library health servicer
    (with "" for the whole server) and listed by reflection so `buf curl` can call them.

    `reuse_port=True` binds with SO_REUSEPORT (grpc's `grpc.so_reuseport`): the worker
    processes of one service share its port and the kernel spreads connections among them
    (services/_common/workers.py). Otherwise the port is this server's alone: a second process
    started on it fails to bind instead of silently taking half of the connections (grpc
    enables SO_REUSEPORT by default on Linux).

    With `security` (by default what `auth.setup_security` loaded for this process) the port speaks mutual TLS only and every call is authenticated and checked
    against the access table (services/_common/auth.py); without it (in-process tests, an
    explicitly insecure development run) the port is plain text and the body's actor is taken.

    `health_port` (HEALTHCODE_<SERVICE>_HEALTH_PORT) also serves the gRPC health service alone, in plain
    text and without client certificates, for Kubernetes' gRPC probes, which cannot present
    one. It says SERVING or NOT_SERVING and nothing else.

    `per_method_chain=False` lets grpc run every interceptor on every call, as before the chain
    was kept per method (MethodPipeline): for bench/bench_interceptors.py, and to rule the
    cache out when a call behaves oddly.

    Load shedding (services/_common/shedding.py): past `max_in_flight` unary calls in their
    handlers (default three quarters of `max_workers`) a call is refused with RetryInfo, and
    secondary content past a quarter of that; with `max_queue_wait_s`, also a call that waited
    longer for a thread (a secondary one, half as long). grpc refuses at the door past eight
    calls a thread accepted, without RetryInfo.
    """
    if security is None:
        security = process_security()
    shedder = Shedder(
        max_in_flight or max(2, max_workers * 3 // 4), max_queue_wait_s=max_queue_wait_s
    )
    # With metrics on (services/_common/metrics.py), calls are measured first: those the
    # interceptors after refuse are counted with their status.
    measured = metrics.current()
    if measured is not None:
        measured.watch_shedder(shedder)
    # A body that does not parse first: refused (INVALID_ARGUMENT, not grpc's INTERNAL) before
    # it takes a shedder slot or a span, and no interceptor after it ever sees a request that is
    # not its message. Then the shedder: a refused call costs no span. Then who is calling
    # (mutual TLS, bearer tokens, the access table): a refused caller changes nothing and costs
    # no span.
    chain: list[grpc.ServerInterceptor] = [
        *([measured.interceptor()] if measured is not None else []),
        MalformedRequests(),
        shedder,
        *([security.interceptor()] if security is not None else []),
        server_interceptor(),
    ]
    pipeline = MethodPipeline(chain) if per_method_chain else None
    # Only a wait limit needs to know when grpc handed a call over; the plain pool costs less.
    pool = (
        QueueTimedPool(max_workers=max_workers, thread_name_prefix="grpc")
        if max_queue_wait_s is not None
        else futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
    )
    server = grpc.server(
        pool,
        # The chain is built once per method, not once per call (services/_common/pipeline.py).
        interceptors=[pipeline] if pipeline is not None else chain,
        # At the door: calls accepted but not yet given a thread are bounded too.
        maximum_concurrent_rpcs=max_workers * 8,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # Pings on quiet connections: a half-open watcher is noticed and its stream ends
            # (services/_common/config.py Keepalive; clients send pings with the same period).
            *KEEPALIVE.server_options(),
        ],
    )
    add_servicers(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        if security is not None:
            bound = server.add_secure_port(f"{host}:{port}", security.server_credentials())
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpc raises when nothing could be bound (the port is taken)
        bound = 0
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    if health_port is not None:
        _HEALTH_ONLY[id(server)] = _health_only_server(
            health_servicer, host, health_port, reuse_port
        )
    _HEALTH[id(server)] = health_servicer
    SHEDDERS[id(server)] = shedder
    if pipeline is not None:
        PIPELINES[id(server)] = pipeline
    _NAMES[id(server)] = names
    set_serving(server, ready)
    logger.info("serving %s on %s:%d", ", ".join(names), host, bound)
    return server, bound


def set_serving(server: grpc.Server, serving: bool) -> None:
    """Report SERVING or NOT_SERVING for every service of a server created here."""
    health_servicer = _HEALTH.get(id(server))
    if health_servicer is None:
        return
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in [*_NAMES.get(id(server), []), ""]:
        health_servicer.set(name, status)


def stop(
    server: grpc.Server,
    grace: float | None = 5.0,
    before_stop: Callable[[], None] | None = None,
) -> None:
    """Report NOT_SERVING, run `before_stop`, then stop accepting calls and wait up to `grace`
    for those running."""
    health_servicer = _HEALTH.pop(id(server), None)
    _NAMES.pop(id(server), None)
    SHEDDERS.pop(id(server), None)
    PIPELINES.pop(id(server), None)
    if health_servicer is not None:
        health_servicer.enter_graceful_shutdown()
    if before_stop is not None:
        before_stop()
    server.stop(grace).wait()
    health_only = _HEALTH_ONLY.pop(id(server), None)
    if health_only is not None:
        health_only.stop(None).wait()


def _health_only_server(
    health_servicer: health.HealthServicer, host: str, port: int, reuse_port: bool
) -> grpc.Server:
    """The health service alone on `port`, plain text (for probes that present no
    certificate); it shares the main server's statuses."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
        options=[("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"could not bind the health port {host}:{port}")
    server.start()
    logger.info("health alone (plain text, for probes) on %s:%d", host, bound)
    return server


def serve_forever(
    server: grpc.Server,
    grace: float = 5.0,
    on_stop: Callable[[], None] | None = None,
    before_stop: Callable[[], None] | None = None,
    *,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    stop_when: Callable[[], bool] | None = None,
) -> None:
    """Block until SIGTERM or SIGINT, then stop with a grace period. `before_stop` runs once
    health says NOT_SERVING and before the listener closes (end server streams, so they do not
    hold the grace period); `on_stop` runs after (close repositories). Call from the main
    thread.

    A worker process (services/_common/workers.py) passes `signals=(SIGTERM,)`, since its
    parent forwards a Ctrl-C as SIGTERM, and `stop_when` (checked twice a second: its parent
    is gone)."""
    stopping = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s: stopping within %.1fs", signal.Signals(signum).name, grace)
        stopping.set()

    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        # Waiting on an Event in short steps keeps the main thread responsive to signals.
        while not stopping.wait(0.5):
            if stop_when is not None and stop_when():
                logger.info("told to stop: stopping within %.1fs", grace)
                break
        stop(server, grace, before_stop=before_stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if on_stop is not None:
            on_stop()
    logger.info("stopped")
