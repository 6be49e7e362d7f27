"""DeclarationService in process on port 0 with a real channel, talking to a real in-process
risk index: bad input, replays, the once-a-day rule, an outage of the risk index, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import healthcode_matcher
import pytest
from google.rpc import error_details_pb2
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from services._common import days
from services._common.identifiers import Identifiers, mask_id_number, mask_phone
from services._common.status import details_of, field_violations
from services._common.telemetry import instrumented_channel
from services.declaration.logic import Declarations
from services.declaration.outbox import OutboxWorker
from services.declaration.repository import DeclarationRepository
from services.declaration.servicer import SERVICE_NAME, DeclarationServicer
from services.risk_index.logic import RiskIndex
from services.risk_index.repository import RiskIndexRepository
from services.risk_index.servicer import SERVICE_NAME as RISK_INDEX_SERVICE
from services.risk_index.servicer import RiskIndexServicer
from tests.support import SECRET, Served, wait_until

IDS = healthcode_matcher.synthetic_id_numbers(20, 9).decode().split()
PHONES = healthcode_matcher.synthetic_phones(20, 9).decode().split()
GRID = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-0042")
TODAY = days.today()


@dataclass
class RiskIndexProcess:
    served: Served
    index: RiskIndex
    repo: RiskIndexRepository

    @property
    def port(self) -> int:
        return self.served.port

    def close(self) -> None:
        self.index.close()
        self.served.close()
        self.repo.close()


def start_risk_index(data: Path, port: int = 0) -> RiskIndexProcess:
    repo = RiskIndexRepository(data / "risk_index.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    index = RiskIndex(repo, ids, SECRET)
    servicer = RiskIndexServicer(index, ids)
    served = Served.start(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(servicer, s),
        [RISK_INDEX_SERVICE],
        port=port,
    )
    return RiskIndexProcess(served, index, repo)


@dataclass
class DeclarationProcess:
    served: Served
    repo: DeclarationRepository
    outbox: OutboxWorker
    peer: grpc.Channel
    stub: declaration_pb2_grpc.DeclarationServiceStub

    def close(self) -> None:
        self.served.close()
        self.outbox.stop()
        self.peer.close()
        self.repo.close()


def start_declaration(data: Path, risk_index_port: int) -> DeclarationProcess:
    repo = DeclarationRepository(data / "declaration.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    peer = instrumented_channel(f"127.0.0.1:{risk_index_port}")
    outbox = OutboxWorker(
        repo,
        risk_index_pb2_grpc.RiskIndexServiceStub(peer),
        deadline_s=2.0,
        retry_max_s=0.2,
    )
    declarations = Declarations(repo, ids, on_outbox=outbox.wake)
    servicer = DeclarationServicer(declarations, ids)
    served = Served.start(
        lambda s: declaration_pb2_grpc.add_DeclarationServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    outbox.start()
    return DeclarationProcess(
        served, repo, outbox, peer, declaration_pb2_grpc.DeclarationServiceStub(served.channel)
    )


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[DeclarationProcess, RiskIndexProcess]]:
    risk = start_risk_index(tmp_path)
    decl = start_declaration(tmp_path, risk.port)
    yield decl, risk
    decl.close()
    risk.close()


def register(
    stub: declaration_pb2_grpc.DeclarationServiceStub, i: int, phones: list[str], **kw: Any
) -> declaration_pb2.RegisterResponse:
    return stub.Register(  # type: ignore[no-any-return]
        declaration_pb2.RegisterRequest(
            actor=GRID, name="张三", id_number=IDS[i], phones=phones, **kw
        )  # type: ignore[arg-type]
    )


def by_id(i: int) -> common_pb2.PersonRef:
    return common_pb2.PersonRef(id_number=IDS[i])


def test_register_reaches_the_risk_index(
    stack: tuple[DeclarationProcess, RiskIndexProcess],
) -> None:
    decl, risk = stack
    reply = register(decl.stub, 0, [PHONES[0], PHONES[1]], transit_card="TJ00001234")
    assert reply.created
    person = reply.person
    assert person.masked_name == "张*"
    assert person.masked_id_number == mask_id_number(IDS[0])
    assert [p.masked_phone for p in person.phones] == [
        mask_phone(PHONES[0]),
        mask_phone(PHONES[1]),
    ]
    assert person.registered_by.role == common_pb2.ACTOR_ROLE_GRID_WORKER
    assert person.registered_by.principal == "grid-0042"
    wait_until("the outbox is drained", lambda: decl.repo.pending_count() == 0)
    index = risk.index.current.index
    pid = index.person_id(IDS[0])
    assert pid is not None
    assert set(index.phones_of(pid)) == {index.phone_id(PHONES[0]), index.phone_id(PHONES[1])}


def test_replayed_registration(stack: tuple[DeclarationProcess, RiskIndexProcess]) -> None:
    decl, _ = stack
    first = register(decl.stub, 1, [PHONES[2]])
    again = register(decl.stub, 1, [PHONES[2]])
    assert first.created and not again.created
    assert again.person.person_key == first.person.person_key
    assert len(again.person.phones) == 1


def test_bad_registration_names_each_field(
    stack: tuple[DeclarationProcess, RiskIndexProcess],
) -> None:
    decl, _ = stack
    bad = IDS[2][:-1] + ("0" if IDS[2][-1] != "0" else "1")
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Register(
            declaration_pb2.RegisterRequest(
                actor=GRID, name="", id_number=bad, phones=[PHONES[3], "110"]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert [f for f, _ in violations] == ["name", "id_number", "phones[1]"]
    assert f"should be {IDS[2][-1]}" in violations[1][1]

    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Register(declaration_pb2.RegisterRequest(name="x", id_number=IDS[2]))
    assert [f for f, _ in field_violations(caught.value)] == ["actor.role"]

    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Register(
            declaration_pb2.RegisterRequest(
                actor=common_pb2.Actor(
                    role=common_pb2.ACTOR_ROLE_CITIZEN,
                    person=common_pb2.PersonRef(id_number=IDS[3]),
                ),
                name="x",
                id_number=IDS[2],
            )
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_family_proxy_registers_an_elderly_person(
    stack: tuple[DeclarationProcess, RiskIndexProcess],
) -> None:
    decl, _ = stack
    proxy = common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=common_pb2.PersonRef(id_number=IDS[4])
    )
    reply = decl.stub.Register(
        declaration_pb2.RegisterRequest(actor=proxy, name="王奶奶", id_number=IDS[5])
    )
    assert reply.person.registered_by.role == common_pb2.ACTOR_ROLE_FAMILY_PROXY
    assert reply.person.registered_by.masked_id_number == mask_id_number(IDS[4])
    assert list(reply.person.phones) == []


def test_one_declaration_per_day(stack: tuple[DeclarationProcess, RiskIndexProcess]) -> None:
    decl, risk = stack
    register(decl.stub, 6, [])
    reply = decl.stub.Declare(
        declaration_pb2.DeclareRequest(
            actor=GRID,
            person=by_id(6),
            temperature_celsius=37.3,
            symptoms=[declaration_pb2.SYMPTOM_COUGH],
            visits=[declaration_pb2.Visit(county=420106, day=days.format_day(TODAY - 2))],
        )
    )
    declared = reply.declaration
    assert declared.day == days.format_day(TODAY)
    assert list(declared.derived_sources) == [
        "declared_fever",
        "declared_symptoms",
        "declared_travel",
    ]
    assert abs(declared.temperature_celsius - 37.3) < 1e-4
    opens = reply.next_opens_at.ToDatetime().timestamp()
    assert opens == days.next_midnight(days.now_shanghai()).timestamp()

    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Declare(declaration_pb2.DeclareRequest(actor=GRID, person=by_id(6)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "next declaration opens at" in caught.value.details()
    [failure] = details_of(caught.value)
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert failure.violations[0].type == "DAILY_DECLARATION"

    wait_until("the outbox is drained", lambda: decl.repo.pending_count() == 0)
    index = risk.index.current.index
    for source in ("declared_fever", "declared_symptoms", "declared_travel"):
        assert index.source_len(source) == 1, source
    assert index.source_counties("declared_travel") == [420106]


def test_bad_declaration(stack: tuple[DeclarationProcess, RiskIndexProcess]) -> None:
    decl, _ = stack
    register(decl.stub, 7, [])
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Declare(
            declaration_pb2.DeclareRequest(
                actor=GRID,
                person=by_id(7),
                temperature_celsius=50,
                symptoms=[declaration_pb2.SYMPTOM_UNSPECIFIED],
                visits=[declaration_pb2.Visit(county=1, day=days.format_day(TODAY + 1))],
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(caught.value)] == [
        "symptoms[0]",
        "temperature_celsius",
        "visits[0].county",
        "visits[0].day",
    ]
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Declare(declaration_pb2.DeclareRequest(actor=GRID))
    assert [f for f, _ in field_violations(caught.value)] == ["person"]
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.Declare(
            declaration_pb2.DeclareRequest(
                actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_CITIZEN, person=by_id(8)),
                person=by_id(8),
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_phones_added_and_removed(stack: tuple[DeclarationProcess, RiskIndexProcess]) -> None:
    decl, risk = stack
    register(decl.stub, 9, [PHONES[9]])
    added = decl.stub.AddPhone(
        declaration_pb2.AddPhoneRequest(actor=GRID, person=by_id(9), phone=PHONES[10])
    )
    assert len(added.person.phones) == 2
    removed = decl.stub.RemovePhone(
        declaration_pb2.RemovePhoneRequest(
            actor=GRID,
            person=by_id(9),
            phone=common_pb2.PhoneRef(phone_key=added.person.phones[0].phone_key),
        )
    )
    assert [p.masked_phone for p in removed.person.phones] == [mask_phone(PHONES[10])]
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.AddPhone(
            declaration_pb2.AddPhoneRequest(actor=GRID, person=by_id(9), phone="123")
        )
    assert [f for f, _ in field_violations(caught.value)] == ["phone"]
    wait_until("the outbox is drained", lambda: decl.repo.pending_count() == 0)
    index = risk.index.current.index
    pid = index.person_id(IDS[9])
    assert pid is not None and index.phones_of(pid) == [index.phone_id(PHONES[10])]
    got = decl.stub.GetPerson(declaration_pb2.GetPersonRequest(actor=GRID, person=by_id(9)))
    assert got.person.person_key == added.person.person_key


def test_nothing_is_lost_while_the_risk_index_is_down(tmp_path: Path) -> None:
    risk = start_risk_index(tmp_path)
    port = risk.port
    risk.close()  # down before anything is sent
    decl = start_declaration(tmp_path, port)
    try:
        register(decl.stub, 11, [PHONES[11]])
        decl.stub.Declare(
            declaration_pb2.DeclareRequest(actor=GRID, person=by_id(11), case_contact=True)
        )
        assert decl.repo.pending_count() == 3
        wait_until("a delivery has failed", lambda: decl.repo.pending()[0].attempts > 0)

        risk = start_risk_index(tmp_path, port=port)
        try:
            wait_until("the outbox is drained", lambda: decl.repo.pending_count() == 0)
            index = risk.index.current.index
            pid = index.person_id(IDS[11])
            assert pid is not None and index.phones_of(pid) == [index.phone_id(PHONES[11])]
            assert index.source_len("declared_case_contact") == 1
        finally:
            risk.close()
    finally:
        decl.close()


def test_restart_loses_nothing(tmp_path: Path) -> None:
    risk = start_risk_index(tmp_path)
    decl = start_declaration(tmp_path, risk.port)
    try:
        register(decl.stub, 12, [PHONES[12]])
        decl.stub.Declare(declaration_pb2.DeclareRequest(actor=GRID, person=by_id(12)))
        decl.close()
        decl = start_declaration(tmp_path, risk.port)
        got = decl.stub.GetPerson(
            declaration_pb2.GetPersonRequest(actor=GRID, person=by_id(12), recent_declarations=5)
        )
        assert got.person.last_declared_day == days.format_day(TODAY)
        assert [p.masked_phone for p in got.person.phones] == [mask_phone(PHONES[12])]
        assert len(got.declarations) == 1
        with pytest.raises(grpc.RpcError) as caught:
            decl.stub.Declare(declaration_pb2.DeclareRequest(actor=GRID, person=by_id(12)))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        wait_until("the outbox is drained", lambda: decl.repo.pending_count() == 0)
        assert risk.index.current.index.person_id(IDS[12]) is not None
    finally:
        decl.close()
        risk.close()


def test_risk_index_reports_persons(stack: tuple[DeclarationProcess, RiskIndexProcess]) -> None:
    decl, risk = stack
    register(decl.stub, 13, [])
    wait_until("the outbox is drained", lambda: decl.repo.pending_count() == 0)
    version = risk_index_pb2_grpc.RiskIndexServiceStub(risk.served.channel).GetIndexVersion(
        risk_index_pb2.GetIndexVersionRequest()
    )
    assert version.person_count == 1 and version.version >= 1
