"""Audited manual overrides (issue 10, item 4) through the four real processes: the support desk
turns a red person green after an appeal, with a reason and a short validity; the display's
own replica (one hop) and the colour service give green at the version the override names,
Explain shows the override and the red underneath; a citizen or a verifier cannot override;
clearing brings red back; the log lists both entries and its hash chain verifies. The CLI
does the same as the support desk."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from healthcode.v1 import colour_pb2, common_pb2, risk_index_pb2
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.stack import Stack
from services._common.status import reason_of
from tests.e2e.rules_support import SUPPORT, VERIFIER, Stubs, citizen, ref, stubs
from tests.e2e.waits import eventually, today

PEOPLE = feedgen.make_population(3, seed=2024117, second_sim_rate=0.0, no_phone_rate=0.0)
PERSON, OTHER, CLI_PERSON = (p.id_number for p in PEOPLE)
RED, GREEN = common_pb2.COLOUR_RED, common_pb2.COLOUR_GREEN
REASON = "appeal 2024-117: a verified negative test at the hospital"
# EvaluateStream batches are for partners and operators; a test client can sign an operator.
EXAM_OFFICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="exam-office")


def _red_through_a_feed(s: Stubs) -> int:
    s.register(PEOPLE)
    s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
    version = s.ingest(
        [
            feedgen.row("confirmed", id_number=i, day=dt.date.fromisoformat(today()))
            for i in (PERSON, CLI_PERSON)
        ],
        "cdc-confirmed-override",
    )
    for who in (PERSON, CLI_PERSON):
        assert s.show(who, version).verdict.colour == RED
    return version


def _override(s: Stubs, actor: common_pb2.Actor, minutes: int = 10) -> int:
    request = risk_index_pb2.OverrideColourRequest(
        actor=actor, person=ref(PERSON), colour=GREEN, reason=REASON
    )
    request.valid_until.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes))
    return int(s.risk_index.OverrideColour(request).index_version)


def _batch(s: Stubs, id_numbers: list[str]) -> bytes:
    """The packed colours of an EvaluateStream batch (the exam office's candidate list)."""
    request = colour_pb2.EvaluateStreamRequest(
        actor=EXAM_OFFICE, correlation_id="exam", id_numbers=id_numbers
    )
    [answer] = list(s.colour.EvaluateStream(iter([request])))
    return bytes(answer.colours)


def test_the_support_desk_overrides_a_colour_everywhere_until_cleared(stack: Stack) -> None:
    with stubs(stack) as s:
        _red_through_a_feed(s)
        version = _override(s, SUPPORT)

        # One hop: the display's own replica, and the colour service, at that version.
        shown = s.show(PERSON, version).verdict
        evaluated = s.colour.Evaluate(
            colour_pb2.EvaluateRequest(actor=SUPPORT, person=ref(PERSON), min_index_version=version)
        ).verdict
        for verdict in (shown, evaluated):
            assert verdict.index_version >= version
            assert verdict.colour == GREEN
            assert verdict.manual_override.computed_colour == RED
            assert verdict.manual_override.reason == REASON
            assert verdict.manual_override.actor == "support su***3"
            assert verdict.reasons[0].rule_id == "manual_override"
            assert REASON in verdict.reasons[0].text_en
        # Others, and other provinces, see the rules.
        assert s.show(OTHER, version).verdict.colour == GREEN
        assert not s.show(OTHER, version).verdict.HasField("manual_override")
        assert s.evaluate(PERSON, shared_only=True).colour == RED
        # The exam office's batch, by ID number.
        assert _batch(s, [PERSON, CLI_PERSON, OTHER]) == bytes([1, 3, 1])

        # Explain: the override first, and what the rules computed underneath.
        x = s.colour.Explain(
            colour_pb2.ExplainRequest(actor=SUPPORT, person=ref(PERSON), min_index_version=version)
        )
        assert x.verdict.colour == GREEN
        assert x.verdict.manual_override.computed_colour == RED
        assert x.verdict.reasons[0].rule_id == "manual_override"
        assert [(r.rule_id, r.outcome) for r in x.rules][:1] == [
            ("confirmed-case", colour_pb2.RULE_OUTCOME_FIRED)
        ]

        # A citizen (even the person themself) or a verifier may not override: refused at
        # the door, and nothing changes.
        accepted = s.risk_index.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
        for actor in (citizen(PERSON), citizen(OTHER), VERIFIER):
            with pytest.raises(grpc.RpcError) as refused:
                _override(s, actor)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(refused.value) == "ROLE_NOT_ALLOWED"
            with pytest.raises(grpc.RpcError) as refused:
                s.risk_index.ClearOverride(
                    risk_index_pb2.ClearOverrideRequest(
                        actor=actor, person=ref(PERSON), reason="I would rather be green"
                    )
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        after = s.risk_index.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
        assert after.accepted_version == accepted.accepted_version
        assert s.show(PERSON).verdict.colour == GREEN

        # Cleared: red again, on the display's replica and the colour service alike.
        cleared = s.risk_index.ClearOverride(
            risk_index_pb2.ClearOverrideRequest(
                actor=SUPPORT, person=ref(PERSON), reason="the hospital withdrew the test result"
            )
        )
        version = cleared.index_version
        shown = s.show(PERSON, version).verdict
        evaluated = s.colour.Evaluate(
            colour_pb2.EvaluateRequest(actor=SUPPORT, person=ref(PERSON), min_index_version=version)
        ).verdict
        for verdict in (shown, evaluated):
            assert verdict.colour == RED and not verdict.HasField("manual_override")
        assert _batch(s, [PERSON]) == bytes([3])

        # The log: both entries, newest first, and a chain that verifies.
        log = s.risk_index.ListOverrides(risk_index_pb2.ListOverridesRequest(actor=SUPPORT))
        assert [(e.seq, e.action) for e in log.entries] == [
            (2, risk_index_pb2.OVERRIDE_ACTION_CLEAR),
            (1, risk_index_pb2.OVERRIDE_ACTION_SET),
        ]
        assert all(e.actor_principal == SUPPORT.principal for e in log.entries)
        assert log.entries[1].reason == REASON and log.entries[1].colour == GREEN
        assert log.entries[0].prev_hash == log.entries[1].hash
        assert log.verified and log.entry_count == 2 and log.head_hash == log.entries[0].hash


def _cli(stack: Stack, *args: str) -> tuple[int, str]:
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        [
            "--declaration", p.declaration,
            "--risk-index", p.risk_index,
            "--colour", p.colour,
            "--display", p.display,
            *args,
        ],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    return result.exit_code, result.output


def test_the_cli_sets_lists_and_clears_as_the_support_desk(stack: Stack) -> None:
    with stubs(stack) as s:
        _red_through_a_feed(s)
        code, output = _cli(
            stack,
            "override", "set", CLI_PERSON, "--colour", "green", "--hours", "2",
            "--reason", REASON, "--principal", "desk-9",
        )  # fmt: skip
        assert code == 0, output
        assert "override #1" in output and CLI_PERSON not in output
        version = int(output.split("index version")[1].split()[0])
        assert s.show(CLI_PERSON, version).verdict.colour == GREEN
        code, output = _cli(stack, "explain", CLI_PERSON)
        assert code == 0, output
        assert "manual override" in output and "support de***9" in output
        assert CLI_PERSON not in output
        code, output = _cli(
            stack, "override", "set", CLI_PERSON, "--colour", "green", "--reason", "x"
        )
        assert code != 0
        code, output = _cli(stack, "override", "clear", CLI_PERSON, "--reason", "entered in error")
        assert code == 0, output
        version = int(output.split("index version")[1].split()[0])
        assert s.show(CLI_PERSON, version).verdict.colour == RED
        code, output = _cli(stack, "override", "list", CLI_PERSON)
        assert code == 0, output
        assert "#2" in output and "#1" in output and "cleared" in output
        assert "chain verified" in output and "2 entries" in output
        assert CLI_PERSON not in output
        # Waiting is bounded, never timed: the display's replica follows on its own too.
        eventually(
            "the display to show red without a version",
            lambda: s.show(CLI_PERSON).verdict.colour,
            lambda colour: colour == RED,
        )
