"""`make run`'s demo declares for its people (issue 7, item 8): the declaration-fed sources are
fed through the declaration service's real RPC, so no verdict calls them stale, and the
declared_* rules fire for the few who reported something."""

from __future__ import annotations

import datetime as dt

from healthcode.v1 import colour_pb2, colour_pb2_grpc, common_pb2, risk_index_pb2
from healthcode.v1 import risk_index_pb2_grpc as ri_grpc
from typer.testing import CliRunner

from clients import cli, demo
from clients.channel import open_channel
from clients.stack import Stack
from tests.e2e.waits import eventually

PERSONS = 40
DECLARED = ("declared_fever", "declared_symptoms", "declared_case_contact", "declared_travel")
# Operators act as admin: a platform service is known by its certificate, not a token.
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="e2e")


def explain(stack: Stack, id_number: str) -> colour_pb2.ExplainResponse:
    with open_channel(stack.peers.colour) as channel:
        return colour_pb2_grpc.ColourServiceStub(channel).Explain(
            colour_pb2.ExplainRequest(
                actor=SERVICE, person=common_pb2.PersonRef(id_number=id_number)
            )
        )


def test_demo_declares_so_no_declared_source_is_stale(stack: Stack) -> None:
    said: list[str] = []
    people = demo.load_demo(stack.peers, PERSONS, 7, said.append)
    declared = [line for line in said if line.startswith("declared today for")]
    assert declared and f"for {PERSONS} people" in declared[0], said
    assert "reported nothing" in declared[0] and "something" in declared[0], said

    # Every declaration-fed source had a batch from the declaration service.
    with open_channel(stack.peers.risk_index) as channel:
        sources = ri_grpc.RiskIndexServiceStub(channel).ListSources(
            risk_index_pb2.ListSourcesRequest()
        )
    by_name = {s.name: s for s in sources.sources}
    for name in DECLARED:
        assert by_name[name].batch_count > 0 and not by_name[name].stale, by_name[name]

    # A green person's verdict lists no declared_* source as stale (the colour replica reads
    # the feed times right after installing a version; wait for that, bounded).
    assert people.green is not None
    green = eventually(
        "the green person's verdict to see the declared feeds",
        lambda: explain(stack, people.green or ""),
        lambda x: not any(s.startswith("declared_") for s in x.verdict.stale_sources),
    )
    assert green.verdict.colour == common_pb2.COLOUR_GREEN
    fresh = {s.source: s for s in green.sources}
    for name in DECLARED:
        if name in fresh:  # every source the rule set uses
            assert not fresh[name].stale and fresh[name].HasField("last_updated"), fresh[name]
            updated = fresh[name].last_updated.ToDatetime(dt.UTC)
            assert dt.datetime.now(dt.UTC) - updated < dt.timedelta(hours=1)

    # ... and so does what the CLI shows for them.
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        [
            "--declaration", p.declaration,
            "--risk-index", p.risk_index,
            "--colour", p.colour,
            "--display", p.display,
            "show", people.green,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "GREEN" in result.output and "declared_" not in result.output, result.output

    # The few who reported something make the declared_* rules fire.
    fired: set[str] = set()
    with open_channel(stack.peers.colour) as channel:
        stub = colour_pb2_grpc.ColourServiceStub(channel)
        for person in people.population:
            verdict = stub.Evaluate(
                colour_pb2.EvaluateRequest(
                    actor=SERVICE, person=common_pb2.PersonRef(id_number=person.id_number)
                )
            ).verdict
            fired |= {r.source for r in verdict.reasons if r.source in DECLARED}
    assert fired == set(DECLARED), fired


def test_a_rerun_on_the_same_day_counts_who_already_declared(stack: Stack) -> None:
    demo.load_demo(stack.peers, PERSONS, 11, lambda _: None)
    said: list[str] = []
    demo.load_demo(stack.peers, PERSONS, 11, said.append)
    assert any(f"all {PERSONS} people had already declared today" in line for line in said), said
