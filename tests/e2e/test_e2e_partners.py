"""Context-specific verdicts, bus scanners and hospital triage through the real processes
(issue 11, items 5, 6 and 8).

Verifiers call with the CLI's edge certificate and a token naming their workplace; partners with
their own certificates (the development CA issues a bus operator's here). Every answer is
checked for what it must NOT hold (reasons, sources), and the display log for what it holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    partners_pb2,
    partners_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.channel import open_channel
from clients.credentials import BearerTokens, ClientCredentials
from clients.stack import Stack
from services._common.actors import Role
from services._common.auth import VERIFIER_CONTEXTS, Security, TokenIssuer
from services._common.pki import TRUST_DOMAIN, create_dev_credentials
from services._common.status import reason_of
from services.display.contexts import DECISIONS
from tests.e2e.waits import eventually, today

GREEN_P, RED_P, FEVER_P, CARD_P, SPARE = feedgen.synthetic_id_numbers(5, 11_061)
CARD = "TJ-ELDER-0012345678"
BUS_OPERATOR = "partner-bus-line8"
DEVICE = display_pb2.Device(device_id="e2e-phone", place="home")


def _citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


@dataclass
class World:
    stack: Stack
    display: display_pb2_grpc.DisplayServiceStub  # the CLI's credentials (mints as asked)

    def show(self, id_number: str) -> display_pb2.ShowResponse:
        return self.display.Show(
            display_pb2.ShowRequest(
                actor=_citizen(id_number),
                person=common_pb2.PersonRef(id_number=id_number),
                device=DEVICE,
            ),
            timeout=10,
        )

    def channel_as_verifier(self, context: str) -> grpc.Channel:
        token = TokenIssuer(self.stack.credentials_dir).staff(
            Role.VERIFIER, f"{context}-verifier", context
        )
        return _channel(self.stack, "cli", token)

    def channel_as(self, identity: str) -> grpc.Channel:
        return _channel(self.stack, identity, None)

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        db = sqlite3.connect(self.stack.data_dir / "display" / "display.db", timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


def _channel(stack: Stack, identity: str, token: str | None) -> grpc.Channel:
    security = Security.load(stack.credentials_dir, identity)
    channel = grpc.secure_channel(stack.peers.display, security.channel_credentials())
    if token is None:
        return channel
    return grpc.intercept_channel(
        channel, BearerTokens(ClientCredentials(security, issuer=None, token=token))
    )


@pytest.fixture(scope="module")
def world(module_stack: Stack) -> Iterator[World]:
    stack = module_stack
    create_dev_credentials(
        stack.credentials_dir,
        {BUS_OPERATOR: f"spiffe://{TRUST_DOMAIN}/partner/bus_operator/line8"},
    )
    with (
        open_channel(stack.peers.declaration) as dch,
        open_channel(stack.peers.risk_index) as rch,
        open_channel(stack.peers.display) as pch,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(dch)
        for n, id_number in enumerate((GREEN_P, RED_P, FEVER_P, CARD_P)):
            declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=_citizen(id_number), name=f"王{'一二三四'[n]}明", id_number=id_number
                )
            )
        # An elderly passenger's real-name card, linked after the display began following.
        declaration.LinkTransitCard(
            declaration_pb2.LinkTransitCardRequest(
                actor=_citizen(CARD_P),
                person=common_pb2.PersonRef(id_number=CARD_P),
                transit_card=CARD,
            )
        )
        declaration.Declare(
            declaration_pb2.DeclareRequest(
                actor=_citizen(FEVER_P),
                person=common_pb2.PersonRef(id_number=FEVER_P),
                temperature_celsius=38.4,
            )
        )
        risk_index_pb2_grpc.RiskIndexServiceStub(rch).IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="cdc"),
                source="close_contact",
                batch_id="e2e-partners-contacts",
                rows=[risk_index_pb2.FeedRow(id_number=RED_P, day=today())],
            )
        )
        world = World(stack, display_pb2_grpc.DisplayServiceStub(pch))
        expected = {
            GREEN_P: common_pb2.COLOUR_GREEN,
            CARD_P: common_pb2.COLOUR_GREEN,
            RED_P: common_pb2.COLOUR_RED,
            FEVER_P: common_pb2.COLOUR_YELLOW,
        }
        for id_number, colour in expected.items():
            _await_colour(world, id_number, colour)
        yield world


def _await_colour(world: World, id_number: str, colour: int) -> None:
    eventually(
        f"the colour of person {id_number[-4:]}",
        lambda: _colour_of(world, id_number),
        lambda seen: seen == colour,
    )


def _colour_of(world: World, id_number: str) -> int | None:
    try:
        return world.show(id_number).verdict.colour
    except grpc.RpcError:
        return None


# --- context-specific verdicts ---------------------------------------------------------------


def test_each_verifier_context_gets_its_decision_and_the_masked_name_only(world: World) -> None:
    shown = world.show(RED_P)
    # The holder sees why.
    assert "close_contact" in {r.source for r in shown.verdict.reasons if not r.cleared}
    assert shown.verdict.remedies
    for context in sorted(VERIFIER_CONTEXTS):
        token = world.show(RED_P).token
        with world.channel_as_verifier(context) as channel:
            scanned = display_pb2_grpc.DisplayServiceStub(channel).Scan(
                display_pb2.ScanRequest(
                    token=token, device=display_pb2.Device(device_id=f"{context}-1")
                ),
                timeout=10,
            )
        assert scanned.context == context
        assert scanned.decision == int(DECISIONS[context][2]), context
        assert scanned.verdict.colour == common_pb2.COLOUR_RED
        assert scanned.masked_name == shown.masked_name
        # No reasons, remedies, override or sources reach a verifier.
        assert list(scanned.verdict.reasons) == [] and list(scanned.verdict.remedies) == []
        assert not scanned.verdict.HasField("manual_override")
        assert scanned.verdict.person_key == b""
        assert (scanned.masked_id_number != "") == (context == "staff_desk")
        (logged,) = world.rows(
            "SELECT kind, outcome, context, colour FROM display_events WHERE id = ?",
            scanned.scan_id,
        )
        assert logged == ("scan", "OK", context, 2)
    # A hospital refers, a venue denies, with what to do.
    with world.channel_as_verifier("hospital") as channel:
        scanned = display_pb2_grpc.DisplayServiceStub(channel).Scan(
            display_pb2.ScanRequest(token=world.show(RED_P).token, device=DEVICE), timeout=10
        )
    assert scanned.decision == display_pb2.SCAN_DECISION_REFER
    assert "fever clinic" in scanned.instruction


def test_a_partner_scanning_a_code_gets_the_decision_of_its_kind(world: World) -> None:
    with world.channel_as("partner-hospital") as channel:
        scanned = display_pb2_grpc.DisplayServiceStub(channel).Scan(
            display_pb2.ScanRequest(token=world.show(FEVER_P).token, device=DEVICE), timeout=10
        )
    assert (scanned.context, scanned.decision) == ("hospital", display_pb2.SCAN_DECISION_REFER)
    assert list(scanned.verdict.reasons) == []


# --- buses -----------------------------------------------------------------------------------


def _bus_scan(channel: grpc.Channel, **fields: object) -> partners_pb2.BusScanResponse:
    request = partners_pb2.BusScanRequest(vehicle="津A·12345", route="8", **fields)  # type: ignore[arg-type]
    return partners_pb2_grpc.PartnerServiceStub(channel).BusScan(request, timeout=10)


def test_a_bus_scans_a_code_with_the_temperature_and_alerts_on_fever(world: World) -> None:
    with world.channel_as(BUS_OPERATOR) as channel:
        passed = _bus_scan(channel, token=world.show(GREEN_P).token, temperature_celsius=36.6)
        fever = _bus_scan(channel, token=world.show(GREEN_P).token, temperature_celsius=37.3)
        red = _bus_scan(channel, token=world.show(RED_P).token, temperature_celsius=36.5)
    assert passed.decision == partners_pb2.BUS_DECISION_PASS and not passed.fever
    assert passed.colour == common_pb2.COLOUR_GREEN and passed.masked_name.startswith("王")
    assert fever.decision == partners_pb2.BUS_DECISION_ALERT and fever.fever
    assert red.decision == partners_pb2.BUS_DECISION_ALERT and not red.fever
    assert red.colour == common_pb2.COLOUR_RED
    (logged,) = world.rows(
        "SELECT kind, context, vehicle, route, actor, place FROM display_events WHERE id = ?",
        passed.scan_id,
    )
    assert logged == (
        "scan",
        "bus",
        "津A·12345",
        "8",
        "partner:line8",
        "bus route 8, vehicle 津A·12345",
    )


def test_a_real_name_transit_card_needs_no_code_and_is_never_logged_raw(world: World) -> None:
    with world.channel_as_verifier("bus") as channel:
        by_card = eventually(
            "the card link to reach the display",
            lambda: _try_card(channel, CARD),
            lambda r: isinstance(r, partners_pb2.BusScanResponse),
        )
        assert isinstance(by_card, partners_pb2.BusScanResponse)
        with pytest.raises(grpc.RpcError) as unknown:
            _bus_scan(channel, transit_card="TJ-PLAIN-000999", temperature_celsius=36.5)
    assert by_card.decision == partners_pb2.BUS_DECISION_PASS
    assert by_card.masked_card.endswith("5678") and CARD not in by_card.masked_card
    assert by_card.masked_name.startswith("王")
    (logged,) = world.rows(
        "SELECT kind, context, route, masked_name FROM display_events WHERE id = ?",
        by_card.scan_id,
    )
    assert logged == ("lookup", "bus", "8", by_card.masked_name)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(unknown.value) == "CARD_NOT_LINKED"
    # The refused attempt is logged too, naming no one.
    assert ("lookup", "bus", "8", None) in world.rows(
        "SELECT kind, context, route, person_key FROM display_events "
        "WHERE outcome = 'CARD_NOT_LINKED'"
    )
    assert "show" in (unknown.value.details() or "")
    raw = b"".join(p.read_bytes() for p in (world.stack.data_dir / "display").glob("display.db*"))
    assert CARD.encode() not in raw and b"TJ-PLAIN-000999" not in raw
    assert CARD not in world.stack.log_path("display").read_text(encoding="utf-8")


def _try_card(channel: grpc.Channel, card: str) -> partners_pb2.BusScanResponse | str:
    try:
        return _bus_scan(channel, transit_card=card, temperature_celsius=36.4)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return f"{error.code().name}: {error.details()}"


# --- hospital triage -------------------------------------------------------------------------


def _triage(channel: grpc.Channel, id_number: str) -> partners_pb2.TriageResponse:
    return partners_pb2_grpc.PartnerServiceStub(channel).Triage(
        partners_pb2.TriageRequest(
            patient=common_pb2.PersonRef(id_number=id_number),
            desk=display_pb2.Device(device_id="triage-2", place="Nankai Hospital pre-check"),
        ),
        timeout=10,
    )


def test_hospital_triage_separates_general_and_key_patients(world: World) -> None:
    with world.channel_as("partner-hospital") as channel:
        general = _triage(channel, GREEN_P)
        contact = _triage(channel, RED_P)
        fever = _triage(channel, FEVER_P)
    assert general.group == partners_pb2.TRIAGE_GROUP_GENERAL
    assert general.reason_category == "" and general.colour == common_pb2.COLOUR_GREEN
    assert contact.group == partners_pb2.TRIAGE_GROUP_KEY
    assert (contact.colour, contact.reason_category) == (common_pb2.COLOUR_RED, "close contact")
    assert fever.group == partners_pb2.TRIAGE_GROUP_KEY
    assert fever.reason_category == "fever or symptoms"
    (logged,) = world.rows(
        "SELECT kind, outcome, context, actor, device, colour FROM display_events WHERE id = ?",
        contact.lookup_id,
    )
    assert logged == ("lookup", "OK", "hospital", "partner:demo", "triage-2", 2)


def test_a_wrong_check_digit_is_invalid_argument_saying_so(world: World) -> None:
    wrong = SPARE[:-1] + ("0" if SPARE[-1] != "0" else "1")
    with world.channel_as("partner-hospital") as channel, pytest.raises(grpc.RpcError) as bad:
        _triage(channel, wrong)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = bad.value.details() or ""
    assert "patient.id_number" in details and "check character" in details
    assert wrong not in details


def test_a_partner_of_the_wrong_kind_is_refused(world: World) -> None:
    with world.channel_as("partner-hospital") as channel, pytest.raises(grpc.RpcError) as bus:
        _bus_scan(channel, token=world.show(GREEN_P).token)
    with world.channel_as(BUS_OPERATOR) as channel, pytest.raises(grpc.RpcError) as hospital:
        _triage(channel, GREEN_P)
    with world.channel_as_verifier("venue") as channel, pytest.raises(grpc.RpcError) as venue:
        _triage(channel, GREEN_P)
    with world.channel_as("partner-cold-chain") as channel, pytest.raises(grpc.RpcError) as cc:
        _bus_scan(channel, transit_card=CARD)
    for refused in (bus, hospital, venue, cc):
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(refused.value) == "WRONG_PARTNER"
    assert "bus_operator" in (bus.value.details() or "")


# --- the CLI ---------------------------------------------------------------------------------


def _invoke(stack: Stack, *args: str) -> tuple[int, str]:
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        ["--declaration", p.declaration, "--risk-index", p.risk_index, "--colour", p.colour,
         "--display", p.display, *args],
    )  # fmt: skip
    return result.exit_code, result.output


def test_the_cli_scans_at_a_bus_and_triages_at_a_hospital(world: World) -> None:
    code, out = _invoke(
        world.stack, "bus-scan", world.show(RED_P).token, "--temperature", "36.7",
        "--vehicle", "津A·7", "--route", "632",
    )  # fmt: skip
    assert code == 0, out
    assert "ALERT" in out and "RED" in out and "code not green" in out and "route 632" in out
    code, out = _invoke(world.stack, "triage", FEVER_P, "--desk", "cli-desk")
    assert code == 0, out
    assert "KEY GROUP" in out and "fever or symptoms" in out and FEVER_P not in out
    code, out = _invoke(world.stack, "bus-scan", "--card", "TJ-NOBODY-1")
    assert code == 1 and "NOT_FOUND" in out


def test_a_printed_card_gets_the_same_context_verdict(world: World) -> None:
    with open_channel(world.stack.peers.declaration) as channel:
        issued = declaration_pb2_grpc.DeclarationServiceStub(channel).IssuePrintedCard(
            declaration_pb2.IssuePrintedCardRequest(
                actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="desk-2"),
                person=common_pb2.PersonRef(id_number=RED_P),
            )
        )
    assert issued.token.startswith("HCC1:")
    with world.channel_as_verifier("exam") as channel:
        scanned = display_pb2_grpc.DisplayServiceStub(channel).Scan(
            display_pb2.ScanRequest(token=issued.token, device=DEVICE), timeout=10
        )
    assert (scanned.context, scanned.decision) == ("exam", display_pb2.SCAN_DECISION_REFER)
    assert list(scanned.verdict.reasons) == [] and scanned.verdict.colour == common_pb2.COLOUR_RED
    with world.channel_as(BUS_OPERATOR) as channel:
        at_bus = _bus_scan(channel, token=issued.token, temperature_celsius=36.5)
    assert at_bus.decision == partners_pb2.BUS_DECISION_ALERT


def test_a_restarted_display_still_knows_the_card(world: World) -> None:
    # Last in this module: it restarts the module's display.
    stack = world.stack
    assert stack.stop_one("display") == 0
    stack.start(("display",))
    stack.wait_healthy(timeout_s=60)
    with world.channel_as_verifier("bus") as channel:
        again = eventually(
            "a card scan after the restart",
            lambda: _try_card(channel, CARD),
            lambda r: isinstance(r, partners_pb2.BusScanResponse),
        )
    assert isinstance(again, partners_pb2.BusScanResponse)
    assert again.decision == partners_pb2.BUS_DECISION_PASS and again.masked_card.endswith("5678")
