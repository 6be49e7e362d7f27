"""Locust users for DisplayService, for those who prefer locust to `healthcode load`.

    locust -f bench/locustfile.py --headless -u 64 -r 16 -t 60s --host 127.0.0.1:50054 ShowUser
    locust -f bench/locustfile.py --host 127.0.0.1:50054           # the web UI, both users

- `ShowUser`: the holder shows their code (DisplayService.Show), back to back.
- `ScanUser`: shows a code, then a verifier scans that token (DisplayService.Scan); both calls
  are timed, each under its own name.

Each gRPC call is timed here and reported through locust's events API (`events.request`), so
locust's tables, charts and `--csv` files show them like HTTP requests; a failed call is a
failure with its status code. Locust's users are a closed loop (a user waits for its answer
before the next call): for a fixed rate and latency from the scheduled send, use `healthcode
load --rate`. The echo server (bench/echo_server.py) answers the same two RPCs.

The host is `host:port` (default HEALTHCODE_DISPLAY_ADDR, else 127.0.0.1:50054). People, as
`healthcode load` chooses them: HEALTHCODE_LOAD_PEOPLE_FILE (a people file, as `healthcode
seed` writes), else the synthetic city of HEALTHCODE_LOAD_CITY people and seed
HEALTHCODE_LOAD_SEED (1); HEALTHCODE_LOAD_SAMPLE (1,000) of them. The display is reached with
the CLI's credentials (HEALTHCODE_DATA_DIR of the platform); the echo server with
HEALTHCODE_INSECURE=1.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

# Locust runs users as gevent greenlets: grpcio must cooperate with gevent before any channel
# is made, or one blocking call stalls every user of the process.
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, task

grpc_gevent.init_gevent()

from healthcode.v1 import common_pb2, display_pb2, display_pb2_grpc

from clients import load
from clients.channel import open_channel
from services._common.config import Peers

TIMEOUT_S = 10.0


@cache
def people() -> list[str]:
    """The people to show, chosen once per locust process."""
    sample = int(os.environ.get("HEALTHCODE_LOAD_SAMPLE", "1000"))
    seed = int(os.environ.get("HEALTHCODE_LOAD_SEED", "1"))
    people_file = os.environ.get("HEALTHCODE_LOAD_PEOPLE_FILE")
    if people_file:
        return load.people_from_file(Path(people_file), sample, seed)
    city = int(os.environ.get("HEALTHCODE_LOAD_CITY", str(sample)))
    return load.people_from_city(min(sample, city), city, seed)


class _DisplayUser(User):
    abstract = True
    host = Peers.from_env().display
    wait_time = constant(0)

    def on_start(self) -> None:
        # Mutual TLS and a bearer token per call, as the CLI (clients/credentials.py:
        # HEALTHCODE_DATA_DIR or HEALTHCODE_CREDENTIALS); HEALTHCODE_INSECURE=1 for the echo
        # server, which speaks plain text.
        self.channel = open_channel(self.host or Peers.from_env().display, timeout_s=TIMEOUT_S)
        self.stub = display_pb2_grpc.DisplayServiceStub(self.channel)
        self.rng = random.Random()
        self.device = display_pb2.Device(device_id=f"locust-{id(self)}", place="locust")
        self.verifier = common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_VERIFIER, principal=f"locust-gate-{id(self)}"
        )

    def on_stop(self) -> None:
        self.channel.close()

    def timed(self, name: str, call: Callable[[], Any]) -> Any:
        """Make one call and report it to locust; the reply, or None when it failed."""
        started = time.perf_counter()
        reply = None
        error: Exception | None = None
        try:
            reply = call()
        except grpc.RpcError as e:
            code = e.code().name if isinstance(e, grpc.Call) else "RPC_ERROR"
            error = RuntimeError(code)
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=reply.ByteSize() if reply is not None else 0,
            exception=error,
            context={},
        )
        return reply

    def show(self) -> display_pb2.ShowResponse | None:
        request = load.show_request(self.rng.choice(people()), self.device)
        reply: display_pb2.ShowResponse | None = self.timed(
            "DisplayService.Show", lambda: self.stub.Show(request, timeout=TIMEOUT_S)
        )
        return reply


class ShowUser(_DisplayUser):
    """A holder showing their code, again and again."""

    @task
    def show_code(self) -> None:
        self.show()


class ScanUser(_DisplayUser):
    """A holder shows a code and a verifier scans it at once."""

    @task
    def show_and_scan(self) -> None:
        shown = self.show()
        if shown is None:
            return
        request = display_pb2.ScanRequest(
            actor=self.verifier, token=shown.token, device=self.device
        )
        self.timed("DisplayService.Scan", lambda: self.stub.Scan(request, timeout=TIMEOUT_S))
