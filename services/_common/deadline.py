"""The deadline of the call a thread is handling, so a wait inside the domain (for an index
version, for a person just registered) ends when the caller stops waiting, not later.

`status.grpc_errors` sets it around every unary handler from `context.time_remaining()`;
`bounded(timeout_s)` is the wait to use: the smaller of the two. Outside a call (tests calling
the logic directly, background threads) there is no deadline and `timeout_s` stands.

A wait that outlived its caller held a server thread for nothing: a few such calls at once made
a service shed load (found by the fuzzing, issue 10).
"""

from __future__ import annotations

import contextvars
import time

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def set_deadline(remaining_s: float | None) -> contextvars.Token[float | None]:
    """The current call ends in `remaining_s` (None: no deadline). Reset with the token."""
    return _DEADLINE.set(None if remaining_s is None else time.monotonic() + remaining_s)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _DEADLINE.reset(token)


def bounded(timeout_s: float) -> float:
    """`timeout_s`, or less if the current call's deadline comes sooner (never below 0)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout_s
    return max(0.0, min(timeout_s, deadline - time.monotonic()))
