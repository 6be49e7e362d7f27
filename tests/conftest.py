"""Fixtures every folder of tests may use. The objects behind them (the secret, the clock, a
served server) are in tests/support.py, so module-level code can import them too."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import grpc
import pytest

from tests.support import Clock, Served, StartServer


@pytest.fixture
def clock() -> Clock:
    """The wall clock, which the test may move. A module that needs a fixed day or hour
    overrides this fixture with `Clock(start)`."""
    return Clock()


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """`start_server(add_servicers, service_names, port=0, max_workers=16)` starts an in-process
    server on a free loopback port and returns it with a channel (`Served`); every server
    started so is stopped after the test, the last first, even if the test's setup failed half
    way. A fixture that must stop a server before closing something else calls `close()`
    itself."""
    started: list[Served] = []

    def start(
        add_servicers: Callable[[grpc.Server], None],
        service_names: Sequence[str],
        *,
        port: int = 0,
        max_workers: int = 16,
    ) -> Served:
        served = Served.start(add_servicers, service_names, port=port, max_workers=max_workers)
        started.append(served)
        return served

    yield start
    for served in reversed(started):
        served.close()
