"""Fixtures every folder of tests may use. The objects behind them (the secret, the clock, a
served server) are in tests/support.py, so module-level code can import them too."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from services._common.places import PgPlace
from tests import pg
from tests.support import Clock, Served, StartServer

# The storage backends the storage tests run on (docs/storage.md).
BACKENDS = ("sqlite", "postgresql")


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    """A throwaway PostgreSQL cluster for the whole session (tests/pg.py), started the first
    time a test asks for it; skips those tests where PostgreSQL is not installed."""
    why = pg.available()
    if why is not None:
        pytest.skip(why)
    cluster = pg.Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def own_pg_cluster() -> Iterator[pg.Cluster]:
    """A cluster of the test's own, for a test that stops it (the database-down tests): the
    session's cluster stays up for everyone else."""
    why = pg.available()
    if why is not None:
        pytest.skip(why)
    cluster = pg.Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def pg_database(pg_cluster: pg.Cluster) -> str:
    """One database of the session cluster for the repository tests (a schema each); its DSN."""
    return pg_cluster.new_database()


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> str:
    """The backend a storage test runs on: each such test runs once per backend."""
    return str(request.param)


@pytest.fixture
def place(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[str], Path | PgPlace]:
    """`place(name)`: where a repository under test keeps its tables on this test's backend: a
    file `name` in the test's directory, or a fresh PostgreSQL schema (the same one for the
    same name within a test, so a test may reopen it)."""
    if storage == "sqlite":
        return lambda name: tmp_path / name
    dsn = request.getfixturevalue("pg_database")
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    schemas: dict[str, str] = {}

    def where(name: str) -> PgPlace:
        return PgPlace(dsn, schemas.setdefault(name, cluster.new_schema_name()))

    return where
