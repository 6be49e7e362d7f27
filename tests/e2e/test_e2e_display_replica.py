"""One hop per display (issue 9): the display process holds its own replica of the verdicts,
fed by the risk index as the colour service's is, and rule sets reach every replica through the
risk index (issue 12, part 2). Both must give the same colour, with the same reasons, at the
same index version and rule set."""

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
from tests.e2e.rules_support import close_contact_until_negative
from tests.e2e.waits import eventually, today

PEOPLE = feedgen.synthetic_id_numbers(24, 9090)
PHONES = feedgen.synthetic_phones(24, 9090)
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="health-commission")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="policy-desk")
# Operators act as admin: a platform service is known by its certificate, not a token.
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e")
DEVICE = display_pb2.Device(device_id="phone-e2e", place="Tianjin railway station")

# Unlike the default: a close contact is red until a verified negative test.
POLICY = close_contact_until_negative("e2e-display-replica")


def _citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


def _reasons(verdict: colour_pb2.Verdict) -> list[tuple[str, str, str, bool]]:
    return [(r.rule_id, r.source, r.day, r.cleared) for r in verdict.reasons]


def test_a_display_gives_the_colour_services_verdict_at_the_same_version(stack: Stack) -> None:
    with (
        open_channel(stack.peers.declaration) as dch,
        open_channel(stack.peers.risk_index) as rch,
        open_channel(stack.peers.colour) as cch,
        open_channel(stack.peers.display) as pch,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(dch)
        risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(rch)
        colour = colour_pb2_grpc.ColourServiceStub(cch)
        display = display_pb2_grpc.DisplayServiceStub(pch)

        for i, (person, phone) in enumerate(zip(PEOPLE, PHONES, strict=True)):
            declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=_citizen(person), name=f"王{i}", id_number=person, phones=[phone]
                )
            )
        # A third are close contacts, half of those cleared by a negative test; a quarter of
        # the phones were in a place the telecom feed lists.
        contacts = PEOPLE[::3]
        risk_index.IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=FEED,
                source="close_contact",
                batch_id="cdc-replica-1",
                rows=[risk_index_pb2.FeedRow(id_number=p, day=today()) for p in contacts],
            )
        )
        risk_index.IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=FEED,
                source="nat_negative",
                batch_id="lab-replica-1",
                rows=[
                    risk_index_pb2.FeedRow(
                        id_number=p,
                        day=today(),
                        attributes={"result": "negative", "lab": "Tianjin CDC", "verified": "yes"},
                    )
                    for p in contacts[::2]
                ],
            )
        )

        def compare(rule_set_version: str) -> int:
            """Show and Evaluate every person at the accepted version; the number compared."""
            version = risk_index.GetIndexVersion(
                risk_index_pb2.GetIndexVersionRequest()
            ).accepted_version
            compared = 0
            for person in PEOPLE:
                me = common_pb2.PersonRef(id_number=person)
                shown = display.Show(
                    display_pb2.ShowRequest(
                        actor=_citizen(person), person=me, device=DEVICE, min_index_version=version
                    )
                ).verdict
                evaluated = colour.Evaluate(
                    colour_pb2.EvaluateRequest(actor=SERVICE, person=me, min_index_version=version)
                ).verdict
                assert shown.rule_set_version == rule_set_version, shown
                if (shown.index_version, shown.rule_set_version) != (
                    evaluated.index_version,
                    evaluated.rule_set_version,
                ):
                    continue  # a version published between the two calls
                assert shown.colour == evaluated.colour, (shown, evaluated)
                assert _reasons(shown) == _reasons(evaluated)
                assert list(shown.stale_sources) == list(evaluated.stale_sources)
                compared += 1
            return compared

        # Feed freshness is not part of a version: each replica re-reads it every second
        # (HEALTHCODE_COLOUR_FRESHNESS_S), so wait until both have read the feeds just sent.
        def stale_now() -> tuple[list[str], list[str]]:
            me = common_pb2.PersonRef(id_number=PEOPLE[0])
            shown = display.Show(
                display_pb2.ShowRequest(actor=_citizen(PEOPLE[0]), person=me, device=DEVICE)
            ).verdict
            evaluated = colour.Evaluate(colour_pb2.EvaluateRequest(actor=SERVICE, person=me))
            return list(shown.stale_sources), list(evaluated.verdict.stale_sources)

        eventually(
            "both replicas to read the same feed freshness", stale_now, lambda s: s[0] == s[1]
        )

        default_version = colour.GetStatus(colour_pb2.GetStatusRequest()).rule_set_version
        assert compare(default_version) >= len(PEOPLE) // 2

        # The admin activates a rule set through one colour replica: it reaches the display's
        # replica through the risk index, from the version that carries it.
        activated = colour.SetRuleSet(colour_pb2.SetRuleSetRequest(actor=ADMIN, text=POLICY))
        assert activated.activated and activated.version == "e2e-display-replica"
        assert compare("e2e-display-replica") >= len(PEOPLE) // 2
        reds = [
            p
            for p in PEOPLE
            if display.Show(
                display_pb2.ShowRequest(
                    actor=_citizen(p), person=common_pb2.PersonRef(id_number=p), device=DEVICE
                )
            ).verdict.colour
            == common_pb2.COLOUR_RED
        ]
        # Close contacts without a negative test are red under the new policy.
        assert sorted(reds) == sorted(p for p in contacts if p not in contacts[::2])


def test_a_restarted_display_comes_back_with_the_published_rule_set(stack: Stack) -> None:
    with open_channel(stack.peers.colour) as cch, open_channel(stack.peers.declaration) as dch:
        colour = colour_pb2_grpc.ColourServiceStub(cch)
        person = PEOPLE[0]
        declaration_pb2_grpc.DeclarationServiceStub(dch).Register(
            declaration_pb2.RegisterRequest(
                actor=_citizen(person), name="李四", id_number=person, phones=[PHONES[0]]
            )
        )
        colour.SetRuleSet(colour_pb2.SetRuleSetRequest(actor=ADMIN, text=POLICY))
    # Its own snapshot is not written yet (every 300 s), and the colour service's kept file
    # is gone: the rule set can only come from the risk index's stream.
    stack.stop_one("display")
    (stack.data_dir / "display" / "index.snapshot").unlink(missing_ok=True)
    (stack.data_dir / "colour" / "rule_set.toml").unlink(missing_ok=True)
    stack.start(("display",))
    stack.wait_healthy(timeout_s=60)
    with open_channel(stack.peers.display) as pch:
        display = display_pb2_grpc.DisplayServiceStub(pch)
        me = common_pb2.PersonRef(id_number=person)

        def show() -> display_pb2.ShowResponse | grpc.RpcError:
            try:
                return display.Show(
                    display_pb2.ShowRequest(actor=_citizen(person), person=me, device=DEVICE)
                )
            except grpc.RpcError as error:
                return error

        shown = eventually(
            "a Show from the restarted display",
            show,
            lambda r: isinstance(r, display_pb2.ShowResponse),
        )
        assert isinstance(shown, display_pb2.ShowResponse)
        assert shown.verdict.rule_set_version == "e2e-display-replica"
