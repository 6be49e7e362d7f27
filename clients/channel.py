"""Channels to the platform's services, with a default deadline on every unary call, and the
text of a failed call as a person should read it.

    peers = Peers.from_env()
    with open_channel(peers.display) as channel:
        stub = display_pb2_grpc.DisplayServiceStub(channel)
        stub.Show(request)                 # times out after DEFAULT_TIMEOUT_S unless told

A call without a deadline waits forever when a peer hangs; streams (WatchCounters, WatchIndex,
EvaluateStream) are long-lived by design and get none.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DEFAULT_TIMEOUT_S = 10.0

# Index snapshots and big batches exceed gRPC's 4 MiB default.
_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


@dataclass(frozen=True, slots=True)
class Peers:
    """Where the four services are ("host:port")."""

    declaration: str = "127.0.0.1:50051"
    risk_index: str = "127.0.0.1:50052"
    colour: str = "127.0.0.1:50053"
    display: str = "127.0.0.1:50054"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Peers:
        """The same variables the services read (HEALTHCODE_<SERVICE>_ADDR, else _PORT)."""
        env = os.environ if env is None else env

        def addr(name: str, default_port: int) -> str:
            explicit = env.get(f"HEALTHCODE_{name}_ADDR", "").strip()
            if explicit:
                return explicit
            port = env.get(f"HEALTHCODE_{name}_PORT", "").strip() or str(default_port)
            return f"127.0.0.1:{port}"

        return cls(
            declaration=addr("DECLARATION", 50051),
            risk_index=addr("RISK_INDEX", 50052),
            colour=addr("COLOUR", 50053),
            display=addr("DISPLAY", 50054),
        )

    def items(self) -> list[tuple[str, str]]:
        return [
            ("declaration", self.declaration),
            ("risk_index", self.risk_index),
            ("colour", self.colour),
            ("display", self.display),
        ]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Give unary-response calls a deadline when the caller set none."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return _CallDetails(  # type: ignore[return-value]
            details.method,
            self._timeout,
            details.metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def open_channel(target: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> grpc.Channel:
    """An insecure channel to `target` (loopback / inside the cluster) with a default deadline
    on unary calls. Use as a context manager, or close it."""
    channel = grpc.insecure_channel(target, options=_OPTIONS)
    return grpc.intercept_channel(channel, _DefaultDeadline(timeout_s))


def describe_error(error: grpc.RpcError) -> str:
    """What went wrong, for a person: status, message and every rich detail (which field to
    fix, which precondition failed, why a code was refused)."""
    if not isinstance(error, grpc.Call):
        return str(error)
    code = error.code()
    lines = [f"{code.name}: {error.details() or ''}".rstrip(": ")]
    if code == grpc.StatusCode.UNAVAILABLE:
        lines.append("  (is the service running? `healthcode status` checks all four)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        lines.append("  (the service did not answer in time; --timeout raises the limit)")
    status = rpc_status.from_call(error)
    if status is None:
        return "\n".join(lines)
    for packed in status.details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            for v in bad.field_violations:
                lines.append(
                    f"  - {v.field}: {v.description}" if v.field else f"  - {v.description}"
                )
        elif packed.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            packed.Unpack(failure)
            for p in failure.violations:
                lines.append(f"  - {p.subject}: {p.description}")
        elif packed.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            packed.Unpack(quota)
            for q in quota.violations:
                lines.append(f"  - {q.subject}: {q.description}")
        elif packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            lines.append(f"  reason: {info.reason}")
    return "\n".join(lines)


def error_reason(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call ("TOKEN_EXPIRED"), or ""."""
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is None:
        return ""
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    return ""
