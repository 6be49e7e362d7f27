"""Ask a service's plain-text health port whether it serves: the probe of compose.yaml and k8s/.

    python /app/deploy/healthcheck.py colour            # ready: exit 0 only on SERVING
    python /app/deploy/healthcheck.py colour --alive    # alive: any answer, even NOT_SERVING

The port is the one the service itself opens, `HEALTHCODE_<SERVICE>_HEALTH_PORT` (the probe runs
in the service's container and sees the same environment), or `--port`. The health port speaks
plain text and serves only grpc.health.v1 (docs/security.md), so no certificate is needed.

Why two modes: a colour or display replica says NOT_SERVING until it holds an index, and stays so
while the risk index is down and it has no snapshot. That replica is healthy, only not ready: a
liveness probe that restarted it would throw away the index download in progress. `--alive`
passes when the process answers at all (SERVING or NOT_SERVING) and fails when nothing answers
in time (the process is gone, wedged, or never bound its port). `grpc_health_probe` is not in
the image; this uses grpcio-health-checking, which the services already depend on.

Exit status: 0 pass, 1 fail (one line on stderr saying why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("declaration", "risk_index", "colour", "display")


def health_port(service: str, env: Mapping[str, str]) -> int:
    """The health port `service` opens, from the same variable the service reads."""
    name = f"HEALTHCODE_{service.upper()}_HEALTH_PORT"
    raw = env.get(name, "").strip()
    if not raw:
        raise ValueError(f"{name} is not set: the service opens no health port (or pass --port)")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a port number") from None


def check(host: str, port: int, *, alive: bool, timeout_s: float) -> tuple[bool, str]:
    """(passed, what was seen) for one Health/Check of the whole server (service "")."""
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, wait_for_ready=False
            )
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"
            return False, f"{host}:{port}: no answer ({code})"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if alive:
        return True, f"{host}:{port}: alive ({status})"
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{host}:{port}: {status}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("service", choices=SERVICES, help="whose health port to ask")
    parser.add_argument("--port", type=int, help="instead of HEALTHCODE_<SERVICE>_HEALTH_PORT")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--alive", action="store_true", help="pass on NOT_SERVING too")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    try:
        port = (
            args.port
            if args.port is not None
            else health_port(args.service, os.environ if env is None else env)
        )
    except ValueError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 2
    passed, seen = check(args.host, port, alive=args.alive, timeout_s=args.timeout)
    print(f"healthcheck {args.service}: {seen}", file=sys.stdout if passed else sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
