"""What the tests share: one secret, one clock, one way to serve on a free loopback port, one
way to run the real stack, one bounded wait. Fixtures built on these are in tests/conftest.py
(and tests/e2e/conftest.py); import the rest from here (`from tests.support import SECRET,
Clock`)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.stack import Stack, StackError
from services._common.identifiers import Identifiers
from services._common.server import create_server, stop
from services.risk_index.logic import RiskIndex
from services.risk_index.repository import RiskIndexRepository

# The platform secret of in-process tests (the e2e stacks make their own in their data
# directory): person and phone keys, index snapshots and identifiers all derive from it.
# (No `Hasher` here: loading the conftest should not need the native module.)
SECRET = bytes(range(32))


class Clock:
    """A clock a test holds and moves: fixed at `start`, or without one the wall clock shifted by
    what the test has moved it. Calling it gives an aware datetime (what `now=` and `clock=`
    take); `ms()` gives Unix milliseconds (what `clock_ms=` takes)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("a test clock tells aware times")
        self._start = start
        self._moved = dt.timedelta()

    def __call__(self) -> dt.datetime:
        base = self._start if self._start is not None else dt.datetime.now(dt.UTC)
        return base + self._moved

    def ms(self) -> int:
        return int(self().timestamp() * 1000)

    def advance(self, delta: dt.timedelta) -> None:
        self._moved += delta

    def set(self, when: dt.datetime) -> None:
        """Jump to `when` (a fixed clock only: the wall clock is moved by `advance`)."""
        if self._start is None:
            raise ValueError("a wall clock is moved by advance(), not set()")
        self._moved = when - self._start


@dataclass
class Served:
    """A started in-process server on a free loopback port, with a channel to it."""

    server: grpc.Server
    port: int
    channel: grpc.Channel
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        add_servicers: Callable[[grpc.Server], None],
        service_names: Sequence[str],
        *,
        port: int = 0,
        max_workers: int = 16,
    ) -> Served:
        """`create_server` as the services call it (port 0: a free one; a port: a restart on the
        same address), and an insecure channel to it."""
        server, bound = create_server(
            add_servicers, service_names, port=port, max_workers=max_workers
        )
        return cls(server, bound, grpc.insecure_channel(f"127.0.0.1:{bound}"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        """Close the channel and stop the server at once (no grace). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.channel.close()
        stop(self.server, grace=None)


class StartServer(Protocol):
    """The `start_server` fixture (tests/conftest.py): `Served.start`, stopped after the test."""

    def __call__(
        self,
        add_servicers: Callable[[grpc.Server], None],
        service_names: Sequence[str],
        *,
        port: int = 0,
        max_workers: int = 16,
    ) -> Served: ...


# What a test stack runs with unless a test says otherwise.
STACK_ENV = {
    # Fast reconnects: a test should not sit in a 5 s backoff after a hiccup.
    "HEALTHCODE_COLOUR_RECONNECT_MAX_S": "0.5",
    # Feed freshness is re-read every second, not every 30.
    "HEALTHCODE_COLOUR_FRESHNESS_S": "1",
    "HEALTHCODE_LOG_LEVEL": "INFO",
}


def running_stack(data_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """The body of a stack fixture: the services (and the gateway) as real processes on free
    loopback ports with STACK_ENV and `env` over it, yielded once every one is healthy, then
    stopped with SIGTERM; a service that does not exit cleanly fails the test, with the end of
    its log. A test may stop the stack itself (to read what it left): the codes are the same."""
    s = Stack.on_free_ports(data_dir, {**STACK_ENV, **(env or {})})
    s.start()
    try:
        try:
            # A fresh risk index is at version 0 and publishes version 1 on the first change;
            # the tests wait for the versions they need.
            s.wait_healthy(timeout_s=60)
        except StackError as e:
            pytest.fail(str(e))
        yield s
    finally:
        codes = s.stop()
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        tails = "\n".join(f"--- {n}:\n{s.log_tail(n)}" for n in unclean)
        pytest.fail(f"services did not stop cleanly on SIGTERM: {unclean}\n{tails}")


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll until `predicate` holds; fail naming `what` after `timeout_s` (a bound on waiting for
    background work, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:.0f} s waiting until {what}")
        time.sleep(0.02)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str] | None:
    """(code, message, ErrorInfo reason) of a refused call; None if it succeeded."""
    try:
        call()
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        reason = ""
        status = rpc_status.from_call(e)
        for packed in status.details if status is not None else []:
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                packed.Unpack(info)
                reason = info.reason
        return e.code(), e.details() or "", reason
    return None


def risk_index_in(directory: Path, **options: Any) -> RiskIndex:
    """The real risk index logic over a SQLite file in `directory`, keyed with SECRET;
    `options` are RiskIndex's own (a clock, a publish interval, a snapshot path...)."""
    return RiskIndex(
        RiskIndexRepository(directory / "ri.sqlite3"),
        Identifiers.from_secret(SECRET),
        SECRET,
        **options,
    )
