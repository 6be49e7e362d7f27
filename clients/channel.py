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

from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc
from google.rpc import error_details_pb2

from clients.credentials import BearerTokens, CallDetails, ClientCredentials, for_target
from services._common.config import RECONNECT_OPTIONS, Peers
from services._common.status import details_of

DEFAULT_TIMEOUT_S = 10.0

# Index snapshots and big batches exceed gRPC's 4 MiB default. A service that was down is
# retried within a second of its return (RECONNECT_OPTIONS).
_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    *RECONNECT_OPTIONS,
]


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Give unary-response calls a deadline when the caller set none."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return CallDetails.of(details, timeout=self._timeout)

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


def open_channel(
    target: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    credentials: ClientCredentials | None | Literal["auto"] = "auto",
    options: list[tuple[str, int | str]] | None = None,
) -> grpc.Channel:
    """A channel to `target` with a default deadline on unary calls: mutual TLS with the
    client's certificate and a bearer token on every call (clients/credentials.py; "auto": a
    stack started in this process, else the environment), or plain text for an insecure
    development stack (`credentials=None`). Use as a context manager, or close it."""
    creds = for_target(target) if credentials == "auto" else credentials
    opts = [*(options or []), *_OPTIONS]  # grpc takes the first of two same-named options
    if creds is None:
        channel = grpc.insecure_channel(target, options=opts)
        return grpc.intercept_channel(channel, _DefaultDeadline(timeout_s))
    channel = grpc.secure_channel(target, creds.channel_credentials(), options=opts)
    return grpc.intercept_channel(channel, _DefaultDeadline(timeout_s), BearerTokens(creds))


def describe_error(error: grpc.RpcError) -> str:
    """What went wrong, for a person: status, message and every rich detail (which field to
    fix, which precondition failed, why a code was refused)."""
    if not isinstance(error, grpc.Call):
        return str(error)
    code = error.code()
    lines = [f"{code.name}: {error.details() or ''}".rstrip(": ")]
    if code == grpc.StatusCode.UNAVAILABLE:
        lines.append("  (is the service running? `healthcode status` checks all four)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append("  (sign in again, or check HEALTHCODE_CREDENTIALS / HEALTHCODE_TOKEN)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        lines.append("  (the service did not answer in time; --timeout raises the limit)")
    for detail in details_of(error):
        if isinstance(detail, error_details_pb2.BadRequest):
            lines.extend(
                f"  - {v.field}: {v.description}" if v.field else f"  - {v.description}"
                for v in detail.field_violations
            )
        elif isinstance(
            detail, error_details_pb2.PreconditionFailure | error_details_pb2.QuotaFailure
        ):
            lines.extend(f"  - {v.subject}: {v.description}" for v in detail.violations)
        elif isinstance(detail, error_details_pb2.ErrorInfo):
            lines.append(f"  reason: {detail.reason}")
    return "\n".join(lines)


__all__ = ["DEFAULT_TIMEOUT_S", "Peers", "describe_error", "open_channel"]
