"""The per-context decision table (issue 11, item 5): what each verifier context does with a
colour and a fever, and which context a caller scans in."""

from __future__ import annotations

import pytest
from healthcode.v1 import colour_pb2, common_pb2, display_pb2

from services._common.actors import Role
from services._common.auth import VERIFIER_CONTEXTS, Caller
from services.display.contexts import (
    DECISIONS,
    DEFAULT_CONTEXT,
    Decision,
    context_of,
    decide,
    instruction,
)
from services.display.logic import Holder, LiveColour, Scanned
from services.display.servicer import scan_to_proto, verifier_verdict

GREEN, YELLOW, RED = 0, 1, 2
P, R, D = Decision.PASS, Decision.REFER, Decision.DENY


@pytest.mark.parametrize(
    ("context", "green", "yellow", "red"),
    [
        ("venue", P, D, D),
        ("bus", P, D, D),
        ("exam", P, R, R),
        ("hospital", P, R, R),
        ("staff_desk", P, R, D),
    ],
)
def test_each_context_decides_each_colour(
    context: str, green: Decision, yellow: Decision, red: Decision
) -> None:
    assert (decide(context, GREEN), decide(context, YELLOW), decide(context, RED)) == (
        green,
        yellow,
        red,
    )


def test_a_hospital_never_denies_care_and_an_exam_hall_never_turns_a_candidate_away() -> None:
    for colour in (GREEN, YELLOW, RED):
        for fever in (False, True):
            assert decide("hospital", colour, fever) is not D
            assert decide("exam", colour, fever) is not D


@pytest.mark.parametrize("context", sorted(VERIFIER_CONTEXTS))
def test_a_fever_counts_as_yellow_and_never_softens_a_decision(context: str) -> None:
    assert decide(context, GREEN, fever=True) == decide(context, YELLOW)
    assert decide(context, RED, fever=True) == decide(context, RED)


def test_every_refer_or_deny_says_what_to_do_and_a_pass_says_nothing() -> None:
    for context, row in DECISIONS.items():
        for decision in row:
            text = instruction(context, decision)
            assert (text == "") == (decision is P), (context, decision)
    assert "fever clinic" in instruction("hospital", R)
    assert "separate exam room" in instruction("exam", R)


def test_the_decision_numbers_are_the_protos() -> None:
    assert int(P) == display_pb2.SCAN_DECISION_PASS
    assert int(R) == display_pb2.SCAN_DECISION_REFER
    assert int(D) == display_pb2.SCAN_DECISION_DENY


def test_the_context_comes_from_the_callers_credential() -> None:
    assert context_of(Caller(Role.VERIFIER, "v-1", context="exam")) == "exam"
    assert context_of(Caller(Role.PARTNER, "nankai", context="hospital")) == "hospital"
    assert context_of(Caller(Role.PARTNER, "line-8", context="bus_operator")) == "bus"
    assert context_of(Caller(Role.PARTNER, "cc", context="cold_chain")) == "venue"
    # No workplace (an old token) or no caller at all (a development run): the venue's rules.
    assert context_of(Caller(Role.VERIFIER, "v-1")) == DEFAULT_CONTEXT == "venue"
    assert context_of(None) == "venue"


def _full_verdict() -> colour_pb2.Verdict:
    verdict = colour_pb2.Verdict(
        colour=common_pb2.COLOUR_RED,
        rule_set_version="2021.01.01",
        index_version=7,
        registered=True,
        person_key=bytes(16),
        stale=True,
        stale_sources=["confirmed"],
        reasons_shed=False,
    )
    verdict.reasons.add(rule_id="close-contact", source="close_contact", text_en="close contact")
    verdict.remedies.add()
    verdict.manual_override.reason = "appeal 12"
    return verdict


def test_a_verifier_sees_the_colour_and_feed_staleness_but_no_reasons_or_sources() -> None:
    seen = verifier_verdict(_full_verdict())
    assert seen.colour == common_pb2.COLOUR_RED and seen.index_version == 7
    assert list(seen.reasons) == [] and list(seen.remedies) == []
    assert not seen.HasField("manual_override") and seen.person_key == b""
    assert seen.stale and list(seen.stale_sources) == ["confirmed"]


def _scanned(colour: int, fever: bool = False) -> Scanned:
    live = LiveColour(colour, 7, "2021.01.01", _full_verdict())
    return Scanned(live, Holder("张**", "12**************3X"), fever, 41, None)


def test_a_scan_answer_holds_the_decision_for_its_context_and_the_masked_name() -> None:
    at_hospital = scan_to_proto(_scanned(RED), "hospital")
    assert at_hospital.decision == display_pb2.SCAN_DECISION_REFER
    assert at_hospital.context == "hospital" and "fever clinic" in at_hospital.instruction
    assert at_hospital.masked_name == "张**" and at_hospital.masked_id_number == ""
    assert list(at_hospital.verdict.reasons) == []
    at_venue = scan_to_proto(_scanned(GREEN, fever=True), "venue")
    assert at_venue.decision == display_pb2.SCAN_DECISION_DENY and at_venue.temperature_alert
    # A staff desk holds the ID card it read: it sees the masked ID number.
    at_desk = scan_to_proto(_scanned(GREEN), "staff_desk")
    assert at_desk.decision == display_pb2.SCAN_DECISION_PASS and at_desk.instruction == ""
    assert at_desk.masked_id_number == "12**************3X"
