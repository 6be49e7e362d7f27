"""The four real service processes on free loopback ports, one stack per test.

Each stack has its own data directory (so its own secret, databases and signing key), is waited
for until every service answers gRPC health SERVING, and is stopped with SIGTERM at the end; a
service that does not exit cleanly fails the test, with the end of its log.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from clients.stack import Stack, StackError
from tests import pg

HERE = Path(__file__).parent

# The modules whose stacks run once per storage backend (docs/storage.md): the tests that
# exercise storage. The others run on SQLite only, to keep the suite's time.
STORAGE_MODULES = {
    "test_e2e_journey",
    "test_e2e_restart",
    "test_e2e_import",
    "test_e2e_printed_cards",
    "test_e2e_overrides",
    "test_e2e_display_replica",
    "test_e2e_mandates",
    "test_e2e_consent",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A storage module's `stack` / `module_stack` tests run on SQLite and on PostgreSQL."""
    if metafunc.module.__name__.rsplit(".", 1)[-1] not in STORAGE_MODULES:
        return
    if "module_stack" in metafunc.fixturenames:
        metafunc.parametrize("storage", ["sqlite", "postgresql"], indirect=True, scope="module")
    elif "stack" in metafunc.fixturenames:
        metafunc.parametrize("storage", ["sqlite", "postgresql"], indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is `e2e` (real processes), so `pytest -m "not e2e"` runs the
    rest; marked here, before `-m` deselects, so a new file cannot forget it."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def storage(request: pytest.FixtureRequest) -> str:
    """The stack's storage backend: sqlite, or postgresql in the modules that run on both."""
    return str(getattr(request, "param", "sqlite"))


def storage_env(storage: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables that put a stack on `storage`: PostgreSQL gets a fresh database of the
    session's cluster (tests/pg.py), so each stack starts empty."""
    if storage == "sqlite":
        return {}
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    return {"HEALTHCODE_STORAGE": "postgresql", "HEALTHCODE_POSTGRES_DSN": cluster.new_database()}


@pytest.fixture
def stack(tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from _running_stack(tmp_path / "data", storage_env(storage, request))


@pytest.fixture(scope="module")
def module_stack(
    tmp_path_factory: pytest.TempPathFactory, storage: str, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """One stack shared by the tests of a module (they use distinct people): starting four
    processes costs more than most tests."""
    yield from _running_stack(
        tmp_path_factory.mktemp("stack") / "data", storage_env(storage, request)
    )


def _running_stack(data_dir: Path, extra: Mapping[str, str] | None = None) -> Iterator[Stack]:
    s = Stack.on_free_ports(
        data_dir,
        {
            # Fast reconnects: a test should not sit in a 5 s backoff after a hiccup.
            "HEALTHCODE_COLOUR_RECONNECT_MAX_S": "0.5",
            # Feed freshness is re-read every second, not every 30.
            "HEALTHCODE_COLOUR_FRESHNESS_S": "1",
            "HEALTHCODE_LOG_LEVEL": "INFO",
            **(extra or {}),
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
