"""DisplayService in process on port 0 with a real channel, in front of a real ColourService
(in process, index installed directly) and a stand-in declaration service for masked names."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import base45
import cbor2
import grpc
import healthcode_matcher as hm
import pytest
from cwt import COSE, COSEKey
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from healthcode.v1 import (
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
)
from nacl.signing import SigningKey

from services._common.days import today
from services._common.identifiers import Identifiers, mask_id_number
from services._common.sources import SOURCES
from services._common.status import field_violations
from services.colour.engine import ColourEngine
from services.colour.logic import ColourDesk
from services.colour.rulestore import compile_rules
from services.colour.servicer import ColourServicer
from services.display.logic import DisplayDesk
from services.display.peers import ColourPeer, DeclarationPeer
from services.display.servicer import DEFAULT_MAX_WATCHERS, SERVICE_NAME, DisplayServicer
from services.display.store import DisplayLog
from services.display.tokens import MAX_TTL_MS, CodeTokens
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, Clock, StartServer

HASHER = hm.Hasher(SECRET)
IDS = hm.synthetic_id_numbers(4, 31).decode().split()
HOLDER, CONTACT, OTHER, UNREGISTERED = IDS
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-7")
GATE = display_pb2.Device(device_id="scanner-7", place="Tianjin West station, gate 7")
PHONE = display_pb2.Device(device_id="phone-1", place="home", county=120101)


def citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


class StandInDeclaration(declaration_pb2_grpc.DeclarationServiceServicer):
    """GetPerson for the registered people, and CheckMandate for proxies: the display
    service's only questions. `mandates`: (proxy person key or grid worker id, person key) ->
    (mandate id, the proxy's masked ID number); `checks` counts the CheckMandate calls."""

    def __init__(self, registered: dict[bytes, str]) -> None:
        self.registered = registered
        self.mandates: dict[tuple[bytes | str, bytes], tuple[int, str]] = {}
        self.checks = 0

    def CheckMandate(
        self, request: declaration_pb2.CheckMandateRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.CheckMandateResponse:
        self.checks += 1
        proxy = request.proxy
        who = proxy.person.person_key if proxy.HasField("person") else proxy.principal
        found = self.mandates.get((who, request.person.person_key))
        if found is None:
            return declaration_pb2.CheckMandateResponse(active=False)
        mandate_id, masked = found
        return declaration_pb2.CheckMandateResponse(
            active=True,
            mandate=declaration_pb2.Mandate(
                mandate_id=mandate_id,
                proxy=declaration_pb2.RecordedActor(role=proxy.role, masked_id_number=masked),
                person_key=request.person.person_key,
            ),
        )

    def GetPerson(
        self, request: declaration_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.GetPersonResponse:
        key = request.person.person_key
        if key not in self.registered:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such person")
        return declaration_pb2.GetPersonResponse(
            person=declaration_pb2.Person(
                person_key=key, masked_name=self.registered[key], masked_id_number="12**3X"
            )
        )


def build_index(close_contacts: list[str], base: hm.Index | None = None) -> hm.Index:
    builder = (base or hm.Index(SECRET)).builder()
    if base is None:
        for name, source in SOURCES.items():
            builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
        for id_number in (HOLDER, CONTACT, OTHER):
            builder.add_person(id_number)
    if close_contacts:
        builder.add_rows_by_identifier(
            "close_contact", close_contacts, [today()] * len(close_contacts)
        )
    return builder.finish()


@dataclass
class Platform:
    engine: ColourEngine
    stub: display_pb2_grpc.DisplayServiceStub
    clock: Clock
    db_path: Path
    tokens: CodeTokens
    declaration: StandInDeclaration

    def show(
        self, id_number: str, actor: common_pb2.Actor | None = None
    ) -> display_pb2.ShowResponse:
        return self.stub.Show(
            display_pb2.ShowRequest(
                actor=actor or citizen(id_number),
                person=common_pb2.PersonRef(id_number=id_number),
                device=PHONE,
            ),
            timeout=10,
        )

    def scan(self, token: str, **kw: Any) -> display_pb2.ScanResponse:
        request = display_pb2.ScanRequest(actor=VERIFIER, token=token, device=GATE, **kw)
        return self.stub.Scan(request, timeout=10)

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db_path) as db:
            return db.execute(sql).fetchall()


@pytest.fixture
def platform(tmp_path: Path, clock: Clock, start_server: StartServer) -> Iterator[Platform]:
    identifiers = Identifiers.from_secret(SECRET)
    engine = ColourEngine(SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)))
    engine.install_index(build_index([CONTACT]))
    colour_servicer = ColourServicer(ColourDesk(engine), identifiers)
    names = {HASHER.person_key(HOLDER): "张**", HASHER.person_key(CONTACT): "李*"}
    names[HASHER.person_key(OTHER)] = "王*"
    declaration = StandInDeclaration(names)  # type: ignore[abstract]  # two RPCs only

    def add_peers(server: grpc.Server) -> None:
        colour_pb2_grpc.add_ColourServiceServicer_to_server(colour_servicer, server)
        declaration_pb2_grpc.add_DeclarationServiceServicer_to_server(declaration, server)

    peers = start_server(
        add_peers, ["healthcode.v1.ColourService", "healthcode.v1.DeclarationService"]
    )
    tokens = CodeTokens(SigningKey(b"\x07" * 32))
    db_path = tmp_path / "display" / "display.db"
    log = DisplayLog(db_path)
    declaration_peer = DeclarationPeer(peers.channel, 5)
    desk = DisplayDesk(
        tokens,
        log,
        ColourPeer(peers.channel, 5).live_colour,
        declaration_peer.holder_of,
        mandate_of=declaration_peer.check_mandate,
        clock_ms=clock.ms,
        unknown_retry_s=0.2,
    )
    servicer = DisplayServicer(desk, log, tokens, identifiers)
    display = start_server(
        lambda s: display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        max_workers=32,
    )
    yield Platform(
        engine,
        display_pb2_grpc.DisplayServiceStub(display.channel),
        clock,
        db_path,
        tokens,
        declaration,
    )
    display.close()  # before the log it writes to
    log.close()


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    return ""


def test_show_gives_colour_masked_name_and_a_token_valid_for_at_most_a_minute(
    platform: Platform,
) -> None:
    shown = platform.show(HOLDER)
    assert shown.verdict.colour == common_pb2.COLOUR_GREEN
    assert shown.masked_name == "张**" and shown.masked_id_number == "12**3X"
    assert shown.token.startswith("HCN1:")
    life_ms = shown.expires_at.ToMilliseconds() - shown.issued_at.ToMilliseconds()
    assert 0 < life_ms <= MAX_TTL_MS
    red = platform.show(CONTACT)
    assert red.verdict.colour == common_pb2.COLOUR_RED
    assert {r.rule_id for r in red.verdict.reasons} >= {"close-contact"}


def test_every_display_is_logged_before_the_reply_without_raw_numbers(
    platform: Platform,
) -> None:
    shown = platform.show(HOLDER)
    rows = platform.rows(
        "SELECT id, kind, outcome, person_key, masked_name, device, place, colour, actor "
        "FROM display_events"
    )
    assert rows == [
        (
            shown.display_id,
            "show",
            "OK",
            HASHER.person_key(HOLDER),
            "张**",
            "phone-1",
            "home",
            0,
            "citizen:" + mask_id_number(HOLDER),
        )
    ]
    raw = b"".join(p.read_bytes() for p in platform.db_path.parent.iterdir())
    assert HOLDER.encode() not in raw


def test_a_scan_returns_the_live_colour_not_the_colour_at_show_time(platform: Platform) -> None:
    shown = platform.show(OTHER)
    assert shown.verdict.colour == common_pb2.COLOUR_GREEN
    platform.engine.install_index(build_index([OTHER], base=platform_index(platform)))
    scanned = platform.scan(shown.token)
    assert scanned.verdict.colour == common_pb2.COLOUR_RED
    assert scanned.masked_name == "王*"
    assert scanned.token_issued_at == shown.issued_at
    (logged,) = platform.rows(
        f"SELECT kind, outcome, colour, actor FROM display_events WHERE id = {scanned.scan_id}"
    )
    assert logged == ("scan", "OK", 2, "verifier:gate-7")


def platform_index(platform: Platform) -> hm.Index:
    matcher = platform.engine._matcher
    assert matcher is not None
    return matcher.current.index


def test_a_replayed_token_is_already_exists(platform: Platform) -> None:
    token = platform.show(HOLDER).token
    platform.scan(token)
    with pytest.raises(grpc.RpcError) as refused:
        platform.scan(token)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(refused.value) == "TOKEN_REPLAYED"


def test_an_expired_token_is_failed_precondition(platform: Platform) -> None:
    token = platform.show(HOLDER).token
    platform.clock.advance(dt.timedelta(milliseconds=MAX_TTL_MS + 1))
    with pytest.raises(grpc.RpcError) as refused:
        platform.scan(token)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "TOKEN_EXPIRED"
    assert "refresh" in (refused.value.details() or "")
    (logged,) = platform.rows(
        "SELECT outcome, person_key, colour FROM display_events WHERE kind = 'scan'"
    )
    assert logged == ("TOKEN_EXPIRED", HASHER.person_key(HOLDER), None)


def test_a_forged_token_is_unauthenticated(platform: Platform) -> None:
    forger = CodeTokens(SigningKey(b"\x08" * 32))
    forged, _ = forger.issue(HASHER.person_key(HOLDER), platform.clock.ms())
    with pytest.raises(grpc.RpcError) as refused:
        platform.scan(forged)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(refused.value) == "TOKEN_FORGED"


def test_an_unreadable_token_is_invalid_argument_on_the_token_field(platform: Platform) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        platform.scan("not a code")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(refused.value)] == ["token"]
    assert reason_of(refused.value) == "TOKEN_MALFORMED"


def test_the_public_key_verifies_tokens_offline(platform: Platform) -> None:
    key = platform.stub.GetVerificationKey(display_pb2.GetVerificationKeyRequest(), timeout=5)
    token = platform.show(HOLDER).token
    # An offline verifier: a stock COSE library and the published key, nothing of ours.
    public = COSEKey.new({1: 1, 2: key.key_id, 3: -8, -1: 6, -2: key.ed25519_public_key})
    claims = cbor2.loads(COSE.new().decode(base45.b45decode(token[len("HCN1:") :]), public))
    assert claims[2] == HASHER.person_key(HOLDER)
    assert key.token_ttl_ms == MAX_TTL_MS


def test_who_may_do_what(platform: Platform) -> None:
    with pytest.raises(grpc.RpcError) as not_yours:
        platform.show(HOLDER, actor=citizen(OTHER))
    assert not_yours.value.code() == grpc.StatusCode.PERMISSION_DENIED
    proxy = common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=common_pb2.PersonRef(id_number=OTHER)
    )
    # A family member shows the code of the relative they registered (a mandate links them).
    platform.declaration.mandates[HASHER.person_key(OTHER), HASHER.person_key(HOLDER)] = (
        1,
        mask_id_number(OTHER),
    )
    assert platform.show(HOLDER, actor=proxy).masked_name == "张**"
    token = platform.show(HOLDER).token
    with pytest.raises(grpc.RpcError) as citizen_scan:
        platform.stub.Scan(
            display_pb2.ScanRequest(actor=citizen(OTHER), token=token, device=GATE), timeout=5
        )
    assert citizen_scan.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_unregistered_person_cannot_show_a_code(platform: Platform) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        platform.show(UNREGISTERED)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register" in (refused.value.details() or "")


def test_bad_device_and_temperature_are_invalid_argument(platform: Platform) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        platform.stub.Show(
            display_pb2.ShowRequest(
                actor=citizen(HOLDER),
                person=common_pb2.PersonRef(id_number=HOLDER),
                device=display_pb2.Device(device_id="", county=99),
            ),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(refused.value)} == {"device.device_id", "device.county"}
    token = platform.show(HOLDER).token
    with pytest.raises(grpc.RpcError) as hot:
        platform.scan(token, temperature_celsius=99.0)
    assert [f for f, _ in field_violations(hot.value)] == ["temperature_celsius"]
    assert platform.scan(token, temperature_celsius=37.5).temperature_alert


@pytest.mark.parametrize(("reading", "alert"), [(37.3, True), (37.2, False)])
def test_a_bus_scanner_alerts_from_exactly_the_declared_fever_threshold(
    platform: Platform, reading: float, alert: bool
) -> None:
    # The wire carries a float32: 37.3 arrives as 37.29999923. A scanner alerts exactly where
    # a declaration counts a fever (services/_common/temperature.py owns both).
    token = platform.show(HOLDER).token
    assert platform.scan(token, temperature_celsius=reading).temperature_alert is alert


def test_staff_look_up_by_id_card(platform: Platform) -> None:
    looked_up = platform.stub.Scan(
        display_pb2.ScanRequest(
            actor=VERIFIER, person=common_pb2.PersonRef(id_number=CONTACT), device=GATE
        ),
        timeout=5,
    )
    assert looked_up.verdict.colour == common_pb2.COLOUR_RED and looked_up.masked_name == "李*"
    partner = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_PARTNER, principal="hospital-3")
    with pytest.raises(grpc.RpcError) as refused:
        platform.stub.Scan(
            display_pb2.ScanRequest(
                actor=partner, person=common_pb2.PersonRef(id_number=CONTACT), device=GATE
            ),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_watch_counters_streams_totals_per_colour_and_day(platform: Platform) -> None:
    stream = platform.stub.WatchCounters(display_pb2.WatchCountersRequest(min_interval_ms=100))
    received: list[display_pb2.WatchCountersResponse] = []
    done = threading.Event()

    def read() -> None:
        for update in stream:
            received.append(update)
            if update.displays == 2 and update.scans == 1 and update.refused_scans == 1:
                done.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        token = platform.show(HOLDER).token
        platform.show(CONTACT)
        platform.scan(token)
        with pytest.raises(grpc.RpcError):
            platform.scan(token)
        assert done.wait(15), f"counters never showed 2 displays, 1 scan: {received[-1:]}"
    finally:
        stream.cancel()
    last = received[-1]
    assert last.displays_by_colour.green == 1 and last.displays_by_colour.red == 1
    assert last.scans_by_colour.green == 1
    assert last.applicants == 2 and last.total_applicants == 2 and last.total_displays == 2
    assert last.day == (dt.date(1970, 1, 1) + dt.timedelta(days=today())).isoformat()
    assert received[0].displays == 0  # the first update is the state at subscription


def test_watch_counters_streams_past_the_cap_are_refused_with_retry_info(
    platform: Platform,
) -> None:
    """Each stream holds a server thread: past the cap a dashboard is told to come back
    (RESOURCE_EXHAUSTED with RetryInfo) instead of taking the threads Shows need."""
    request = display_pb2.WatchCountersRequest(min_interval_ms=100)
    streams = [platform.stub.WatchCounters(request) for _ in range(DEFAULT_MAX_WATCHERS)]
    try:
        for stream in streams:
            next(stream)  # each is open and has its first update
        with pytest.raises(grpc.RpcError) as refused:
            next(platform.stub.WatchCounters(request))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "WatchCounters streams are open" in (refused.value.details() or "")
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        # A closed stream frees its place as soon as grpc learns of the cancel, not when its
        # handler next wakes (up to a second later): a dashboard that polls (open, read,
        # cancel, again) is never refused because of its own old streams.
        for stream in streams:
            stream.cancel()
        refusals = 0
        for _ in range(3 * DEFAULT_MAX_WATCHERS):
            again, refused_first = _first_counters_when_free(platform, request)
            assert again.displays == 0
            refusals += refused_first
        assert refusals == 0, f"{refusals} polls refused: cancelled streams kept their places"
    finally:
        for stream in streams:
            stream.cancel()


def _first_counters_when_free(
    platform: Platform, request: display_pb2.WatchCountersRequest
) -> tuple[display_pb2.WatchCountersResponse, int]:
    """The first update of a new stream, cancelled after it, and how many times it was refused
    first (RESOURCE_EXHAUSTED: retried for up to 15 s, then the test fails)."""
    deadline = time.monotonic() + 15
    refusals = 0
    while True:
        stream = platform.stub.WatchCounters(request)
        try:
            return next(stream), refusals
        except grpc.RpcError as error:
            refusals += 1
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert time.monotonic() < deadline, "a cancelled stream never freed its place"
            time.sleep(0.2)
        finally:
            stream.cancel()
