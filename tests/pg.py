"""A throwaway PostgreSQL cluster for the tests: Debian's PostgreSQL 15 (`make postgres-deps`),
`initdb` into a temporary directory, `pg_ctl` on a free loopback port, removed at the end.

PostgreSQL refuses to run as root (CI runs as root): then the cluster runs as the `postgres`
user (`runuser -u postgres --`), its directory owned by that user. Fsync is off: a test cluster
need not survive a power cut, and the suite's time matters.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from services._common.pg import PgPlace, translate

BIN = Path(os.environ.get("HEALTHCODE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "healthcode"


def available() -> str | None:
    """None when a cluster can be started here, else why not."""
    if not (BIN / "initdb").exists():
        return f"{BIN}/initdb is missing: run `make postgres-deps` (Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the cluster as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster: `start()`, `stop()` (and start again: the database-down test), `remove()`."""

    def __init__(self, *, durable: bool = False, settings: Mapping[str, str] | None = None) -> None:
        """`durable`: fsync and synchronous commit on, as a deployment runs (the benchmarks);
        off for the tests, which need no power-cut safety. `settings` go to postgresql.conf
        after ours (a benchmark's memory and checkpoint sizes)."""
        self.directory = Path(tempfile.mkdtemp(prefix="healthcode-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._run(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.directory}'\n"
                + (
                    "shared_buffers = 256MB\n"
                    if durable
                    else "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 32MB\n"
                )
                + "max_connections = 300\n"
                + "".join(f"{name} = {value}\n" for name, value in (settings or {}).items())
            )

    @classmethod
    def reopen(cls, directory: Path) -> Cluster:
        """A cluster this class made earlier and stopped without removing (a benchmark's kept
        city, `bench_city --keep`): its directory, data and port as they were."""
        cluster = cls.__new__(cls)
        cluster.directory = directory
        cluster.data = directory / "data"
        ports = re.findall(
            r"^port = (\d+)$", (cluster.data / "postgresql.conf").read_text(), re.MULTILINE
        )
        if not ports:
            raise RuntimeError(f"{directory} is not a cluster made by tests.pg.Cluster")
        cluster.port = int(ports[-1])
        cluster._as_root = os.geteuid() == 0
        return cluster

    def _run(self, argv: Sequence[str]) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if self._as_root else list(argv)
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, cwd=self.directory
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._run(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"),
             "-w", "-t", "60", "start"]
        )  # fmt: skip

    def stop(self) -> None:
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def remove(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)

    def processes(self) -> tuple[int, list[int]]:
        """The postmaster's pid and its children's now (for a benchmark's memory and CPU)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return postmaster, [int(pid) for pid in children]

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def new_database(self) -> str:
        """A fresh, empty database (one per stack); its DSN."""
        name = f"hc_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def new_schema_name(self) -> str:
        return f"t_{uuid.uuid4().hex[:12]}"


# The `place` fixture (tests/conftest.py): a name -> a SQLite file or a PostgreSQL schema.
Place = Callable[[str], "Path | PgPlace"]


def dump(where: Path | PgPlace) -> str:
    """Every row the storage holds, as text (for "no raw number is stored" checks)."""
    if isinstance(where, Path):
        file = sqlite3.connect(where)
        try:
            return "\n".join(file.iterdump())
        finally:
            file.close()
    lines: list[str] = []
    with psycopg.connect(where.dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (where.schema,)
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(where.schema), sql.Identifier(table)
            )
            # bytea prints as hex, text as it is: what a dump of the database would show.
            lines += [f"{table}: {row[0]}" for row in conn.execute(query)]  # type: ignore[arg-type]
    return "\n".join(lines)


def stack_place(env: Mapping[str, str], sqlite_path: Path, service: str) -> Path | PgPlace:
    """Where a stack's service keeps its tables, from the stack's environment."""
    if env.get("HEALTHCODE_STORAGE") == "postgresql":
        return PgPlace(env["HEALTHCODE_POSTGRES_DSN"], service)
    return sqlite_path


def rows(
    where: Path | PgPlace, statement: str, params: Sequence[object] = ()
) -> list[tuple[Any, ...]]:
    """A query (SQLite's spelling) on either backend, read only; bytea comes back as bytes."""
    if isinstance(where, Path):
        with contextlib.closing(sqlite3.connect(f"file:{where}?mode=ro", uri=True)) as file:
            return file.execute(statement, params).fetchall()
    with psycopg.connect(where.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        return [tuple(r) for r in conn.execute(translate(statement), params or None).fetchall()]  # type: ignore[arg-type]
