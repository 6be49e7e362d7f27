"""A bare grpcio server answering DisplayService.Show and Scan with a fixed reply: the baseline
`make bench` compares the real display service against (issue 9).

    python -m bench.echo_server                       # 127.0.0.1:50059, one process
    python -m bench.echo_server --port 0 --procs 2    # a free port, two processes on it
    healthcode load --target echo --rate 500          # the same generator code path as Show

Same framework as the services (services/_common/server.py): a synchronous `grpc.server` with a
16-thread pool, the same message-size options, the library health servicer; no tracing
interceptor, no work, nothing logged. The replies are the size of a real Show (a verdict with a
rule-set version, a person key, masked name and ID number, a 155-character token) and Scan.
Every other RPC of DisplayService is UNIMPLEMENTED.

With `--procs N` N processes serve one port, each with its own listener bound with
SO_REUSEPORT (the option `grpc.so_reuseport`), so the kernel spreads connections among them, as
grpc's examples/python/multiprocessing does. It prints one line when every process serves,
`echo server on HOST:PORT, N processes (pids ...)`, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import base45
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2_grpc
from healthcode.v1 import colour_pb2, common_pb2, display_pb2, display_pb2_grpc

from services._common.auth import Security
from services._common.server import MAX_MESSAGE_BYTES

DEFAULT_PORT = 50059
MAX_WORKERS = 16  # create_server's default, what the services run with
SERVICE_NAME = "healthcode.v1.DisplayService"


def echo_token() -> str:
    """A token of a real one's length: "HCN1:" + base45 of 142 bytes (a COSE_Sign1 message)."""
    return "HCN1:" + base45.b45encode(bytes(range(142))).decode()


def _verdict() -> colour_pb2.Verdict:
    return colour_pb2.Verdict(
        colour=common_pb2.COLOUR_GREEN,
        rule_set_version="default-2021-01",
        index_version=123_456,
        day="2021-01-15",
        hour="2021-01-15 00:00",
        registered=True,
        person_key=bytes(range(16)),
    )


def fixed_show_response() -> display_pb2.ShowResponse:
    issued = Timestamp(seconds=1_610_640_000)
    expires = Timestamp(seconds=1_610_640_060)
    return display_pb2.ShowResponse(
        verdict=_verdict(),
        masked_name="张**",
        masked_id_number="12**************3X",
        token=echo_token(),
        issued_at=issued,
        expires_at=expires,
        display_id=987_654_321,
    )


def fixed_scan_response() -> display_pb2.ScanResponse:
    return display_pb2.ScanResponse(
        verdict=_verdict(),
        masked_name="张**",
        masked_id_number="12**************3X",
        scan_id=987_654_322,
        token_issued_at=Timestamp(seconds=1_610_640_000),
    )


class EchoDisplay(display_pb2_grpc.DisplayServiceServicer):
    """Show and Scan with a reply built once; the request is parsed by grpcio and ignored."""

    def __init__(self) -> None:
        self._show = fixed_show_response()
        self._scan = fixed_scan_response()

    def Show(
        self, request: display_pb2.ShowRequest, context: grpc.ServicerContext
    ) -> display_pb2.ShowResponse:
        return self._show

    def Scan(
        self, request: display_pb2.ScanRequest, context: grpc.ServicerContext
    ) -> display_pb2.ScanResponse:
        return self._scan

    def WatchCounters(
        self, request: display_pb2.WatchCountersRequest, context: grpc.ServicerContext
    ) -> Iterator[display_pb2.WatchCountersResponse]:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("the echo server answers Show and Scan")
        return iter(())

    def GetVerificationKey(
        self, request: display_pb2.GetVerificationKeyRequest, context: grpc.ServicerContext
    ) -> display_pb2.GetVerificationKeyResponse:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("the echo server answers Show and Scan")
        return display_pb2.GetVerificationKeyResponse()


def create_echo_server(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.Server, int]:
    """Build, bind (SO_REUSEPORT) and start one echo server; return it with its bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 1),
        ],
    )
    display_pb2_grpc.add_DisplayServiceServicer_to_server(EchoDisplay(), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # HEALTHCODE_ECHO_CREDENTIALS (a platform credentials directory): mutual TLS, as the
    # display serves, so a comparison counts the same transport; plain text otherwise.
    credentials = os.environ.get("HEALTHCODE_ECHO_CREDENTIALS", "")
    if credentials:
        tls = Security.load(Path(credentials), "display").server_credentials()
        bound = server.add_secure_port(f"{host}:{port}", tls)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    return server, bound


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Hold `port` (0: a free one) with SO_REUSEPORT while the workers bind it too: as grpc's
    multiprocessing example does, so that a free port is chosen once for all of them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _serve(host: str, port: int, ready: Any) -> None:
    """One worker process: serve until SIGTERM (the parent sends it to every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops all
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stopping.set())
    server, _ = create_echo_server(host, port)
    ready.put(os.getpid())
    while not stopping.wait(0.5):
        pass
    server.stop(1.0).wait()


def serve(host: str, port: int, procs: int, out: Any = sys.stdout) -> None:
    """Serve on one port with `procs` processes until SIGTERM or SIGINT."""
    stopping = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handle)
    if procs == 1:
        server, bound = create_echo_server(host, port)
        print(f"echo server on {host}:{bound}, 1 process (pid {os.getpid()})", file=out, flush=True)
        while not stopping.wait(0.5):
            pass
        server.stop(1.0).wait()
        return
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    with reserve_port(host, port) as bound:
        workers = [ctx.Process(target=_serve, args=(host, bound, ready)) for _ in range(procs)]
        try:
            for w in workers:
                w.start()
            deadline = time.monotonic() + 60
            pids: list[int] = []
            while len(pids) < procs:
                try:
                    pids.append(ready.get(timeout=0.5))
                except queue.Empty:
                    failed = any(w.exitcode is not None for w in workers)
                    if stopping.is_set() or failed or time.monotonic() > deadline:
                        raise SystemExit("echo server: a worker did not start") from None
            print(
                f"echo server on {host}:{bound}, {procs} processes "
                f"(pids {' '.join(map(str, sorted(pids)))})",
                file=out,
                flush=True,
            )
            while not stopping.wait(0.5) and all(w.is_alive() for w in workers):
                pass
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()  # SIGTERM: the worker stops its server with a grace period
            for w in workers:
                w.join(timeout=10)
                if w.is_alive():
                    w.kill()
                    w.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: a free port")
    parser.add_argument("--procs", type=int, default=1, help="processes on the one port")
    args = parser.parse_args(argv)
    if not 1 <= args.procs <= 64:
        parser.error("--procs: 1-64")
    serve(args.host, args.port, args.procs)


if __name__ == "__main__":
    main()
