"""Proxy mandates through the real servicers on port 0: DeclarationService (Register,
Declare, GrantMandate, RevokeMandate, ListMandates, CheckMandate) and a DisplayService whose
desk asks that declaration service about holders and mandates over a real channel. A family
member registers an elderly relative, declares and shows for them; the relative lists and
revokes the mandate; the proxy's next acts are PERMISSION_DENIED (NO_MANDATE)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import healthcode_matcher
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
)
from nacl.signing import SigningKey

from services._common.identifiers import Identifiers, mask_id_number
from services._common.status import field_violations
from services.declaration.logic import Declarations
from services.declaration.repository import DeclarationRepository
from services.declaration.servicer import SERVICE_NAME, DeclarationServicer
from services.display.logic import DisplayDesk, LiveColour
from services.display.peers import DeclarationPeer
from services.display.servicer import SERVICE_NAME as DISPLAY_SERVICE
from services.display.servicer import DisplayServicer
from services.display.store import DisplayLog
from services.display.tokens import CodeTokens
from tests.support import SECRET, Clock, StartServer, wait_until

IDS = healthcode_matcher.synthetic_id_numbers(6, 2020).decode().split()
GRANNY, DAUGHTER, LONER, STRANGER = IDS[:4]
DEVICE = display_pb2.Device(device_id="daughter-phone", place="community clinic")
GRID = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-hp-007")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="ops-1")


def ref(id_number: str) -> common_pb2.PersonRef:
    return common_pb2.PersonRef(id_number=id_number)


def citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=ref(id_number))


def family(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=ref(id_number))


def at(when: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    return ""


class CountingDeclarationServicer(DeclarationServicer):
    """The real servicer, counting CheckMandate calls (a citizen's Show must make none)."""

    checks = 0

    def CheckMandate(
        self, request: declaration_pb2.CheckMandateRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.CheckMandateResponse:
        type(self).checks += 1
        return super().CheckMandate(request, context)


@dataclass
class Platform:
    declaration: declaration_pb2_grpc.DeclarationServiceStub
    display: display_pb2_grpc.DisplayServiceStub
    servicer: CountingDeclarationServicer
    clock: Clock
    display_db: Path

    def show(self, id_number: str, actor: common_pb2.Actor) -> display_pb2.ShowResponse:
        return self.display.Show(
            display_pb2.ShowRequest(actor=actor, person=ref(id_number), device=DEVICE), timeout=10
        )

    def declare(self, id_number: str, actor: common_pb2.Actor) -> declaration_pb2.Declaration:
        reply = self.declaration.Declare(
            declaration_pb2.DeclareRequest(
                actor=actor, person=ref(id_number), temperature_celsius=36.6
            ),
            timeout=10,
        )
        return reply.declaration

    def mandates(self, actor: common_pb2.Actor, **kw: object) -> list[declaration_pb2.Mandate]:
        request = declaration_pb2.ListMandatesRequest(actor=actor, **kw)  # type: ignore[arg-type]
        return list(self.declaration.ListMandates(request, timeout=10).mandates)


@pytest.fixture
def platform(tmp_path: Path, start_server: StartServer) -> Iterator[Platform]:
    clock = Clock(dt.datetime.now(dt.UTC))
    ids = Identifiers.from_secret(SECRET)
    repo = DeclarationRepository(tmp_path / "declaration.sqlite3")
    servicer = CountingDeclarationServicer(Declarations(repo, ids, clock=clock), ids)
    CountingDeclarationServicer.checks = 0
    declaration = start_server(
        lambda s: declaration_pb2_grpc.add_DeclarationServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    peer = DeclarationPeer(declaration.channel, 5)
    tokens = CodeTokens(SigningKey(b"\x07" * 32))
    log = DisplayLog(tmp_path / "display.db")
    desk = DisplayDesk(
        tokens,
        log,
        lambda _key, _version: LiveColour(0, 1, "test-rules"),
        peer.holder_of,
        mandate_of=peer.check_mandate,
        clock_ms=clock.ms,
    )
    display = start_server(
        lambda s: display_pb2_grpc.add_DisplayServiceServicer_to_server(
            DisplayServicer(desk, log, tokens, ids), s
        ),
        [DISPLAY_SERVICE],
    )
    yield Platform(
        declaration_pb2_grpc.DeclarationServiceStub(declaration.channel),
        display_pb2_grpc.DisplayServiceStub(display.channel),
        servicer,
        clock,
        tmp_path / "display.db",
    )
    display.close()  # before the log it writes to
    log.close()
    declaration.close()
    repo.close()


def test_a_family_member_acts_for_a_relative_until_the_relative_revokes(
    platform: Platform,
) -> None:
    daughter = family(DAUGHTER)
    registered = platform.declaration.Register(
        declaration_pb2.RegisterRequest(actor=daughter, name="王奶奶", id_number=GRANNY)
    )
    assert registered.created

    # The relative (as citizen) sees who may act for her, masked.
    [mandate] = platform.mandates(citizen(GRANNY))
    assert mandate.state == declaration_pb2.MANDATE_STATE_ACTIVE
    assert mandate.basis == declaration_pb2.MANDATE_BASIS_REGISTRATION
    assert mandate.proxy.role == common_pb2.ACTOR_ROLE_FAMILY_PROXY
    assert mandate.proxy.masked_id_number == mask_id_number(DAUGHTER)
    assert mandate.approved_by.masked_id_number == mask_id_number(DAUGHTER)
    assert mandate.masked_name == "王**" and mandate.masked_id_number == mask_id_number(GRANNY)
    assert not mandate.HasField("valid_until") and not mandate.HasField("revoked_at")
    assert platform.mandates(daughter) == [mandate]  # and the proxy whom she acts for

    declared = platform.declare(GRANNY, daughter)
    assert declared.mandate_id == mandate.mandate_id
    assert declared.declared_by.masked_id_number == mask_id_number(DAUGHTER)
    shown = platform.show(GRANNY, daughter)
    assert shown.masked_name == "王**" and platform.servicer.checks == 1
    with sqlite3.connect(platform.display_db) as db:
        [(actor,)] = db.execute("SELECT actor FROM display_events").fetchall()
    assert actor == f"family_proxy:{mask_id_number(DAUGHTER)} mandate:{mandate.mandate_id}"

    # The relative's own Show asks nothing more than her record (the hot path).
    platform.show(GRANNY, citizen(GRANNY))
    assert platform.servicer.checks == 1

    revoked = platform.declaration.RevokeMandate(
        declaration_pb2.RevokeMandateRequest(
            actor=citizen(GRANNY), mandate_id=mandate.mandate_id, reason="my son helps now"
        )
    )
    assert revoked.revoked and revoked.mandate.state == declaration_pb2.MANDATE_STATE_REVOKED
    assert revoked.mandate.revoked_by.role == common_pb2.ACTOR_ROLE_CITIZEN
    assert revoked.mandate.revoke_reason == "my son helps now"
    assert platform.mandates(citizen(GRANNY)) == []
    [history] = platform.mandates(citizen(GRANNY), include_inactive=True)
    assert history.state == declaration_pb2.MANDATE_STATE_REVOKED

    platform.clock.advance(dt.timedelta(days=1))  # a new day: a declaration would be due
    with pytest.raises(grpc.RpcError) as refused:
        platform.declare(GRANNY, daughter)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(refused.value) == "NO_MANDATE"
    assert "no active mandate" in (refused.value.details() or "")
    assert "healthcode mandate grant" in (refused.value.details() or "")

    def refused_show() -> bool:
        try:
            platform.show(GRANNY, daughter)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(error) == "NO_MANDATE"
            return True
        return False

    # A confirmed mandate is kept at most a second by the display service.
    wait_until("the revoked proxy's Show is refused", refused_show, timeout_s=5)
    shows = db_count(platform.display_db)
    assert refused_show() and db_count(platform.display_db) == shows  # no code, no display
    # She still declares and shows herself.
    platform.declare(GRANNY, citizen(GRANNY))
    platform.show(GRANNY, citizen(GRANNY))


def db_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM display_events").fetchone()[0])


def test_a_grid_worker_acts_under_a_time_boxed_grant(platform: Platform) -> None:
    platform.declaration.Register(
        declaration_pb2.RegisterRequest(actor=citizen(LONER), name="赵大爷", id_number=LONER)
    )
    with pytest.raises(grpc.RpcError) as refused:
        platform.declare(LONER, GRID)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "grid_worker grid-hp-007" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        platform.show(LONER, GRID)
    assert reason_of(refused.value) == "NO_MANDATE"

    until = platform.clock() + dt.timedelta(hours=2)
    request = declaration_pb2.GrantMandateRequest(
        actor=citizen(LONER),
        person=ref(LONER),
        proxy=declaration_pb2.MandateProxy(
            role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-hp-007"
        ),
        valid_until=at(until),
        reason="lives alone",
    )
    granted = platform.declaration.GrantMandate(request)
    assert granted.created and granted.mandate.basis == declaration_pb2.MANDATE_BASIS_GRANT
    assert granted.mandate.valid_until.ToDatetime(dt.UTC) == until.replace(
        microsecond=until.microsecond // 1000 * 1000
    )
    again = platform.declaration.GrantMandate(request)
    assert not again.created and again.mandate.mandate_id == granted.mandate.mandate_id
    assert platform.declare(LONER, GRID).mandate_id == granted.mandate.mandate_id
    platform.show(LONER, GRID)
    assert [m.masked_id_number for m in platform.mandates(GRID)] == [mask_id_number(LONER)]

    platform.clock.advance(dt.timedelta(hours=3))  # past its end
    with pytest.raises(grpc.RpcError) as refused:
        platform.declaration.AddPhone(
            declaration_pb2.AddPhoneRequest(actor=GRID, person=ref(LONER), phone="13812345678")
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [expired] = platform.mandates(GRID, include_inactive=True)
    assert expired.state == declaration_pb2.MANDATE_STATE_EXPIRED
    assert platform.mandates(GRID) == []


def test_bad_requests_name_their_fields(platform: Platform) -> None:
    platform.declaration.Register(
        declaration_pb2.RegisterRequest(actor=citizen(LONER), name="赵大爷", id_number=LONER)
    )
    with pytest.raises(grpc.RpcError) as bad:
        platform.declaration.GrantMandate(
            declaration_pb2.GrantMandateRequest(
                actor=citizen(LONER),
                person=ref(LONER),
                proxy=declaration_pb2.MandateProxy(
                    role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=ref(LONER)
                ),
                valid_until=at(platform.clock() - dt.timedelta(minutes=1)),
                reason=f"call {DAUGHTER}",
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(bad.value)] == ["proxy.person", "valid_until", "reason"]
    assert LONER not in (bad.value.details() or "") and DAUGHTER not in str(bad.value)

    with pytest.raises(grpc.RpcError) as bad:
        platform.declaration.GrantMandate(
            declaration_pb2.GrantMandateRequest(
                actor=ADMIN,
                person=ref(STRANGER),
                proxy=declaration_pb2.MandateProxy(
                    role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-hp-007"
                ),
            )
        )
    assert bad.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        platform.declaration.RevokeMandate(declaration_pb2.RevokeMandateRequest(actor=ADMIN))
    assert [f for f, _ in field_violations(bad.value)] == ["mandate_id"]
    with pytest.raises(grpc.RpcError) as bad:
        platform.declaration.RevokeMandate(
            declaration_pb2.RevokeMandateRequest(actor=ADMIN, mandate_id=42)
        )
    assert bad.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bad:
        platform.declaration.CheckMandate(
            declaration_pb2.CheckMandateRequest(
                actor=GRID,
                person=ref(LONER),
                proxy=declaration_pb2.MandateProxy(
                    role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-hp-007"
                ),
            )
        )
    assert bad.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as bad:
        platform.mandates(citizen(LONER), person=ref(STRANGER))
    assert bad.value.code() == grpc.StatusCode.PERMISSION_DENIED
