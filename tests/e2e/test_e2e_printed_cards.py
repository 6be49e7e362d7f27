"""Printed cards across the real processes (R3, issue 11, item 4): a family member registers her
mother, who has no smartphone, and gets her a card; a verifier scans it again and again, always
for the live colour (a close-contact feed turns the next scan red); the daughter revokes it
through the CLI and the next scan fails with CARD_REVOKED; a reissue voids the old card and the
new one scans. The CLI writes the card as PNG and PDF; the QR code in the PNG is checked module
by module against segno's matrix of the card's token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)
from PIL import Image
from typer.testing import CliRunner

from clients import cli, cli_cards, feedgen
from clients.channel import open_channel
from clients.stack import Stack
from services.display.cards import encode_card
from services.display.keyring import read_keys
from tests import pg
from tests.e2e.waits import eventually, today
from tests.support import refusal

T = TypeVar("T")
MOTHER, DAUGHTER, SON = feedgen.synthetic_id_numbers(3, 8181)
HER = common_pb2.PersonRef(id_number=MOTHER)
DAUGHTER_ACTS = common_pb2.Actor(
    role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=common_pb2.PersonRef(id_number=DAUGHTER)
)
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-9")
FEED = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="health-commission")
GATE = display_pb2.Device(device_id="gate-9-scanner", place="Heping district clinic")
AS_DAUGHTER = ["--id-number", MOTHER, "--by", "family-proxy", "--proxy-id", DAUGHTER]


def invoke(stack: Stack, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["--declaration", stack.peers.declaration, *args])
    return result.exit_code, result.output


def _try(call: Callable[[], T]) -> T | str:
    try:
        return call()
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            return f"UNAVAILABLE: {e.details()}"
        raise


def token_of(stack: Stack, card: declaration_pb2.PrintedCard) -> str:
    """A card's token as the service signed it (Ed25519 and the CBOR are deterministic), from
    the stack's card key: how the test reads a card the CLI wrote only as a picture."""
    [key] = [k for k in read_keys(stack.data_dir / "declaration" / "card-keys")]
    return encode_card(
        card.card_id,
        card.person_key,
        card.issued_at.ToMilliseconds(),
        card.expires_at.ToMilliseconds(),
        key,
    )


def assert_png_holds(png: Path, token: str) -> None:
    """The PNG's QR code is segno's matrix of `token`, module by module (no QR decoder is
    installed here: zbar, OpenCV and zxing are not)."""
    image = Image.open(png).convert("L")
    left, top, module = cli_cards.qr_module_size_px(token)
    matrix = cli_cards.qr_code(token).matrix
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            centre = (left + c * module + module // 2, top + r * module + module // 2)
            pixel = image.getpixel(centre)
            assert isinstance(pixel, int)
            assert (pixel < 128) == bool(dark), (r, c)


def test_a_printed_card_scans_live_until_revoked_and_a_reissue_voids_the_old(
    stack: Stack, tmp_path: Path
) -> None:
    peers = stack.peers
    with (
        open_channel(peers.declaration) as dch,
        open_channel(peers.display) as pch,
        open_channel(peers.risk_index) as rch,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(dch)
        display = display_pb2_grpc.DisplayServiceStub(pch)
        risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(rch)

        registered = declaration.Register(
            declaration_pb2.RegisterRequest(actor=DAUGHTER_ACTS, name="刘淑珍", id_number=MOTHER)
        )
        assert registered.created
        issued = declaration.IssuePrintedCard(
            declaration_pb2.IssuePrintedCardRequest(actor=DAUGHTER_ACTS, person=HER)
        )
        first = issued.token
        assert first.startswith("HCC1:") and not issued.HasField("replaced")
        assert issued.card.state == declaration_pb2.PRINTED_CARD_STATE_LIVE
        assert issued.card.mandate_id > 0 and issued.card.masked_name == "刘**"

        def scan(token: str) -> display_pb2.ScanResponse:
            return display.Scan(display_pb2.ScanRequest(actor=VERIFIER, token=token, device=GATE))

        # The registration reaches the display's replica with the risk index's next version.
        green = eventually(
            "the card's first scan", lambda: _try(lambda: scan(first)),
            lambda r: isinstance(r, display_pb2.ScanResponse),
        )  # fmt: skip
        assert isinstance(green, display_pb2.ScanResponse)
        assert green.verdict.colour == common_pb2.COLOUR_GREEN
        assert green.masked_name == registered.person.masked_name
        # Not single-use: the same card scans again, for the live colour again.
        again = scan(first)
        assert again.verdict.colour == common_pb2.COLOUR_GREEN
        assert again.scan_id != green.scan_id

        # A close-contact row turns her red: the next scan of the same card says so.
        risk_index.IngestBatch(
            risk_index_pb2.IngestBatchRequest(
                actor=FEED,
                source="close_contact",
                batch_id="cdc-cards-001",
                rows=[risk_index_pb2.FeedRow(id_number=MOTHER, day=today())],
            )
        )
        eventually(
            "the card to scan red", lambda: scan(first).verdict.colour,
            lambda c: c == common_pb2.COLOUR_RED,
        )  # fmt: skip

        # The daughter reports the card lost (CLI); its next scan is refused, saying what to do.
        code, output = invoke(stack, "card", "revoke", *AS_DAUGHTER, "--reason", "lost on bus")
        assert code == 0, output
        assert f"card {issued.card.short_id}" in output and "revoked" in output
        refused = refusal(lambda: scan(first))
        assert refused is not None
        status, message, reason = refused
        assert (status, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CARD_REVOKED")
        assert issued.card.short_id in message and "community office" in message

        # A new card (the support desk's, by gRPC) scans; the revoked one still does not.
        support = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="desk-2")
        second = declaration.IssuePrintedCard(
            declaration_pb2.IssuePrintedCardRequest(actor=support, person=HER)
        )
        assert not second.HasField("replaced")  # the first was revoked already
        assert scan(second.token).verdict.colour == common_pb2.COLOUR_RED

        # Reissued through the CLI as a PNG: the second card is void, the new one scans.
        png = tmp_path / "card.png"
        code, output = invoke(stack, "card", "issue", *AS_DAUGHTER, "--png", "--out", str(png))
        assert code == 0, output
        assert f"card {second.card.short_id} is revoked" in output
        refused = refusal(lambda: scan(second.token))
        assert refused is not None and refused[2] == "CARD_REVOKED"
        listed = declaration.ListPrintedCards(
            declaration_pb2.ListPrintedCardsRequest(actor=DAUGHTER_ACTS, person=HER)
        ).cards
        third = listed[0]
        assert third.state == declaration_pb2.PRINTED_CARD_STATE_LIVE
        assert [c.state for c in listed[1:]] == [declaration_pb2.PRINTED_CARD_STATE_REVOKED] * 2
        third_token = token_of(stack, third)
        assert_png_holds(png, third_token)
        assert scan(third_token).verdict.colour == common_pb2.COLOUR_RED

        # And as a PDF: a credit-card-sized page.
        pdf = tmp_path / "card.pdf"
        code, output = invoke(stack, "card", "issue", *AS_DAUGHTER, "--out", str(pdf))
        assert code == 0, output
        content = pdf.read_bytes()
        assert content.startswith(b"%PDF-")
        assert b"/MediaBox [0 0 242.65 153.07]" in content  # 85.6 x 54 mm, in points

        # The list, through the CLI, is masked: no raw ID number anywhere.
        code, output = invoke(stack, "card", "list", *AS_DAUGHTER)
        assert code == 0, output
        assert third.short_id in output and "revoked" in output and "live" in output
        assert MOTHER not in output and DAUGHTER not in output

        # Another relative without a mandate may not revoke it.
        son = common_pb2.Actor(
            role=common_pb2.ACTOR_ROLE_FAMILY_PROXY,
            person=common_pb2.PersonRef(id_number=SON),
        )
        refused = refusal(
            lambda: declaration.RevokePrintedCard(
                declaration_pb2.RevokePrintedCardRequest(actor=son, person=HER)
            )
        )
        assert refused is not None
        assert (refused[0], refused[2]) == (grpc.StatusCode.PERMISSION_DENIED, "NO_MANDATE")

    # The display log names each card scan by the card's id (its first 8 bytes), never the
    # person's number; the refused scans are logged with why.
    display_log = pg.stack_place(
        stack.extra_env, stack.data_dir / "display" / "display.db", "display"
    )
    events = pg.rows(
        display_log, "SELECT outcome, token_id, masked_id FROM display_events WHERE kind = 'scan'"
    )
    dumped = pg.dump(display_log)
    first_card = issued.card.card_id[:8]
    ok = [t for outcome, t, _ in events if outcome == "OK" and t is not None]
    assert sum(1 for t in ok if t[:8] == first_card) >= 3
    assert any(t[:8] == third.card_id[:8] for t in ok)
    assert {o for o, _, _ in events} >= {"OK", "CARD_REVOKED"}
    assert MOTHER not in dumped and DAUGHTER not in dumped
