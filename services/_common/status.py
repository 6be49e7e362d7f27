"""The one table that turns domain errors into gRPC status codes with rich details.

Servicer methods wear `@grpc_errors`, which aborts the call with the status the table gives
and the `google.rpc` details a client can act on: `BadRequest` field violations for bad input,
`PreconditionFailure`, `QuotaFailure`, and `ErrorInfo` for any error with a `reason`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services._common.deadline import reset_deadline, set_deadline
from services._common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

logger = logging.getLogger(__name__)

# A gRPC message carries at most a few KiB of trailers comfortably; a 50,000-row batch may have
# 50,000 bad rows, so the detail lists the first ones and says how many were left out.
MAX_VIOLATIONS = 100

# ErrorInfo.domain: the platform's errors share one namespace of reasons.
ERROR_DOMAIN = "healthcode.v1"

# The one table: domain error -> (gRPC status, google.rpc code). Order matters only for
# subclasses, and none of these subclass each other.
_STATUS: dict[type[DomainError], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
}


def status_code_of(error: DomainError) -> grpc.StatusCode:
    """The gRPC status code a domain error maps to (FAILED_PRECONDITION for a bare DomainError)."""
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls][0]
    return grpc.StatusCode.FAILED_PRECONDITION


def to_status(error: DomainError) -> grpc.Status:
    """The rich status (code, message, google.rpc details) for a domain error."""
    code = code_pb2.FAILED_PRECONDITION
    for cls in type(error).__mro__:
        if cls in _STATUS:
            code = _STATUS[cls][1]
            break
    details: list[message.Message] = []
    if error.reason:
        details.append(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    detail: Any = None
    if isinstance(error, InvalidArgument):
        shown = error.violations[:MAX_VIOLATIONS]
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in shown
            ]
        )
        if len(error.violations) > MAX_VIOLATIONS:
            left = len(error.violations) - MAX_VIOLATIONS
            detail.field_violations.add(field="", description=f"{left} more violations left out")
    elif isinstance(error, FailedPrecondition) and error.violations:
        detail = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(type=t, subject=s, description=d)
                for t, s, d in error.violations
            ]
        )
    elif isinstance(error, ResourceExhausted) and error.violations:
        detail = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                for s, d in error.violations
            ]
        )
    if detail is not None:
        details.append(detail)
    if isinstance(error, Overloaded):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(round(error.retry_after_s * 1000))
        details.append(retry)
    status = status_pb2.Status(code=code, message=error.message)
    for d in details:
        packed = any_pb2.Any()
        packed.Pack(d)
        status.details.append(packed)
    return rpc_status.to_status(status)


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Decorate a servicer method (unary or streaming) so a `DomainError` aborts the call with
    its mapped status. `context.abort_with_status` raises, ending the handler (or the stream)."""

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except DomainError as error:
                _abort(context, error, method.__qualname__)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        # Waits inside the handler end with the caller's deadline (services/_common/deadline).
        token = set_deadline(context.time_remaining())
        try:
            return method(self, request, context)
        except DomainError as error:
            _abort(context, error, method.__qualname__)
        finally:
            reset_deadline(token)

    return unary_wrapper  # type: ignore[return-value]


def _abort(context: grpc.ServicerContext, error: DomainError, where: str) -> None:
    code = status_code_of(error)
    # Messages are built to be safe (no raw numbers), so they can be logged as they are.
    logger.info("%s refused: %s %s", where, code.name, error.message)
    context.abort_with_status(to_status(error))


def details_of(error: grpc.RpcError) -> list[Any]:
    """The unpacked `google.rpc` details of a failed call (BadRequest, PreconditionFailure, ...)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[Any] = []
    for packed in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.QuotaFailure,
            error_details_pb2.ErrorInfo,
        ):
            if packed.Is(cls.DESCRIPTOR):
                detail = cls()
                packed.Unpack(detail)
                out.append(detail)
    return out


def retry_after_s(error: grpc.RpcError) -> float | None:
    """How long a shedding service asked the caller to wait (google.rpc.RetryInfo), or None
    when the call did not fail for that."""
    if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            return float(retry.retry_delay.ToMilliseconds()) / 1000
    return None


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of a failed call's BadRequest detail, for clients/tests."""
    return [
        (v.field, v.description)
        for d in details_of(error)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


def reason_of(error: grpc.RpcError) -> str:
    """The `google.rpc.ErrorInfo` reason of a failed call ("TOKEN_EXPIRED"), or ""."""
    for d in details_of(error):
        if isinstance(d, error_details_pb2.ErrorInfo):
            return str(d.reason)
    return ""
