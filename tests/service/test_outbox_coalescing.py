"""The declaration outbox sends consecutive registrations, phone and card links to the risk
index as one RegisterPeople call, in order, instead of one call each; if that call is refused
it falls back to one call per message, so only the message at fault is set aside."""

from __future__ import annotations

from pathlib import Path

import grpc
from healthcode.v1 import risk_index_pb2, risk_index_pb2_grpc

from services._common.actors import Actor, Role
from services._common.identifiers import Identifiers
from services.declaration.logic import Declarations
from services.declaration.outbox import OutboxWorker
from services.declaration.repository import DeclarationRepository
from services.risk_index.servicer import SERVICE_NAME as RISK_INDEX_SERVICE
from tests.service.test_declaration_import import IDS, PHONES, StandIn
from tests.support import SECRET, StartServer

GRID = Actor(Role.GRID_WORKER, "grid-7")


class Refusing(StandIn):
    """Refuses every RegisterPeople as invalid: the outbox must fall back to single calls."""

    def RegisterPeople(
        self, request: risk_index_pb2.RegisterPeopleRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.RegisterPeopleResponse:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "people[1].person_key: bad")
        raise AssertionError("not reached: abort raises")

    def LinkPhone(
        self, request: risk_index_pb2.LinkPhoneRequest, context: grpc.ServicerContext
    ) -> risk_index_pb2.LinkPhoneResponse:
        with self.lock:
            self.unary_calls += 1
        return risk_index_pb2.LinkPhoneResponse(index_version=1)


def registered_while_down(
    tmp_path: Path, fake: StandIn, start_server: StartServer
) -> tuple[DeclarationRepository, OutboxWorker]:
    served = start_server(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(fake, s),
        [RISK_INDEX_SERVICE],
    )
    repo = DeclarationRepository(tmp_path / "declaration.sqlite3")
    ids = Identifiers.from_secret(SECRET)
    declarations = Declarations(repo, ids)
    for i in range(5):  # the outbox is not started: the messages wait, in order
        declarations.register(GRID, f"张{i}", IDS[i], [PHONES[i]])
    stub = risk_index_pb2_grpc.RiskIndexServiceStub(served.channel)
    return repo, OutboxWorker(repo, stub, deadline_s=5.0)


def test_consecutive_registry_messages_go_as_one_call_in_order(
    tmp_path: Path, start_server: StartServer
) -> None:
    fake = StandIn()  # type: ignore[abstract]  # only what the outbox calls
    repo, outbox = registered_while_down(tmp_path, fake, start_server)
    try:
        waiting = repo.pending_count()
        assert waiting >= 10  # a registration and a phone link for each of five people
        assert outbox.drain()
        assert repo.pending_count() == 0 and outbox.delivered == waiting
        assert fake.unary_calls == 0
        sent = [entry for call in fake.people_calls for entry in call]
        assert len(fake.people_calls) <= -(-waiting // 16)  # one call per pending read at most
        hasher = Identifiers.from_secret(SECRET)
        keys = [hasher.person(i, "id").key for i in IDS[:5]]
        # In order: each person before (or with) their phone.
        assert [e.person_key for e in sent if not e.phones] == keys
        linked = [(e.person_key, e.phones[0].masked_phone) for e in sent if e.phones]
        assert [k for k, _ in linked] == keys
        assert all("****" in m for _, m in linked)
    finally:
        repo.close()


def test_a_refused_group_falls_back_to_one_call_per_message(
    tmp_path: Path, start_server: StartServer
) -> None:
    fake = Refusing()  # type: ignore[abstract]
    repo, outbox = registered_while_down(tmp_path, fake, start_server)
    try:
        waiting = repo.pending_count()
        assert outbox.drain()
        assert repo.pending_count() == 0 and fake.unary_calls == waiting
    finally:
        repo.close()
