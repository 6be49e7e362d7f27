"""The four real service processes on free loopback ports, one stack per test.

Each stack has its own data directory (so its own secret, databases and signing key), is waited
for until every service answers gRPC health SERVING, and is stopped with SIGTERM at the end; a
service that does not exit cleanly fails the test, with the end of its log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.stack import Stack, StackError

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is `e2e` (real processes), so `pytest -m "not e2e"` runs the
    rest; marked here, before `-m` deselects, so a new file cannot forget it."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from _running_stack(tmp_path / "data")


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack shared by the tests of a module (they use distinct people): starting four
    processes costs more than most tests."""
    yield from _running_stack(tmp_path_factory.mktemp("stack") / "data")


def _running_stack(data_dir: Path) -> Iterator[Stack]:
    s = Stack.on_free_ports(
        data_dir,
        {
            # Fast reconnects: a test should not sit in a 5 s backoff after a hiccup.
            "HEALTHCODE_COLOUR_RECONNECT_MAX_S": "0.5",
            # Feed freshness is re-read every second, not every 30.
            "HEALTHCODE_COLOUR_FRESHNESS_S": "1",
            "HEALTHCODE_LOG_LEVEL": "INFO",
        },
    )
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
