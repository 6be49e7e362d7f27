"""Privacy (R15, issue 10): a full scenario through the four real processes leaves no raw ID
number or phone number anywhere: not in any file of the data directory (SQLite databases and
their WAL files, snapshots, keys, logs), not in any log line, not in any exported span.

The scenario registers people with phones, takes feed batches naming them by ID number and by
phone, daily declarations, shows and scans codes (a replay, a forged token, a look-up by ID
card), explains colours, runs a what-if and reads the status pages; then the stack stops
cleanly and every byte it left is searched for every number used: as ASCII, as UTF-16-LE, as
the hex of its ASCII bytes (a sloppy hex encoding), as a big-endian integer (how SQLite would
keep a number stored as INTEGER), and an ID number ending in X also with a lower-case x. A
mistyped ID number (a bad check digit) and numbers typed into free-text fields (a place, a
travel note) are searched for too. A failure names the file, the encoding and the offset, and
the number masked, never raw.

Metrics: the Prometheus endpoints are scraped with the same patterns and encodings by
tests/e2e/test_e2e_metrics.py (a stack with metrics on); whatever metrics text a service writes
into its data directory is covered by the file scan here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from healthcode.v1 import (
    account_pb2,
    account_pb2_grpc,
    cold_chain_pb2,
    cold_chain_pb2_grpc,
    colour_pb2,
    common_pb2,
    consent_pb2,
    consent_pb2_grpc,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    partners_pb2,
    partners_pb2_grpc,
    risk_index_pb2,
)

from clients import feedgen
from clients.channel import open_channel
from clients.credentials import for_target
from clients.stack import Stack
from services._common.logs import redact
from services.rules import DEFAULT_RULE_SET_PATH
from tests.e2e.rules_support import ADMIN, VERIFIER, Stubs, citizen, ref, stubs
from tests.e2e.waits import eventually
from tests.support import running_stack

BINHAI = 120116  # graded high-risk below: telecom roaming there turns a holder's code
# Four people: 0 and 1 with two phones (a second SIM), 2 with one, 3 with none at first (one
# is added later). Person 2's number ends in X and is registered with a lower-case x.
_IDS = feedgen.synthetic_id_numbers(60, 2024)
IDS = [*_IDS[:2], next(i for i in _IDS if i.endswith("X")), _IDS[3]]
PHONES = feedgen.synthetic_phones(6, 2024)
HOLDINGS = {IDS[0]: PHONES[0:2], IDS[1]: PHONES[2:4], IDS[2]: PHONES[4:5], IDS[3]: []}
ADDED_PHONE = PHONES[5]
# A mistyped number: the right shape, a wrong check digit (refused at the edge).
MISTYPED = IDS[0][:17] + ("0" if IDS[0][17] != "0" else "1")
DRAFT = (
    DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8")
    .replace('version = "2020.12.16-tianjin"', 'version = "2021.01.06-privacy-draft"')
    .replace(
        'id = "secondary-contact"\ncolour = "yellow"', 'id = "secondary-contact"\ncolour = "red"'
    )
)
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
# What grpc's C core writes to stderr itself (not Python logging, so not JSON); searched as
# bytes with the rest of the file all the same.
_NATIVE = re.compile(r"^([EWIF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)")
SUPPORT = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="support-desk-9")


@dataclass(frozen=True)
class Needle:
    """One way a number may have been written: the bytes to look for and how to say it."""

    label: str  # the number masked, and the encoding
    data: bytes


def _needles(number: str) -> list[Needle]:
    masked = redact(number) if redact(number) != number else number[:2] + "*" * (len(number) - 2)
    forms = {number}
    if number[-1] in "Xx":
        forms |= {number[:-1] + "X", number[:-1] + "x"}
    out: list[Needle] = []
    for form in sorted(forms):
        tail = f"{masked[:-1]}{form[-1]}" if form[-1] in "Xx" else masked
        ascii_bytes = form.encode("ascii")
        out += [
            Needle(f"{tail} (ASCII)", ascii_bytes),
            Needle(f"{tail} (UTF-16-LE)", form.encode("utf-16-le")),
            # Digits and X/x are 0x30-0x39, 0x58, 0x78: one hex form, whatever the case.
            Needle(f"{tail} (hex of ASCII)", ascii_bytes.hex().encode()),
        ]
    digits = number if number.isdigit() else number[:-1]
    value = int(digits)
    for width in (6, 8):  # SQLite's integer widths that can hold 11 to 18 digits
        if value < 1 << (8 * width - 1):
            out.append(
                Needle(f"{masked} (int{8 * width} big-endian)", value.to_bytes(width, "big"))
            )
    return out


NUMBERS = [*IDS, *PHONES, MISTYPED]
# A real-name transit card (R11), linked to IDS[3] and read on a bus: its number is hashed at
# the edge like an ID number's.
CARD = "TJ-ELDER-0098765432"
NEEDLES = [
    *(n for number in NUMBERS for n in _needles(number)),
    Needle("transit card (ASCII)", CARD.encode()),
    Needle("transit card digits (ASCII)", CARD[-10:].encode()),
]


def _hits(data: bytes) -> Iterator[tuple[Needle, int]]:
    for needle in NEEDLES:
        at = data.find(needle.data)
        if at >= 0:
            yield needle, at


@pytest.fixture
def privacy_stack(tmp_path: Path) -> Iterator[Stack]:
    """The four services, two display workers (their own logs and the shared file), every
    span recorded and exported to a file in the data directory, debug logs. The test stops
    it itself, to read every file the services leave."""
    data_dir = tmp_path / "data"
    env = {
        "HEALTHCODE_LOG_LEVEL": "DEBUG",
        "HEALTHCODE_LOG_FORMAT": "json",
        "HEALTHCODE_DISPLAY_PROCESSES": "2",
        "OTEL_TRACES_SAMPLER": "always_on",
        "HEALTHCODE_TRACE_FILE": str(data_dir / "logs" / "spans.jsonl"),
    }
    yield from running_stack(data_dir, env)


def _scenario(s: Stubs) -> dict[str, int]:
    """Everything a day of the platform does with these people; what it got, to check."""
    got: dict[str, int] = {}
    for n, (id_number, phones) in enumerate(HOLDINGS.items()):
        # Person 2 types their X in lower case.
        typed = id_number.lower() if n == 2 else id_number
        s.declaration.Register(
            declaration_pb2.RegisterRequest(
                actor=citizen(typed), name=f"隐私{n}", id_number=typed, phones=phones
            )
        )
    s.declaration.AddPhone(
        declaration_pb2.AddPhoneRequest(
            actor=citizen(IDS[3]), person=ref(IDS[3]), phone=ADDED_PHONE
        )
    )
    s.wait_registered(len(HOLDINGS), len(PHONES))
    today = dt.datetime.now(SHANGHAI).date()

    # Daily declarations. A travel note with a phone number typed into it is refused (the
    # refusal must not keep the number either); the person declares again without it.
    for n, id_number in enumerate(IDS):
        request = declaration_pb2.DeclareRequest(
            actor=citizen(id_number), person=ref(id_number), temperature_celsius=36.5 + n / 2
        )
        if n == 1:
            request.visits.add(
                county=BINHAI, day=today.isoformat(), place=f"于家堡, 联系 {PHONES[2]}"
            )
            with pytest.raises(grpc.RpcError) as refused:
                s.declaration.Declare(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            _not_echoed(PHONES[2], refused.value)
            request.visits[0].place = "于家堡"
        s.declaration.Declare(request)

    # Feeds by ID number and by phone; a county graded high for the telecom rows.
    s.grade_counties({BINHAI: int(common_pb2.COUNTY_RISK_LEVEL_HIGH)})
    rows = [
        feedgen.row("close_contact", id_number=IDS[0], day=today),
        feedgen.row("secondary_contact", id_number=IDS[2], day=today),
        feedgen.row("telecom_roaming", phone=PHONES[3], day=today, county=BINHAI),
        feedgen.row("telecom_roaming", phone=ADDED_PHONE, day=today, county=BINHAI),
        feedgen.row("nat_negative", id_number=IDS[3], day=today),
    ]
    s.ingest(rows, "privacy-2021-01-06")
    version = s.wait_colour()

    # Shows and scans; a place typed with a phone number in it; a replay; a forged token; a
    # look-up by ID card; a mistyped number.
    device = display_pb2.Device(device_id="privacy-gate", place=f"东站 值班 {PHONES[0]}")
    tokens = []
    for id_number in IDS:
        # Each display worker follows the risk index on its own: read the version just made.
        shown = s.display.Show(
            display_pb2.ShowRequest(
                actor=citizen(id_number),
                person=ref(id_number),
                device=device,
                min_index_version=version,
            ),
            timeout=30,
        )
        tokens.append(shown.token)
        scanned = s.display.Scan(
            display_pb2.ScanRequest(actor=VERIFIER, token=shown.token, device=device)
        )
        assert scanned.verdict.colour == shown.verdict.colour
        got["scans"] = got.get("scans", 0) + 1
        got[f"colour{shown.verdict.colour}"] = got.get(f"colour{shown.verdict.colour}", 0) + 1
    with pytest.raises(grpc.RpcError) as replay:
        s.display.Scan(display_pb2.ScanRequest(actor=VERIFIER, token=tokens[0], device=device))
    assert replay.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError):
        s.display.Scan(
            display_pb2.ScanRequest(actor=VERIFIER, token=tokens[1][:-4] + "AAAA", device=device)
        )
    looked_up = s.display.Scan(
        display_pb2.ScanRequest(actor=VERIFIER, person=ref(IDS[1]), device=device)
    )
    assert looked_up.verdict.colour == common_pb2.COLOUR_RED  # roaming in a high-risk county
    with pytest.raises(grpc.RpcError) as mistyped:
        s.display.Show(
            display_pb2.ShowRequest(actor=citizen(MISTYPED), person=ref(MISTYPED), device=device)
        )
    _not_echoed(MISTYPED, mistyped.value)
    with pytest.raises(grpc.RpcError) as mistyped:
        s.declaration.Register(
            declaration_pb2.RegisterRequest(
                actor=citizen(MISTYPED), name="错号", id_number=MISTYPED, phones=[PHONES[0]]
            )
        )
    _not_echoed(MISTYPED, mistyped.value)

    # The support desk, the what-if, the status pages.
    for id_number in IDS[:3]:
        explained = s.colour.Explain(
            colour_pb2.ExplainRequest(actor=SUPPORT, person=ref(id_number))
        )
        got["explained_rules"] = got.get("explained_rules", 0) + len(explained.rules)
    whatif = s.colour.WhatIf(colour_pb2.WhatIfRequest(actor=ADMIN, text=DRAFT))
    got["whatif_persons"] = int(whatif.person_count)
    got["status_rules"] = len(s.colour.GetStatus(colour_pb2.GetStatusRequest()).rule_ids)
    person = s.declaration.GetPerson(
        declaration_pb2.GetPersonRequest(actor=SUPPORT, person=ref(IDS[1]), recent_declarations=3)
    )
    got["declarations"] = len(person.declarations)
    got["phones_of_1"] = len(person.person.phones)
    sources = s.risk_index.ListSources(risk_index_pb2.ListSourcesRequest()).sources
    got["feed_rows"] = sum(src.row_count for src in sources)
    counters = next(iter(s.display.WatchCounters(display_pb2.WatchCountersRequest())))
    got["displays"] = int(counters.displays)
    return got


def _sign_in(stack: Stack) -> int:
    """A person signs in by SMS code (one wrong code first), and an administrator makes a
    staff account that signs in: the sign-in paths log and store nothing raw either."""
    signed = 0
    id_number, phones = next(iter(HOLDINGS.items()))
    with open_channel(stack.peers.declaration) as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        sent = accounts.RequestSignInCode(
            account_pb2.RequestSignInCodeRequest(id_number=id_number, phone=phones[0])
        )
        wrong = "000000" if sent.development_code != "000000" else "111111"
        with pytest.raises(grpc.RpcError):
            accounts.SignIn(account_pb2.SignInRequest(id_number=id_number, code=wrong))
        signed += bool(
            accounts.SignIn(
                account_pb2.SignInRequest(id_number=id_number, code=sent.development_code)
            ).token
        )
        accounts.CreateStaffAccount(
            account_pb2.CreateStaffAccountRequest(
                actor=ADMIN,
                principal="gate-privacy",
                role=account_pb2.STAFF_ROLE_VERIFIER,
                context="venue",
                password="a long enough password",
            )
        )
        signed += bool(
            accounts.SignInStaff(
                account_pb2.SignInStaffRequest(
                    principal="gate-privacy", password="a long enough password"
                )
            ).token
        )
    return signed


@contextmanager
def _acting(target: str, verifier: str = "", partner: str = "") -> Iterator[None]:
    """The stack's client credentials mint a verifier's token for that workplace, or a
    partner's for that kind, for the calls inside."""
    creds = for_target(target)
    assert creds is not None
    before = (creds.verifier_context, creds.partner_context)
    creds.verifier_context = verifier or before[0]
    creds.partner_context = partner or before[1]
    try:
        yield
    finally:
        creds.verifier_context, creds.partner_context = before


def _edges(stack: Stack) -> dict[str, int]:
    """The surfaces at the edges (issue 11): a printed card issued, scanned and revoked; a bus
    reading a transit card; a hospital's triage and the holder's list of it; a cold-chain event
    naming handlers by ID number and phone; a Show through the browser gateway."""
    got: dict[str, int] = {}
    p = stack.peers
    with (
        open_channel(p.declaration) as dch,
        open_channel(p.display) as pch,
        open_channel(p.risk_index) as rch,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(dch)
        display = display_pb2_grpc.DisplayServiceStub(pch)
        partners = partners_pb2_grpc.PartnerServiceStub(pch)
        consents = consent_pb2_grpc.ConsentServiceStub(dch)
        cold_chain = cold_chain_pb2_grpc.ColdChainServiceStub(rch)

        issued = declaration.IssuePrintedCard(
            declaration_pb2.IssuePrintedCardRequest(actor=citizen(IDS[0]), person=ref(IDS[0]))
        )
        gate = display_pb2.Device(device_id="gate-privacy", place="gate")
        scanned = display.Scan(
            display_pb2.ScanRequest(actor=VERIFIER, token=issued.token, device=gate)
        )
        got["card_scans"] = int(bool(scanned.masked_name))
        declaration.RevokePrintedCard(
            declaration_pb2.RevokePrintedCardRequest(
                actor=citizen(IDS[0]), person=ref(IDS[0]), reason="lost"
            )
        )

        declaration.LinkTransitCard(
            declaration_pb2.LinkTransitCardRequest(
                actor=citizen(IDS[3]), person=ref(IDS[3]), transit_card=CARD
            )
        )
        bus = partners_pb2.BusScanRequest(
            actor=VERIFIER, transit_card=CARD, temperature_celsius=36.5, vehicle="津A·1", route="8"
        )
        with _acting(p.display, verifier="bus"):
            answer = eventually(
                "the card link to reach the display's replica",
                lambda: _try_call(lambda: partners.BusScan(bus)),
                lambda r: not isinstance(r, str),
            )
        got["bus_reads"] = int(bool(answer))
        with _acting(p.display, verifier="hospital"):
            partners.Triage(
                partners_pb2.TriageRequest(actor=VERIFIER, patient=ref(IDS[1]), desk=gate)
            )
        listed = consents.ListPartnerAccess(
            consent_pb2.ListPartnerAccessRequest(actor=citizen(IDS[1]), person=ref(IDS[1]))
        )
        got["look_ups_listed"] = len(listed.accesses)

        partner = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_PARTNER, principal="privacy-cc")
        with _acting(p.risk_index, partner="cold_chain"):
            cold_chain.PostExposure(
                cold_chain_pb2.PostExposureRequest(
                    actor=partner,
                    event_id="privacy-1",
                    product_batch="batch-7",
                    stage=cold_chain_pb2.COLD_CHAIN_STAGE_TRANSPORT,
                    handlers=[
                        cold_chain_pb2.Handler(id_number=IDS[2]),
                        cold_chain_pb2.Handler(phone=PHONES[0]),
                    ],
                    handled_at=Timestamp(seconds=int(time.time()) - 3600),
                )
            )
            people = cold_chain.ListBatchPeople(
                cold_chain_pb2.ListBatchPeopleRequest(actor=partner, product_batch="batch-7")
            )
        got["batch_people"] = len(people.people)

    # A person's Show through the gateway, as the mini-program page calls it (Connect JSON).
    creds = for_target(p.display)
    assert creds is not None
    token = creds.token_for(citizen(IDS[1]))
    body = json.dumps({"person": {"idNumber": IDS[1]}, "device": {"deviceId": "page"}})
    request = urllib.request.Request(
        f"{stack.gateway_url}/healthcode.v1.DisplayService/Show",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        got["gateway_shows"] = int("token" in json.loads(reply.read()))
    return got


def _try_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except grpc.RpcError as e:
        return f"{e.code() if isinstance(e, grpc.Call) else e}"


def test_no_raw_identifier_in_any_file_log_line_or_span(privacy_stack: Stack) -> None:
    stack = privacy_stack
    with stubs(stack) as s:
        got = _scenario(s)
    got["signed_in"] = _sign_in(stack)
    got |= _edges(stack)
    codes = stack.stop()
    assert codes == dict.fromkeys(codes, 0), f"services did not stop cleanly: {codes}"

    # The scenario did something (so an empty directory cannot pass).
    assert got["scans"] == 4 and got["displays"] >= 4 and got["signed_in"] == 2, got
    assert got["colour3"] >= 2, got  # the close contact and the roaming phones' holders
    assert got["explained_rules"] > 0 and got["whatif_persons"] >= 4, got
    assert got["declarations"] >= 1 and got["phones_of_1"] == 2 and got["feed_rows"] >= 5, got
    assert got["card_scans"] == 1 and got["bus_reads"] == 1 and got["look_ups_listed"] >= 1, got
    assert got["batch_people"] == 2 and got["gateway_shows"] == 1, got

    data_dir = stack.data_dir
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert {"display.0.db", "display.1.db", "shared.db", "spans.jsonl"} <= names, names
    databases = [p for p in files if p.suffix in (".db", ".sqlite3")]
    assert {p.parent.name for p in databases} >= {"declaration", "risk_index", "display"}, names
    assert all(p.stat().st_size > 0 for p in databases), names

    # Every file, as bytes: databases, WAL files, snapshots, keys, logs, spans.
    leaks = [
        f"{p.relative_to(data_dir)} at byte {at}: {needle.label}"
        for p in files
        for needle, at in _hits(p.read_bytes())
    ]
    assert not leaks, "raw identifiers found:\n" + "\n".join(leaks)

    # The logs are JSON lines with trace ids, and there is something in them.
    lines = 0
    traced = 0
    for name in ("risk_index", "declaration", "colour", "display"):
        text = stack.log_path(name).read_text(encoding="utf-8")
        records = [
            _json_line(name, n, line)
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not _NATIVE.match(line)
        ]
        assert records, f"the {name} log is empty"
        lines += len(records)
        traced += sum(1 for r in records if "trace_id" in r)
        for r in records:
            assert {"time", "level", "service", "logger", "message"} <= r.keys(), r
    assert lines > 0 and traced > 0, (lines, traced)

    # The exported spans: every service's, parsed, searched once more as text.
    spans = [
        json.loads(line)
        for line in (data_dir / "logs" / "spans.jsonl").read_text("utf-8").splitlines()
    ]
    services = {span["resource"]["attributes"]["service.name"] for span in spans}
    assert {"declaration", "risk_index", "colour", "display"} <= services, services
    span_names = {span["name"] for span in spans}
    assert any(name.endswith("/Scan") for name in span_names), span_names
    span_text = json.dumps(spans, ensure_ascii=False).encode()
    assert not [needle.label for needle, _ in _hits(span_text)]


def _not_echoed(number: str, error: grpc.RpcError) -> None:
    """The refusal does not repeat the number (said without printing it)."""
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    echoed = number in (details or "")
    assert not echoed, f"the refusal repeats {redact(number)}"


def _json_line(name: str, n: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        pytest.fail(f"{name}.log line {n} is not JSON: {redact(line)[:200]}")
    assert isinstance(record, dict)
    return record
