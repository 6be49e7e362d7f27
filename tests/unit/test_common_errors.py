"""The one mapping from domain errors to gRPC status codes and rich details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services._common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services._common.status import MAX_VIOLATIONS, grpc_errors, status_code_of, to_status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument([("f", "d")]), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_error_has_its_code(error: Exception, code: grpc.StatusCode) -> None:
    assert status_code_of(error) == code  # type: ignore[arg-type]
    assert to_status(error).code == code  # type: ignore[arg-type]


def _details(status: grpc.Status) -> status_pb2.Status:
    [value] = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(value)


def test_invalid_argument_carries_field_violations() -> None:
    error = InvalidArgument([("rows[17].id_number", "check digit should be 3"), ("source", "x")])
    assert "rows[17].id_number: check digit should be 3" in error.message
    status = _details(to_status(error))
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == error.violations


def test_violations_are_capped_and_the_rest_counted() -> None:
    error = InvalidArgument([(f"rows[{i}].day", "bad") for i in range(MAX_VIOLATIONS + 5)])
    bad = error_details_pb2.BadRequest()
    _details(to_status(error)).details[0].Unpack(bad)
    assert len(bad.field_violations) == MAX_VIOLATIONS + 1
    assert bad.field_violations[-1].description == "5 more violations left out"


def test_precondition_and_quota_details() -> None:
    pre = error_details_pb2.PreconditionFailure()
    _details(to_status(FailedPrecondition("m", [("T", "s", "d")]))).details[0].Unpack(pre)
    assert (pre.violations[0].type, pre.violations[0].subject) == ("T", "s")
    quota = error_details_pb2.QuotaFailure()
    _details(to_status(ResourceExhausted("m", [("rows", "too many")]))).details[0].Unpack(quota)
    assert quota.violations[0].description == "too many"


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Aborted

    def time_remaining(self) -> float | None:
        return None  # a call without a deadline


class _Servicer:
    @grpc_errors
    def Unary(self, request: int, context: object) -> int:
        if request < 0:
            raise NotFound("negative")
        return request * 2

    @grpc_errors
    def Stream(self, request: int, context: object):  # type: ignore[no-untyped-def]
        yield 1
        raise ResourceExhausted("enough")


def test_decorator_passes_results_and_aborts_on_domain_errors() -> None:
    s, ctx = _Servicer(), _Context()
    assert s.Unary(2, ctx) == 4
    with pytest.raises(_Aborted):
        s.Unary(-1, ctx)
    assert ctx.status is not None and ctx.status.code == grpc.StatusCode.NOT_FOUND
    stream = s.Stream(0, ctx)
    assert next(stream) == 1
    with pytest.raises(_Aborted):
        next(stream)
    assert ctx.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
