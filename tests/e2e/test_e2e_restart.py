"""Restarts lose nothing acknowledged: a colour replica that was down catches up to the latest
index version; a display service keeps its log, counters and signing key (a code shown before
the restart still scans after it)."""

from __future__ import annotations

import grpc
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
from clients.stack import Stack
from tests.e2e.waits import eventually, today

PERSON = feedgen.synthetic_id_numbers(1, 8180)[0]
ME = common_pb2.PersonRef(id_number=PERSON)
CITIZEN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ME)
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="cdc")
# Operators act as admin: a platform service is known by its certificate, not a token.
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e")
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-1")
DEVICE = display_pb2.Device(device_id="phone-r")


def colour_of(stack: Stack) -> colour_pb2.Verdict | str:
    with open_channel(stack.peers.colour) as ch:
        try:
            return (
                colour_pb2_grpc.ColourServiceStub(ch)
                .Evaluate(colour_pb2.EvaluateRequest(actor=SERVICE, person=ME))
                .verdict
            )
        except grpc.RpcError as e:
            return f"{e.code()}"  # type: ignore[attr-defined]


def test_a_restarted_colour_replica_catches_up(stack: Stack) -> None:
    with open_channel(stack.peers.declaration) as ch:
        declaration_pb2_grpc.DeclarationServiceStub(ch).Register(
            declaration_pb2.RegisterRequest(actor=CITIZEN, name="赵六", id_number=PERSON)
        )
    eventually(
        "the person to reach colour",
        lambda: colour_of(stack),
        lambda v: isinstance(v, colour_pb2.Verdict) and v.registered,
    )
    assert stack.stop_one("colour") == 0

    # While colour is down, the risk index moves on.
    with open_channel(stack.peers.risk_index) as ch:
        response = risk_index_pb2_grpc.RiskIndexServiceStub(ch).IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=FEED,
                source="confirmed",
                batch_id="confirmed-while-colour-down",
                rows=[risk_index_pb2.FeedRow(id_number=PERSON, day=today())],
            )
        )
    stack.start(("colour",))
    stack.wait_healthy(timeout_s=60)
    stack.wait_colour_version(response.index_version)
    verdict = colour_of(stack)
    assert isinstance(verdict, colour_pb2.Verdict), verdict
    assert verdict.colour == common_pb2.COLOUR_RED
    assert "confirmed-case" in {r.rule_id for r in verdict.reasons}


def test_a_restarted_display_keeps_its_log_counters_and_key(stack: Stack) -> None:
    with open_channel(stack.peers.declaration) as ch:
        declaration_pb2_grpc.DeclarationServiceStub(ch).Register(
            declaration_pb2.RegisterRequest(actor=CITIZEN, name="孙七", id_number=PERSON)
        )

    def show() -> display_pb2.ShowResponse | str:
        with open_channel(stack.peers.display) as ch:
            try:
                return display_pb2_grpc.DisplayServiceStub(ch).Show(
                    display_pb2.ShowRequest(actor=CITIZEN, person=ME, device=DEVICE)
                )
            except grpc.RpcError as e:
                return f"{e.code()}"  # type: ignore[attr-defined]

    first = eventually("a first display", show, lambda r: not isinstance(r, str))
    assert not isinstance(first, str)
    second = show()
    assert not isinstance(second, str)

    assert stack.stop_one("display") == 0
    stack.start(("display",))
    stack.wait_healthy(timeout_s=60)

    with open_channel(stack.peers.display) as ch:
        stub = display_pb2_grpc.DisplayServiceStub(ch)
        counters = next(iter(stub.WatchCounters(display_pb2.WatchCountersRequest())))
        assert counters.displays == 2 and counters.total_applicants == 1, counters
        # Signed before the restart, verified after it: the key was kept.
        scanned = stub.Scan(
            display_pb2.ScanRequest(actor=VERIFIER, token=second.token, device=DEVICE)
        )
        assert scanned.verdict.colour == common_pb2.COLOUR_GREEN
