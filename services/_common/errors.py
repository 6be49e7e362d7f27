"""Domain errors: what logic raises when it refuses a request. No gRPC here.

`services._common.status` turns each into a gRPC status code with rich details (`BadRequest`
field violations for bad input, so a client knows exactly what to fix; `ErrorInfo` for an error
with a machine-readable `reason`).

    >>> raise InvalidArgument([("rows[17].id_number", "check digit should be 3")])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class DomainError(Exception):
    """A request the domain refuses. `message` is safe to show: it never holds a raw number.
    `reason`, where set, is the machine-readable cause a client software acts on
    ("TOKEN_EXPIRED"); it travels as `google.rpc.ErrorInfo`."""

    reason: ClassVar[str] = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """Bad input. `violations` are (field path, what to fix), e.g.
    ("rows[17].id_number", "check digit should be 3")."""

    def __init__(self, violations: Sequence[tuple[str, str]], message: str | None = None) -> None:
        self.violations = list(violations)
        if message is None:
            shown = "; ".join(f"{f}: {d}" for f, d in self.violations[:3])
            more = len(self.violations) - 3
            message = shown + (f" (and {more} more)" if more > 0 else "")
        super().__init__(message or "invalid argument")


class NotFound(DomainError):
    """The named thing does not exist (a person not registered, an unknown batch)."""


class AlreadyExists(DomainError):
    """The thing exists and the request would contradict it (a batch id reused for other rows)."""


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this now (a second declaration the same day).
    `violations` are (type, subject, description), as in `google.rpc.PreconditionFailure`."""

    def __init__(self, message: str, violations: Sequence[tuple[str, str, str]] = ()) -> None:
        super().__init__(message)
        self.violations = list(violations)


class ResourceExhausted(DomainError):
    """Too much at once (an oversized batch). `violations` are (subject, description), as in
    `google.rpc.QuotaFailure`."""

    def __init__(self, message: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.violations = list(violations)


class Overloaded(ResourceExhausted):
    """The service is shedding load: try again after `retry_after_s` (google.rpc.RetryInfo)."""

    reason = "OVERLOADED"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermissionDenied(DomainError):
    """The caller's role may not do this."""


class Unauthenticated(DomainError):
    """The credential (a code token) is forged or unreadable."""


class Unavailable(DomainError):
    """A peer or resource is briefly unavailable; retrying later may succeed."""
