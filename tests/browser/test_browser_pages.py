"""The mini-program stand-in in real headless Chromium (issue 11, item 3): a person signs in by
SMS code, registers an elderly relative, declares for them and shows their live code, which the
page replaces before it expires; a verifier pastes the code, sees the verdict, and a second scan
of the same code is refused with a clear message. Screenshots: test-artifacts/browser/."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import grpc
from healthcode.v1 import (
    account_pb2,
    account_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    partners_pb2,
    partners_pb2_grpc,
)
from playwright.sync_api import Page, expect

from clients import feedgen
from clients.channel import open_channel
from clients.stack import Stack
from services._common.auth import Security
from services._common.status import reason_of
from tests.browser.support import TOKEN_TTL_S, screenshot

ME, RELATIVE, COUGHING = feedgen.synthetic_id_numbers(3, 2024)
MY_PHONE, COUGHING_PHONE = "13600136011", "13500135022"
GATE, GATE_PASSWORD = "gate-3", "the gate three password"
# Bounded waits (never asserted on): a page's own refresh comes within one token life.
WAIT_MS = 15_000
REFRESH_WAIT_MS = (TOKEN_TTL_S + 30) * 1000


def _register(stack: Stack, id_number: str, phone: str) -> None:
    """A person known to the platform with their phone (signing in needs one), and the gate's
    verifier account (both idempotent: each test may call it)."""
    with open_channel(stack.peers.declaration) as channel:
        declaration_pb2_grpc.DeclarationServiceStub(channel).Register(
            declaration_pb2.RegisterRequest(
                actor=common_pb2.Actor(
                    role=common_pb2.ACTOR_ROLE_CITIZEN,
                    person=common_pb2.PersonRef(id_number=id_number),
                ),
                name="张伟",
                id_number=id_number,
                phones=[phone],
            )
        )
        account_pb2_grpc.AccountServiceStub(channel).CreateStaffAccount(
            account_pb2.CreateStaffAccountRequest(
                principal=GATE,
                role=account_pb2.STAFF_ROLE_VERIFIER,
                context="venue",
                password=GATE_PASSWORD,
            )
        )


def _sign_in(page: Page, stack: Stack, id_number: str, phone: str) -> None:
    page.goto(f"{stack.gateway_url}/person")
    page.fill("#id-number", id_number)
    page.fill("#phone", phone)
    page.click("#request-code")
    # A development stack (HEALTHCODE_SMS=reply) returns the code, and the page fills it in.
    expect(page.locator("#dev-code-note")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#sms-code")).to_have_value(re.compile(r"^\d{6}$"))
    expect(page.locator("#sign-in-message")).to_contain_text(f"{phone[:3]}****{phone[-4:]}")
    page.click("#sign-in-button")
    expect(page.locator("#signed-in")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#me-masked")).to_have_text(f"{id_number[:2]}{'*' * 14}{id_number[-2:]}")
    # The raw ID number is gone from the form once signed in.
    assert id_number not in page.content()


def test_a_family_member_registers_a_relative_declares_and_shows_a_live_code_a_verifier_scans_once(
    browser_stack: Stack, new_page: Callable[[], Page]
) -> None:
    _register(browser_stack, ME, MY_PHONE)
    page = new_page()
    _sign_in(page, browser_stack, ME, MY_PHONE)
    screenshot(page, "1-signed-in")

    # A wrong ID number: the field to fix, as the declaration service names it.
    page.fill("#reg-name", "张秀英")
    page.fill("#reg-id-number", "110101190001011234")
    page.click("#register-button")
    message = page.locator("#register-message")
    expect(message).to_have_attribute("data-kind", "error", timeout=WAIT_MS)
    expect(message).to_contain_text("id_number")
    screenshot(page, "2-register-error")

    # An elderly relative without a phone, registered by the family member.
    page.fill("#reg-name", "张秀英")
    page.fill("#reg-id-number", RELATIVE)
    page.click("#register-button")
    expect(message).to_have_attribute("data-kind", "ok", timeout=WAIT_MS)
    expect(message).to_contain_text("张**")
    relative = page.locator("#people input[type=radio]:checked")
    expect(page.locator("#people")).to_contain_text("张**")
    expect(relative).to_have_count(1)
    expect(page.locator("#code-for")).to_contain_text("张**")

    page.fill("#temperature", "36.4")
    page.click("#declare-button")
    expect(page.locator("#declare-message")).to_contain_text("Declared for", timeout=WAIT_MS)

    page.click("#show-button")
    code = page.locator("#code")
    expect(code).to_be_visible(timeout=WAIT_MS)
    expect(code).to_have_attribute("data-colour", "green")
    expect(page.locator("#colour-label")).to_have_text("绿码 Green")
    expect(page.locator("#masked-name")).to_have_text("张**")
    # The QR image is the gateway's SVG in the code's colour, drawn from the token on screen.
    page.wait_for_function("() => document.getElementById('qr').naturalWidth > 0", timeout=WAIT_MS)
    svg = page.evaluate("window.healthCode.svg")
    assert "<svg" in svg and "#0a6b2d" in svg
    first = page.evaluate("window.healthCode.token")
    assert first.startswith("HCN1:") and code.get_attribute("data-token") == first
    screenshot(page, "3-code")

    # The page fetches a new code before the one on screen expires.
    page.wait_for_function("() => window.healthCode.rotations.length >= 1", timeout=REFRESH_WAIT_MS)
    rotation = page.evaluate("window.healthCode.rotations[0]")
    assert rotation["replacedAt"] < rotation["oldExpiresAt"]
    second = page.evaluate("window.healthCode.token")
    assert second.startswith("HCN1:") and second != first
    expect(code).to_have_attribute("data-token", second)
    screenshot(page, "4-code-refreshed")

    # A verifier at the gate signs in and pastes the code (a fresh one: read after a refresh).
    gate = _verifier(new_page(), browser_stack)
    gate.fill("#scan-token", second)
    gate.click("#scan-button")
    verdict = gate.locator("#verdict")
    expect(verdict).to_have_attribute("data-decision", "pass", timeout=WAIT_MS)
    expect(gate.locator("#decision")).to_have_text("通行 Pass")
    expect(gate.locator("#verdict-name")).to_have_text("张**")
    # No reasons or sources for a verifier, whatever the reply carried.
    shown_fields = gate.locator("#verdict-fields dt").all_inner_texts()
    assert not [f for f in shown_fields if re.search("reason|source|remed", f, re.IGNORECASE)]
    # ... only the facts a gate needs, in its words.
    assert "码色 Colour" in shown_fields and "场所 Where" in shown_fields, shown_fields
    expect(gate.locator("#verdict-fields")).to_contain_text("绿码 Green")
    screenshot(gate, "5-verdict")

    # The same code again: a copied code, refused with a message a gatekeeper understands.
    gate.click("#scan-button")
    expect(verdict).to_have_attribute("data-reason", "TOKEN_REPLAYED", timeout=WAIT_MS)
    expect(verdict).to_have_attribute("data-decision", "refused")
    expect(gate.locator("#decision")).to_have_text("拒绝 Refused")
    expect(gate.locator("#verdict-name")).to_contain_text("已被扫描过")
    expect(gate.locator("#verdict-note")).to_contain_text("Already scanned once")
    screenshot(gate, "6-scanned-twice")


def _verifier(page: Page, stack: Stack) -> Page:
    page.goto(f"{stack.gateway_url}/verifier")
    page.fill("#principal", GATE)
    page.fill("#password", GATE_PASSWORD)
    page.click("#staff-sign-in-button")
    expect(page.locator("#scan")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#staff-who")).to_contain_text("venue")
    return page


def test_a_person_declaring_a_cough_shows_a_yellow_code_a_verifier_does_not_pass(
    browser_stack: Stack, new_page: Callable[[], Page]
) -> None:
    _register(browser_stack, COUGHING, COUGHING_PHONE)
    page = new_page()
    _sign_in(page, browser_stack, COUGHING, COUGHING_PHONE)

    # Registering oneself again (the page offers it): a replay, said so.
    page.check("input[name=register-for][value=self]")
    expect(page.locator("#reg-id-number")).to_have_value(COUGHING)
    page.fill("#reg-name", "张伟")
    page.click("#register-button")
    message = page.locator("#register-message")
    expect(message).to_contain_text("Already registered", timeout=WAIT_MS)
    expect(page.locator("#code-for")).to_contain_text("张*")

    page.check("input[name=symptom][value=SYMPTOM_COUGH]")
    page.click("#declare-button")
    expect(page.locator("#declare-message")).to_contain_text("Declared for", timeout=WAIT_MS)

    # The declaration reaches the colour within moments; the holder presses Show until then.
    code = page.locator("#code")
    deadline = time.monotonic() + 30
    while True:
        page.click("#show-button")
        expect(code).to_be_visible(timeout=WAIT_MS)
        if code.get_attribute("data-colour") == "yellow" or time.monotonic() > deadline:
            break
        page.wait_for_timeout(300)
    expect(code).to_have_attribute("data-colour", "yellow")
    expect(page.locator("#colour-label")).to_have_text("黄码 Yellow")
    assert "#8a6100" in page.evaluate("window.healthCode.svg")
    screenshot(page, "7-yellow-code")

    gate = _verifier(new_page(), browser_stack)
    gate.fill("#scan-token", page.evaluate("window.healthCode.token"))
    gate.click("#scan-button")
    verdict = gate.locator("#verdict")
    expect(verdict).to_have_attribute("data-decision", re.compile("refer|deny"), timeout=WAIT_MS)
    # The page shows the decision Scan made for this workplace (refer or deny: the display
    # service's choice), and its words for it.
    decision = verdict.get_attribute("data-decision")
    expect(gate.locator("#decision")).to_have_text(
        {"refer": "请核查 Refer", "deny": "禁止通行 Deny"}[str(decision)]
    )
    expect(gate.locator("#verdict-name")).to_have_text("张*")
    # The cough is the holder's business: the gate sees no reason for the colour.
    assert "ough" not in verdict.inner_text()
    screenshot(gate, "8-verdict-not-passed")

    # A hospital triages the person by ID number; the page shows who looked them up, and
    # withdrawing that hospital's access refuses its next triage (issue 11, item 11).
    assert _triage(browser_stack, COUGHING) == ""
    page.click("#consent-button")
    accesses = page.locator(".consent-access")
    expect(accesses).to_have_count(1, timeout=WAIT_MS)
    expect(accesses.first).to_contain_text("partner:demo")
    expect(accesses.first).to_contain_text("hospital triage")
    assert COUGHING not in page.content()
    page.click("button[data-partner='partner:demo'][data-action=revoke]")
    expect(page.locator("#consent-message")).to_contain_text("Access withdrawn", timeout=WAIT_MS)
    expect(page.locator("button[data-partner='partner:demo']")).to_have_attribute(
        "data-action", "restore"
    )
    screenshot(page, "9-who-looked-me-up")
    assert _triage(browser_stack, COUGHING) == "CONSENT_REVOKED"


def _triage(stack: Stack, id_number: str) -> str:
    """A triage by the development hospital's certificate: "" when answered, else the reason."""
    security = Security.load(stack.credentials_dir, "partner-hospital")
    with grpc.secure_channel(stack.peers.display, security.channel_credentials()) as channel:
        try:
            partners_pb2_grpc.PartnerServiceStub(channel).Triage(
                partners_pb2.TriageRequest(
                    patient=common_pb2.PersonRef(id_number=id_number),
                    desk=display_pb2.Device(device_id="triage-1", place="pre-check"),
                ),
                timeout=10,
            )
        except grpc.RpcError as error:
            return reason_of(error) or str(error)
    return ""
