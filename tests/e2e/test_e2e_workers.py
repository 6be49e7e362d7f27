"""Many processes on one port (issue 9, part 2): the stack with 2 display and 2 colour workers.

Shows over many connections reach both display workers (each logs to its own file), a token is
accepted once whichever worker scans it, the live counters add up across workers, a worker that
dies is restarted, and SIGTERM stops every worker cleanly. No timing assertions.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
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
from clients.stack import Stack, StackError
from services.display.tokens import TokenReplayed
from tests.e2e.waits import eventually

PEOPLE = feedgen.synthetic_id_numbers(12, 4242)
# Operators act as admin: a platform service is known by its certificate, not a token.
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e")
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-w")
DEVICE = display_pb2.Device(device_id="phone-w", place="Tianjin west station")
CHANNELS = 16  # distinct connections: the kernel spreads them over the workers
_SERVING = re.compile(r"(\w+) worker (\d+) \(pid (\d+)\) serving")


def _citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


def _connection(addr: str) -> grpc.Channel:
    # A subchannel pool of its own: channels with the same settings in one process otherwise
    # share one TCP connection, which would always reach the same worker.
    return open_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])


def _show(person: str, version: int) -> display_pb2.ShowRequest:
    """A person showing their own code at DEVICE, at least at index `version`."""
    return display_pb2.ShowRequest(
        actor=_citizen(person),
        person=common_pb2.PersonRef(id_number=person),
        device=DEVICE,
        min_index_version=version,
    )


def _displays(closing: ExitStack, stack: Stack) -> list[display_pb2_grpc.DisplayServiceStub]:
    """A display stub on each of CHANNELS connections, closed with `closing`."""
    return [
        display_pb2_grpc.DisplayServiceStub(closing.enter_context(_connection(stack.peers.display)))
        for _ in range(CHANNELS)
    ]


def _serving_pids(stack: Stack, name: str) -> dict[int, int]:
    """Worker index -> pid, as the parent last logged them serving."""
    pids: dict[int, int] = {}
    for line in stack.log_tail(name, 100_000).splitlines():
        m = _SERVING.search(line)
        if m and m.group(1) == name:
            pids[int(m.group(2))] = int(m.group(3))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie not reaped yet is not a worker left running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


@pytest.fixture
def workers_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack.on_free_ports(
        tmp_path / "data",
        {
            "HEALTHCODE_DISPLAY_PROCESSES": "2",
            "HEALTHCODE_COLOUR_PROCESSES": "2",
            "HEALTHCODE_COLOUR_RECONNECT_MAX_S": "0.5",
            "HEALTHCODE_COLOUR_FRESHNESS_S": "1",
            "HEALTHCODE_LOG_LEVEL": "INFO",
        },
    )
    stack.start()
    try:
        try:
            stack.wait_healthy(timeout_s=60)
        except StackError as e:
            pytest.fail(str(e))
        for name in ("display", "colour"):
            eventually(
                f"both {name} workers serving",
                lambda name=name: _serving_pids(stack, name),  # type: ignore[misc]
                lambda pids: len(pids) == 2,
                timeout_s=60,
            )
        yield stack
    finally:
        stack.stop()


def test_two_workers_share_the_port_the_log_the_claims_and_the_counters(
    workers_stack: Stack,
) -> None:
    stack = workers_stack
    directory = stack.data_dir / "display"
    with ExitStack() as closing:
        declaration = declaration_pb2_grpc.DeclarationServiceStub(
            closing.enter_context(open_channel(stack.peers.declaration))
        )
        risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(
            closing.enter_context(open_channel(stack.peers.risk_index))
        )
        displays = _displays(closing, stack)
        colours = [
            colour_pb2_grpc.ColourServiceStub(
                closing.enter_context(_connection(stack.peers.colour))
            )
            for _ in range(CHANNELS)
        ]
        for i, person in enumerate(PEOPLE):
            declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=_citizen(person), name=f"周{i}", id_number=person
                )
            )
        version = risk_index.GetIndexVersion(
            risk_index_pb2.GetIndexVersionRequest()
        ).accepted_version

        # Many Shows over many connections: every person through every connection.
        tokens: list[str] = []
        for n, display in enumerate(displays):
            for person in PEOPLE[n % 3 :: 3]:
                shown = display.Show(_show(person, version))
                assert shown.verdict.colour == common_pb2.COLOUR_GREEN, shown.verdict
                tokens.append(shown.token)
        shows = len(tokens)
        # Both workers served: each has rows in its own log, and together they have them all.
        per_worker = [
            _rows(directory / f"display.{i}.db", "SELECT COUNT(*) FROM display_events")[0][0]
            for i in range(2)
        ]
        assert all(isinstance(n, int) and n > 0 for n in per_worker), per_worker
        assert sum(per_worker) == shows  # type: ignore[arg-type]

        # Both colour workers answer alike at the same version, whichever one a call reaches.
        for colour in colours:
            verdict = colour.Evaluate(
                colour_pb2.EvaluateRequest(
                    actor=SERVICE,
                    person=common_pb2.PersonRef(id_number=PEOPLE[0]),
                    min_index_version=version,
                )
            ).verdict
            assert verdict.registered and verdict.colour == common_pb2.COLOUR_GREEN

        # Each token is accepted once, through one connection, then refused through every
        # connection (so at both workers), with the replay reason.
        accepted = refused = 0
        for n, token in enumerate(tokens[:6]):
            scanned = displays[(n + 7) % CHANNELS].Scan(
                display_pb2.ScanRequest(actor=VERIFIER, token=token, device=DEVICE)
            )
            assert scanned.verdict.colour == common_pb2.COLOUR_GREEN
            accepted += 1
            for display in displays:
                with pytest.raises(grpc.RpcError) as replay:
                    display.Scan(
                        display_pb2.ScanRequest(actor=VERIFIER, token=token, device=DEVICE)
                    )
                assert replay.value.code() == grpc.StatusCode.ALREADY_EXISTS
                assert "already scanned" in (replay.value.details() or "")
                refused += 1
        # Replays were refused at both workers, each logging the refusal in its own file.
        for i in range(2):
            reasons = _rows(
                directory / f"display.{i}.db",
                "SELECT COUNT(*) FROM display_events WHERE kind = 'scan' AND outcome = ?",
                TokenReplayed.reason,
            )
            assert reasons[0][0], f"worker {i} refused no replay"

        # The counters add up across the workers, whichever worker a watcher reaches.
        def counters(display: display_pb2_grpc.DisplayServiceStub) -> tuple[int, ...]:
            stream = display.WatchCounters(display_pb2.WatchCountersRequest())
            first = next(iter(stream))
            stream.cancel()  # type: ignore[attr-defined]
            return (
                first.displays,
                first.scans,
                first.refused_scans,
                first.applicants,
                first.total_displays,
                first.displays_by_colour.green,
            )

        expected = (shows, accepted, refused, len(PEOPLE), shows, shows)
        for display in displays:
            eventually(
                "the counters of both workers, summed",
                lambda display=display: counters(display),  # type: ignore[misc]
                lambda seen: seen == expected,
            )

    # SIGTERM stops the parents and every worker cleanly.
    pids = [*_serving_pids(stack, "display").values(), *_serving_pids(stack, "colour").values()]
    codes = stack.stop()
    assert codes == {name: 0 for name in codes}, codes
    eventually("no worker left", lambda: [p for p in pids if _alive(p)], lambda left: not left)
    assert "stopped (clean)" in stack.log_tail("display")
    # Each colour worker kept its own snapshot.
    for i in range(2):
        assert (stack.data_dir / "colour" / f"index.{i}.snapshot").is_file()


def test_a_worker_that_dies_is_restarted(workers_stack: Stack) -> None:
    stack = workers_stack
    with open_channel(stack.peers.declaration) as channel:
        declaration = declaration_pb2_grpc.DeclarationServiceStub(channel)
        for i, person in enumerate(PEOPLE):
            declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=_citizen(person), name=f"吴{i}", id_number=person
                )
            )
    with open_channel(stack.peers.risk_index) as channel:
        version = (
            risk_index_pb2_grpc.RiskIndexServiceStub(channel)
            .GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
            .accepted_version
        )
    before = _serving_pids(stack, "display")
    os.kill(before[1], signal.SIGKILL)
    after = eventually(
        "display worker 1 restarted and serving",
        lambda: _serving_pids(stack, "display"),
        lambda pids: pids.get(1) not in (None, before[1]),
        timeout_s=60,
    )
    assert after[0] == before[0]  # the other worker kept serving
    assert "display worker 1" in stack.log_tail("display") and "restarting it" in stack.log_tail(
        "display"
    )
    # The workers started on an empty index, so the shared key files then held no person. The
    # restarted worker was sent a whole version with everyone, found the files far short of
    # it, and wrote them again: its people's keys are now read from the file every worker maps.
    shared = stack.data_dir / "shared-keys"
    assert f"{len(PEOPLE)} of {len(PEOPLE)} person keys from {shared}" in stack.log_tail("display")
    header = (shared / "persons.keys").read_bytes()[:16]
    assert header[:8] == b"HCKEYS02"
    assert int.from_bytes(header[8:16], "little") == len(PEOPLE)  # the keys it holds
    with ExitStack() as closing:
        colour = colour_pb2_grpc.ColourServiceStub(
            closing.enter_context(open_channel(stack.peers.colour))
        )
        displays = _displays(closing, stack)
        key = displays[0].GetVerificationKey(display_pb2.GetVerificationKeyRequest())
        assert len(key.ed25519_public_key) == 32
        # Every person, through every connection (so at both workers, the one reading its keys
        # from the file among them): the colour service's colour, registered.
        for person in PEOPLE:
            want = colour.Evaluate(
                colour_pb2.EvaluateRequest(
                    actor=SERVICE,
                    person=common_pb2.PersonRef(id_number=person),
                    min_index_version=version,
                )
            ).verdict
            assert want.registered
            for display in displays:
                shown = display.Show(_show(person, version))
                assert shown.verdict.registered
                assert shown.verdict.colour == want.colour
    codes = stack.stop()
    assert codes == {name: 0 for name in codes}, codes
    assert not [p for p in after.values() if _alive(p)]


def test_workers_stop_by_themselves_when_their_parent_is_killed(workers_stack: Stack) -> None:
    stack = workers_stack
    pids = list(_serving_pids(stack, "display").values())
    stack.processes["display"].kill()  # SIGKILL: the parent forwards nothing
    eventually(
        "the orphaned display workers to stop",
        lambda: [p for p in pids if _alive(p)],
        lambda left: not left,
    )
    stack.stop_one("display")
    codes = stack.stop()
    assert codes == {name: 0 for name in codes}, codes
