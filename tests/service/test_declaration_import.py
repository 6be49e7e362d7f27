"""DeclarationService.ImportPeople in process on port 0 with a real channel: a stand-in risk
index records what the outbox hands over (one RegisterPeople per chunk, not one call per
person), and a real in-process risk index shows the people arrive in the index."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import healthcode_matcher
import pytest
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from services._common.identifiers import Identifiers, mask_id_number, mask_phone
from services._common.status import field_violations
from services.declaration.logic import Declarations
from services.declaration.outbox import OutboxWorker
from services.declaration.repository import DeclarationRepository
from services.declaration.servicer import SERVICE_NAME, DeclarationServicer
from services.risk_index.logic import RiskIndex
from services.risk_index.repository import RiskIndexRepository
from services.risk_index.servicer import SERVICE_NAME as RISK_INDEX_SERVICE
from services.risk_index.servicer import RiskIndexServicer
from tests.support import SECRET, Served, StartServer, wait_until

IDS = healthcode_matcher.synthetic_id_numbers(40, 4242).decode().split()
PHONES = healthcode_matcher.synthetic_phones(40, 4242).decode().split()
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="ops-import")
CITIZEN = common_pb2.ACTOR_ROLE_CITIZEN
FAMILY = common_pb2.ACTOR_ROLE_FAMILY_PROXY
GRID = common_pb2.ACTOR_ROLE_GRID_WORKER
HEPING, BINHAI = 120101, 120116


@dataclass
class StandIn(risk_index_pb2_grpc.RiskIndexServiceServicer):
    """Records RegisterPeople and IngestBatch; answers UNIMPLEMENTED `refuse` times first, as
    a risk index older than RegisterPeople would."""

    refuse: int = 0
    people_calls: list[list[risk_index_pb2.KeyedPerson]] = field(default_factory=list)
    batches: list[risk_index_pb2.IngestBatchRequest] = field(default_factory=list)
    unary_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def RegisterPeople(
        self, request: risk_index_pb2.RegisterPeopleRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.RegisterPeopleResponse:
        with self.lock:
            if self.refuse > 0:
                self.refuse -= 1
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            assert request.actor.role == common_pb2.ACTOR_ROLE_SERVICE
            self.people_calls.append(list(request.people))
        return risk_index_pb2.RegisterPeopleResponse(
            index_version=len(self.people_calls), created=len(request.people)
        )

    def IngestBatch(
        self, request: risk_index_pb2.IngestBatchRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.IngestBatchResponse:
        with self.lock:
            self.batches.append(request)
        return risk_index_pb2.IngestBatchResponse(batch_id=request.batch_id, index_version=1)

    def RegisterPerson(
        self, request: risk_index_pb2.RegisterPersonRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.RegisterPersonResponse:
        with self.lock:
            self.unary_calls += 1
        return risk_index_pb2.RegisterPersonResponse(index_version=1, created=True)


@dataclass
class Declaration:
    repo: DeclarationRepository
    outbox: OutboxWorker
    stub: declaration_pb2_grpc.DeclarationServiceStub

    def drained(self) -> None:
        wait_until("the outbox is drained", lambda: self.repo.pending_count() == 0)


def start_declaration(
    data: Path, risk_index: str, start_server: StartServer
) -> Iterator[Declaration]:
    repo = DeclarationRepository(data / "declaration.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    peer = grpc.insecure_channel(risk_index)
    outbox = OutboxWorker(
        repo, risk_index_pb2_grpc.RiskIndexServiceStub(peer), deadline_s=5.0, retry_max_s=0.1
    )
    servicer = DeclarationServicer(Declarations(repo, ids, on_outbox=outbox.wake), ids)
    served = start_server(
        lambda s: declaration_pb2_grpc.add_DeclarationServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    outbox.start()
    yield Declaration(repo, outbox, declaration_pb2_grpc.DeclarationServiceStub(served.channel))
    served.close()
    outbox.stop()
    peer.close()
    repo.close()


@pytest.fixture
def stand_in(start_server: StartServer) -> tuple[StandIn, Served]:
    fake = StandIn()  # type: ignore[abstract]  # only what the outbox calls
    served = start_server(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(fake, s),
        [RISK_INDEX_SERVICE],
    )
    return fake, served


@pytest.fixture
def decl(
    tmp_path: Path, stand_in: tuple[StandIn, Served], start_server: StartServer
) -> Iterator[Declaration]:
    yield from start_declaration(tmp_path, stand_in[1].address, start_server)


def row(i: int, line: int | None = None, **kw: object) -> declaration_pb2.ImportRow:
    fields: dict[str, object] = {
        "line": line if line is not None else i + 2,
        "id_number": IDS[i],
        "name": f"张{i}",
        "phones": [PHONES[i]],
        "residence_county": HEPING,
        "registered_by": CITIZEN,
    }
    fields.update(kw)
    return declaration_pb2.ImportRow(**fields)  # type: ignore[arg-type]


def stream(
    *chunks: Sequence[declaration_pb2.ImportRow], actor: common_pb2.Actor | None = ADMIN
) -> Iterator[declaration_pb2.ImportPeopleRequest]:
    yield declaration_pb2.ImportPeopleRequest(actor=actor)
    for chunk in chunks:
        yield declaration_pb2.ImportPeopleRequest(rows=chunk)


def test_import_stores_people_and_names_each_rejected_row(
    decl: Declaration, stand_in: tuple[StandIn, Served]
) -> None:
    fake, _ = stand_in
    bad_id = IDS[3][:-1] + ("0" if IDS[3][-1] != "0" else "1")
    first = [
        row(0, transit_card="TJ0000000001", residence_county=BINHAI),
        row(1, phones=[PHONES[1], PHONES[21]], registered_by=FAMILY, registrar_id_number=IDS[20]),
        row(2, phones=[], registered_by=GRID, registrar_principal="grid-hp-007"),
        row(3, id_number=bad_id, phones=[PHONES[3], "110"]),
    ]
    second = [
        row(4, registered_by=GRID),  # a grid worker without an account id
        row(5, residence_county=99),
        row(6, registered_by=common_pb2.ACTOR_ROLE_VERIFIER),
        row(7, name=""),
    ]
    reply = decl.stub.ImportPeople(stream(first, second))
    assert (reply.imported, reply.already_present, reply.rejected) == (3, 0, 5)
    assert (reply.chunks, reply.last_line) == (2, 9)
    assert [(r.line, r.field) for r in reply.rejections] == [
        (5, "id_number"),
        (5, "phones[1]"),
        (6, "registrar_principal"),
        (7, "residence_county"),
        (8, "registered_by"),
        (9, "name"),
    ]
    assert f"should be {IDS[3][-1]}" in reply.rejections[0].reason
    text = str(reply)
    assert not any(raw in text for raw in [*IDS, *PHONES, bad_id])

    def person(i: int) -> declaration_pb2.Person:
        got = decl.stub.GetPerson(
            declaration_pb2.GetPersonRequest(
                actor=ADMIN, person=common_pb2.PersonRef(id_number=IDS[i])
            )
        )
        return got.person

    p0, p1, p2 = person(0), person(1), person(2)
    assert p0.residence_county == BINHAI and p0.masked_transit_card == "********0001"
    assert p0.registered_by.role == CITIZEN
    assert p0.registered_by.masked_id_number == mask_id_number(IDS[0])
    assert len(p1.phones) == 2 and p1.registered_by.role == FAMILY
    assert p1.registered_by.masked_id_number == mask_id_number(IDS[20])
    assert p2.registered_by.principal == "grid-hp-007" and not p2.phones
    for i in (3, 4, 5):
        with pytest.raises(grpc.RpcError) as caught:
            person(i)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # One RegisterPeople call for the chunk with people in it, one residence batch; no call
    # per person.
    decl.drained()
    assert len(fake.people_calls) == 1 and fake.unary_calls == 0
    people = fake.people_calls[0]
    assert [p.masked_id_number for p in people] == [mask_id_number(IDS[i]) for i in range(3)]
    assert [len(p.phones) for p in people] == [1, 2, 0]
    assert [len(p.cards) for p in people] == [1, 0, 0]
    (residence,) = fake.batches
    assert residence.source == "residence" and not residence.replace
    assert [(r.county, r.day) for r in residence.rows] == [(BINHAI, ""), (HEPING, ""), (HEPING, "")]
    assert all(r.WhichOneof("subject") == "person_key" for r in residence.rows)


def test_a_rerun_is_idempotent_and_adds_only_what_is_new(
    decl: Declaration, stand_in: tuple[StandIn, Served]
) -> None:
    fake, _ = stand_in
    rows = [row(i) for i in range(5)]
    first = decl.stub.ImportPeople(stream(rows[:3], rows[3:]))
    assert (first.imported, first.already_present, first.rejected) == (5, 0, 0)
    decl.drained()
    calls, batches = len(fake.people_calls), len(fake.batches)
    assert calls == 2 and batches == 2  # one of each per chunk

    again = decl.stub.ImportPeople(stream(rows))
    assert (again.imported, again.already_present, again.updated) == (0, 5, 0)
    decl.drained()
    assert (len(fake.people_calls), len(fake.batches)) == (calls, batches)  # nothing to hand over

    # A later list knows a second phone and a card for person 0, and a move for person 1.
    more = [
        row(0, phones=[PHONES[0], PHONES[30]], transit_card="TJ0000000030"),
        row(1, residence_county=BINHAI),
    ]
    reply = decl.stub.ImportPeople(stream(more))
    assert (reply.imported, reply.already_present, reply.updated) == (0, 2, 2)
    decl.drained()
    (p0,) = fake.people_calls[-1]
    assert [ph.masked_phone for ph in p0.phones] == [mask_phone(PHONES[30])]
    assert len(p0.cards) == 1
    assert [(r.county) for r in fake.batches[-1].rows] == [BINHAI]


def test_conflicts_reject_the_whole_row(decl: Declaration) -> None:
    first = decl.stub.ImportPeople(stream([row(0), row(1)]))
    assert first.imported == 2
    reply = decl.stub.ImportPeople(
        stream(
            [
                row(0, line=10, name="李四"),  # another name for a stored ID number
                row(2, line=11, phones=[PHONES[2], PHONES[1]]),  # person 1 holds that phone
                row(3, line=12, phones=[PHONES[3]], transit_card="TJ0000000099"),
                row(4, line=13, transit_card="TJ0000000099"),  # taken by line 12 just before
                row(3, line=14),  # person 3 again in the same chunk: present, not new
                row(5, line=15, registered_by=FAMILY, registrar_id_number=IDS[5]),
                row(6, line=16, phones=PHONES[6:17]),  # eleven phones
            ]
        )
    )
    assert (reply.imported, reply.already_present, reply.rejected) == (1, 1, 5)
    assert [(r.line, r.field) for r in reply.rejections] == [
        (10, "name"),
        (11, "phones[1]"),
        (13, "transit_card"),
        (15, "registrar_id_number"),
        (16, "phones"),
    ]
    person2 = decl.repo.get_person(Identifiers.from_secret(SECRET).person(IDS[2], "id_number").key)
    assert person2 is None  # nothing of a rejected row is stored


def test_only_an_admin_imports_and_names_itself_first(decl: Declaration) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.ImportPeople(stream([row(0)], actor=None))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(caught.value)] == ["actor"]

    grid = common_pb2.Actor(role=GRID, principal="grid-0042")
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.ImportPeople(stream([row(0)], actor=grid))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    def two_actors() -> Iterator[declaration_pb2.ImportPeopleRequest]:
        yield declaration_pb2.ImportPeopleRequest(actor=ADMIN, rows=[row(0)])
        other = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="someone-else")
        yield declaration_pb2.ImportPeopleRequest(actor=other, rows=[row(1)])

    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.ImportPeople(two_actors())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The chunk before the refused message is stored: a re-run finds it present.
    reply = decl.stub.ImportPeople(stream([row(0), row(1)]))
    assert (reply.imported, reply.already_present) == (1, 1)


def test_an_oversized_chunk_is_refused(decl: Declaration) -> None:
    rows = [declaration_pb2.ImportRow(line=n + 1) for n in range(50_001)]
    with pytest.raises(grpc.RpcError) as caught:
        decl.stub.ImportPeople(stream(rows))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_outbox_waits_for_a_risk_index_that_lacks_register_people(
    decl: Declaration, stand_in: tuple[StandIn, Served]
) -> None:
    fake, _ = stand_in
    fake.refuse = 3  # UNIMPLEMENTED three times, as an older risk index answers
    reply = decl.stub.ImportPeople(stream([row(i) for i in range(3)]))
    assert reply.imported == 3
    decl.drained()
    assert len(fake.people_calls) == 1 and len(fake.people_calls[0]) == 3
    with decl.repo.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox WHERE dead = 1").fetchone()[0] == 0


def test_imported_people_reach_a_real_risk_index(tmp_path: Path, start_server: StartServer) -> None:
    repo = RiskIndexRepository(tmp_path / "risk_index.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    index = RiskIndex(repo, ids, SECRET)
    servicer = RiskIndexServicer(index, ids)
    served = start_server(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(servicer, s),
        [RISK_INDEX_SERVICE],
    )
    try:
        declaration = start_declaration(tmp_path, served.address, start_server)
        decl = next(declaration)
        rows = [row(i, transit_card=f"TJ00000001{i:02d}") for i in range(10)]
        rows[4] = row(4, phones=[PHONES[4], PHONES[24]], residence_county=BINHAI)
        reply = decl.stub.ImportPeople(stream(rows[:6], rows[6:]))
        assert reply.imported == 10
        decl.drained()
        flush = getattr(index, "flush", None)
        if flush is not None:
            flush()
        built = index.current.index
        assert built.person_count == 10
        holder = built.person_id(IDS[4])
        assert holder is not None
        assert set(built.phones_of(holder)) == {
            built.phone_id(PHONES[4]),
            built.phone_id(PHONES[24]),
        }
        assert built.card_holder("TJ0000000100") == built.person_id(IDS[0])
        assert built.source_len("residence") == 10
        next(declaration, None)
    finally:
        index.close()
        served.close()
        repo.close()
