"""The four real service processes on free loopback ports, one stack per test.

Each stack has its own data directory (so its own secret, databases and signing key), is waited
for until every service answers gRPC health SERVING, and is stopped with SIGTERM at the end; a
service that does not exit cleanly fails the test, with the end of its log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.stack import Stack
from tests import pg
from tests.support import running_stack

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
    yield from running_stack(tmp_path / "data", storage_env(storage, request))


@pytest.fixture(scope="module")
def module_stack(
    tmp_path_factory: pytest.TempPathFactory, storage: str, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """One stack shared by the tests of a module (they use distinct people): starting four
    processes costs more than most tests."""
    yield from running_stack(
        tmp_path_factory.mktemp("stack") / "data", storage_env(storage, request)
    )
