"""A person's day across the four real processes: register -> declare -> a close-contact feed
turns the code red with the reason -> a verified negative test clears it -> green again."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

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
from clients.stack import Stack
from tests.e2e.rules_support import close_contact_until_negative
from tests.e2e.waits import eventually, today

T = TypeVar("T")
PERSON, PROXY = feedgen.synthetic_id_numbers(2, 5150)
PHONE = feedgen.synthetic_phones(1, 5150)[0]
ME = common_pb2.PersonRef(id_number=PERSON)
CITIZEN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ME)
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="health-commission")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="policy-desk")
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-3")
DEVICE = display_pb2.Device(device_id="phone-e2e", place="Tianjin railway station")

# The policy for this journey: a close contact is red until a verified negative test (the
# default rule set clears close contacts only on release from quarantine).
POLICY = close_contact_until_negative("e2e-close-contact-nat")


def test_close_contact_turns_red_and_a_negative_test_clears_it(stack: Stack) -> None:
    peers = stack.peers
    with (
        open_channel(peers.declaration) as dch,
        open_channel(peers.risk_index) as rch,
        open_channel(peers.colour) as cch,
        open_channel(peers.display) as pch,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(dch)
        risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(rch)
        colour = colour_pb2_grpc.ColourServiceStub(cch)
        display = display_pb2_grpc.DisplayServiceStub(pch)

        # R5: the policy is activated at run time through the admin RPC, no restart.
        activated = colour.SetRuleSet(colour_pb2.SetRuleSetRequest(actor=ADMIN, text=POLICY))
        assert activated.activated and activated.version == "e2e-close-contact-nat"

        registered = declaration.Register(
            declaration_pb2.RegisterRequest(
                actor=CITIZEN, name="张三丰", id_number=PERSON, phones=[PHONE]
            )
        )
        assert registered.created and registered.person.masked_name.startswith("张")
        declaration.Declare(
            declaration_pb2.DeclareRequest(actor=CITIZEN, person=ME, temperature_celsius=36.6)
        )

        def show() -> display_pb2.ShowResponse:
            return display.Show(display_pb2.ShowRequest(actor=CITIZEN, person=ME, device=DEVICE))

        # The registration reaches the colour replica through the risk index's next version.
        first = eventually(
            "the person's first code",
            lambda: _try(show),
            lambda r: isinstance(r, display_pb2.ShowResponse),
        )
        assert isinstance(first, display_pb2.ShowResponse)
        assert first.verdict.colour == common_pb2.COLOUR_GREEN, first.verdict
        assert first.masked_name == registered.person.masked_name

        contact = risk_index.IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=FEED,
                source="close_contact",
                batch_id="cdc-2020-12-16-001",
                rows=[risk_index_pb2.FeedRow(id_number=PERSON, day=today())],
            )
        )
        wait_for_colour_version(colour, contact.index_version)
        red = show()
        assert red.verdict.colour == common_pb2.COLOUR_RED, red.verdict
        assert red.verdict.index_version >= contact.index_version
        (reason,) = [r for r in red.verdict.reasons if not r.cleared]
        assert (reason.rule_id, reason.source, reason.day) == (
            "close-contact",
            "close_contact",
            today(),
        )
        assert reason.text_en.startswith("Identified as a close contact")
        assert [m.clearing_sources for m in red.verdict.remedies] == [["nat_negative"]]

        # A verifier at the gate sees the live red.
        scanned = display.Scan(
            display_pb2.ScanRequest(actor=VERIFIER, token=red.token, device=DEVICE)
        )
        assert scanned.verdict.colour == common_pb2.COLOUR_RED

        negative = risk_index.IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=FEED,
                source="nat_negative",
                batch_id="lab-7-2020-12-16-001",
                rows=[
                    risk_index_pb2.FeedRow(
                        id_number=PERSON,
                        day=today(),
                        attributes={"result": "negative", "lab": "Tianjin CDC", "verified": "yes"},
                    )
                ],
            )
        )
        wait_for_colour_version(colour, negative.index_version)
        green = show()
        assert green.verdict.colour == common_pb2.COLOUR_GREEN, green.verdict
        assert [(r.rule_id, r.cleared, r.cleared_by) for r in green.verdict.reasons] == [
            ("close-contact", True, "nat_negative")
        ]

        # The old red token was scanned once already: a copy of it is refused.
        with pytest.raises(grpc.RpcError) as replay:
            display.Scan(display_pb2.ScanRequest(actor=VERIFIER, token=red.token, device=DEVICE))
        assert replay.value.code() == grpc.StatusCode.ALREADY_EXISTS

        counters = next(iter(display.WatchCounters(display_pb2.WatchCountersRequest())))
        assert counters.displays >= 3 and counters.displays_by_colour.red >= 1
        assert counters.scans >= 1 and counters.refused_scans >= 1


def wait_for_colour_version(colour: colour_pb2_grpc.ColourServiceStub, version: int) -> None:
    eventually(
        f"the colour replica to hold index version {version}",
        lambda: colour.GetStatus(colour_pb2.GetStatusRequest()).index_version,
        lambda held: held >= version,
    )


def _try(call: Callable[[], T]) -> T | str:
    try:
        return call()
    except grpc.RpcError as e:
        if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNAVAILABLE:
            return f"UNAVAILABLE: {e.details()}"
        raise
