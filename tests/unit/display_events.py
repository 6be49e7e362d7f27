"""Display events as the display service records them (services/display/store.py), for the
tests of the display log on SQLite, across workers and on PostgreSQL."""

from __future__ import annotations

import time

from services.display.store import OK, SCAN, SHOW, DisplayEvent

DAY = 18_612  # 2020-12-16


def show_event(key: bytes, colour: int = 0, day: int = DAY) -> DisplayEvent:
    """A person's code shown on their phone at a gate (masked ID number and name only)."""
    return DisplayEvent(
        SHOW, OK, 1_000, day, key, "phone-1", "gate 2", "12**3X", "张*", "c", colour
    )


def scan_event(key: bytes, token_id: bytes, colour: int = 0) -> DisplayEvent:
    """A verifier's scan of a code token that is still valid (expired token ids are pruned:
    they fail the freshness check anyway)."""
    return DisplayEvent(
        SCAN,
        OK,
        2_000,
        DAY,
        key,
        "scanner-1",
        "bus 632",
        colour=colour,
        token_id=token_id,
        token_expires_at_ms=int(time.time() * 1000) + 60_000,
    )
