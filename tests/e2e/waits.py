"""Bounded waits for the end-to-end tests: poll, and on timeout fail saying what was awaited
and what was last seen (no timing assertions: only an upper bound on waiting)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def eventually(
    what: str, probe: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 30
) -> T:
    """Poll `probe` until `ok`; fail naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_s:.0f} s waiting for {what}; last seen: {value}")
        time.sleep(0.05)


def today() -> str:
    """Today in Asia/Shanghai, as feeds write it."""
    return dt.datetime.now(SHANGHAI).date().isoformat()
