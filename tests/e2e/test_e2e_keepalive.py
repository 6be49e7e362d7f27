"""Keepalive on WatchIndex through real processes (issue 12, item 3): every connection to the
risk index goes through a proxy (tests/halfopen.py); the proxy then stops forwarding on all of
them without closing any (half-open: no FIN, no reset). A feed batch sent straight to the risk
index makes a new version. The colour replica must notice its dead stream by keepalive pings,
reconnect through a new connection and install that version: without pings it would wait on
the dead stream for ever (the kernel on both sides still sees an open connection).

Pings every second here (HEALTHCODE_KEEPALIVE_TIME_MS / _TIMEOUT_MS); nothing is timed: the
wait for the version is an upper bound only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import feedgen
from clients.stack import Stack, StackError
from tests.e2e.rules_support import stubs
from tests.e2e.waits import SHANGHAI
from tests.halfopen import HalfOpenProxy

PEOPLE = feedgen.make_population(2, 1214, no_phone_rate=0.0)


@pytest.fixture
def proxied_stack(tmp_path: Path) -> Iterator[tuple[Stack, HalfOpenProxy]]:
    stack = Stack.on_free_ports(tmp_path / "data")
    with HalfOpenProxy(stack.ports["risk_index"]) as proxy:
        stack.extra_env = {
            "HEALTHCODE_COLOUR_RECONNECT_MAX_S": "0.5",
            # Every peer of the risk index (colour, display, the declaration outbox) reaches
            # it through the proxy; the test's own calls go straight to its port.
            "HEALTHCODE_RISK_INDEX_ADDR": f"127.0.0.1:{proxy.port}",
            "HEALTHCODE_KEEPALIVE_TIME_MS": "1000",
            "HEALTHCODE_KEEPALIVE_TIMEOUT_MS": "1000",
        }
        stack.start()
        try:
            try:
                stack.wait_healthy(timeout_s=60)
            except StackError as e:
                pytest.fail(str(e))
            yield stack, proxy
        finally:
            codes = stack.stop()
        assert all(code == 0 for code in codes.values()), codes


def test_a_half_open_watch_index_is_noticed_and_the_replica_catches_up(
    proxied_stack: tuple[Stack, HalfOpenProxy],
) -> None:
    stack, proxy = proxied_stack
    day = dt.datetime.now(SHANGHAI).date()
    with stubs(stack) as s:
        s.register(PEOPLE)
        s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
        before = s.wait_colour()
        opened = proxy.accepted
        assert proxy.freeze() >= 1  # the colour replica's WatchIndex among them

        after = s.ingest(
            [feedgen.row("close_contact", id_number=PEOPLE[0].id_number, day=day)], "half-open"
        )
        assert after > before
        # Only a reconnection can bring this version: the old connection forwards nothing.
        assert s.wait_colour(after) == after
        assert proxy.accepted > opened
        verdict = s.evaluate(PEOPLE[0].id_number)
        assert verdict.index_version >= after
