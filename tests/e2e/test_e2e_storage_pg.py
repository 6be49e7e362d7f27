"""PostgreSQL under the real services (docs/storage.md): the database goes away and comes back
under a running stack, and display workers share one log (a token accepted once across them,
counters that add up). No timing assertions."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import grpc
import psycopg
import pytest
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from clients import feedgen
from clients.channel import open_channel
from clients.stack import Stack
from tests import pg
from tests.e2e.waits import eventually
from tests.support import running_stack

PEOPLE = feedgen.synthetic_id_numbers(8, 9191)
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-pg")
DEVICE = display_pb2.Device(device_id="phone-pg", place="Tianjin east station")


def _citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


def _register(stub: declaration_pb2_grpc.DeclarationServiceStub, n: int) -> None:
    stub.Register(
        declaration_pb2.RegisterRequest(
            actor=_citizen(PEOPLE[n]), name=f"吴{n}", id_number=PEOPLE[n]
        )
    )


def test_writes_are_refused_while_the_database_is_down_and_resume_after(
    own_pg_cluster: pg.Cluster, tmp_path: Path
) -> None:
    env = {
        "HEALTHCODE_STORAGE": "postgresql",
        "HEALTHCODE_POSTGRES_DSN": own_pg_cluster.new_database(),
    }
    for stack in running_stack(tmp_path / "data", env):
        _down_and_back(stack, own_pg_cluster)
    with psycopg.connect(env["HEALTHCODE_POSTGRES_DSN"]) as conn:
        stored = conn.execute("SELECT count(*) FROM declaration.persons").fetchone()
    assert stored == (2,)  # the refused attempt stored nothing of its own


def _down_and_back(stack: Stack, cluster: pg.Cluster) -> None:
    with (
        open_channel(stack.peers.declaration) as channel,
        open_channel(stack.peers.display) as display_channel,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(channel)
        display = display_pb2_grpc.DisplayServiceStub(display_channel)
        _register(declaration, 0)
        eventually("the person shown", lambda: _try_show(display, 0), lambda ok: ok, timeout_s=30)
        cluster.stop()
        try:
            with pytest.raises(grpc.RpcError) as down:
                _register(declaration, 1)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "database is unreachable" in (down.value.details() or "")
            # A display is not acknowledged either (its log record needs the database).
            with pytest.raises(grpc.RpcError) as not_logged:
                _show(display, 0)
            assert not_logged.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            cluster.start()
        # The same write succeeds once the database is back, without a restart (the pool
        # reconnects), and what was stored before is still there.
        eventually(
            "a registration accepted again",
            lambda: _try_register(declaration, 1),
            lambda ok: ok,
            timeout_s=30,
        )
        for n in (0, 1):
            got = declaration.GetPerson(
                declaration_pb2.GetPersonRequest(
                    actor=_citizen(PEOPLE[n]), person=common_pb2.PersonRef(id_number=PEOPLE[n])
                )
            )
            assert got.person.masked_id_number and got.person.masked_name.startswith("吴")
        eventually("a display logged again", lambda: _try_show(display, 0), lambda ok: ok)


def _show(stub: display_pb2_grpc.DisplayServiceStub, n: int) -> None:
    stub.Show(
        display_pb2.ShowRequest(
            actor=_citizen(PEOPLE[n]),
            person=common_pb2.PersonRef(id_number=PEOPLE[n]),
            device=DEVICE,
        )
    )


def _try_show(stub: display_pb2_grpc.DisplayServiceStub, n: int) -> bool:
    try:
        _show(stub, n)
        return True
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
            return False
        raise


def _try_register(stub: declaration_pb2_grpc.DeclarationServiceStub, n: int) -> bool:
    try:
        _register(stub, n)
        return True
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            return False
        raise


def _connection(addr: str) -> grpc.Channel:
    # A subchannel pool of its own, so the kernel may hand each connection to another worker.
    return open_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])


def test_display_workers_share_one_log_and_accept_a_token_once(
    pg_cluster: pg.Cluster, tmp_path: Path
) -> None:
    dsn = pg_cluster.new_database()
    env = {
        "HEALTHCODE_STORAGE": "postgresql",
        "HEALTHCODE_POSTGRES_DSN": dsn,
        "HEALTHCODE_DISPLAY_PROCESSES": "2",
    }
    for stack in running_stack(tmp_path / "data", env):
        _shows_and_scans_across_workers(stack, dsn)


def _shows_and_scans_across_workers(stack: Stack, dsn: str) -> None:
    with ExitStack() as closing:
        declaration = declaration_pb2_grpc.DeclarationServiceStub(
            closing.enter_context(open_channel(stack.peers.declaration))
        )
        risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(
            closing.enter_context(open_channel(stack.peers.risk_index))
        )
        displays = [
            display_pb2_grpc.DisplayServiceStub(
                closing.enter_context(_connection(stack.peers.display))
            )
            for _ in range(8)
        ]
        for n in range(len(PEOPLE)):
            _register(declaration, n)
        version = risk_index.GetIndexVersion(
            risk_index_pb2.GetIndexVersionRequest()
        ).accepted_version
        tokens = [
            display.Show(
                display_pb2.ShowRequest(
                    actor=_citizen(person),
                    person=common_pb2.PersonRef(id_number=person),
                    device=DEVICE,
                    min_index_version=version,
                )
            ).token
            for display, person in zip(displays, PEOPLE, strict=True)
        ]
        # Scanned once through one connection, refused through every other one.
        for n, token in enumerate(tokens[:3]):
            displays[n].Scan(display_pb2.ScanRequest(actor=VERIFIER, token=token, device=DEVICE))
            for display in displays:
                with pytest.raises(grpc.RpcError) as replay:
                    display.Scan(
                        display_pb2.ScanRequest(actor=VERIFIER, token=token, device=DEVICE)
                    )
                assert replay.value.code() == grpc.StatusCode.ALREADY_EXISTS

        def counters(display: display_pb2_grpc.DisplayServiceStub) -> tuple[int, ...]:
            stream = display.WatchCounters(display_pb2.WatchCountersRequest())
            first = next(iter(stream))
            stream.cancel()  # type: ignore[attr-defined]
            return (first.displays, first.scans, first.refused_scans, first.applicants)

        expected = (len(PEOPLE), 3, 3 * len(displays), len(PEOPLE))
        for display in displays:
            eventually(
                "every worker's counters, from the one database",
                lambda display=display: counters(display),  # type: ignore[misc]
                lambda seen: seen == expected,
            )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT kind, outcome, count(*) FROM display.display_events GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    assert rows == [
        ("scan", "OK", 3),
        ("scan", "TOKEN_REPLAYED", 3 * len(displays)),
        ("show", "OK", len(PEOPLE)),
    ]
