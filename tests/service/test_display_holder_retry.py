"""A display's holder look-up that the declaration service sheds (RESOURCE_EXHAUSTED with
RetryInfo, as a cold cache's burst provokes) is tried again after the delay asked for, within a
budget; past it, or for any other failure, the Show fails UNAVAILABLE at once."""

from __future__ import annotations

import grpc
import pytest
from healthcode.v1 import declaration_pb2, declaration_pb2_grpc

from services._common.errors import NotFound, Overloaded, Unavailable
from services._common.status import to_status
from services.display import peers
from services.display.logic import Holder
from services.display.peers import DeclarationPeer
from tests.support import StartServer

KEY = b"k" * 16


class SheddingDeclaration(declaration_pb2_grpc.DeclarationServiceServicer):
    """GetPerson shed `shed` times (retry after `delay_s`), then answered; or refused with
    `code` every time."""

    def __init__(
        self, shed: int, delay_s: float = 0.05, code: grpc.StatusCode | None = None
    ) -> None:
        self.shed = shed
        self.delay_s = delay_s
        self.code = code
        self.calls = 0

    def GetPerson(
        self, request: declaration_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> declaration_pb2.GetPersonResponse:
        self.calls += 1
        if self.code is not None:
            context.abort(self.code, "no")
        if self.calls <= self.shed:
            context.abort_with_status(to_status(Overloaded("overloaded", self.delay_s)))
        response = declaration_pb2.GetPersonResponse()
        response.person.masked_name = "张*"
        response.person.masked_id_number = "12**********3X"
        return response


def _peer(start_server: StartServer, servicer: SheddingDeclaration) -> DeclarationPeer:
    served = start_server(
        lambda s: declaration_pb2_grpc.add_DeclarationServiceServicer_to_server(servicer, s),
        ["healthcode.v1.DeclarationService"],
    )
    return DeclarationPeer(served.channel, timeout_s=5)


def test_a_shed_look_up_is_tried_again_after_the_delay_asked_for(
    start_server: StartServer,
) -> None:
    servicer = SheddingDeclaration(shed=2)  # type: ignore[abstract]  # GetPerson only
    holder = _peer(start_server, servicer).holder_of(KEY)
    assert holder == Holder("张*", "12**********3X")
    assert servicer.calls == 3


def test_shedding_past_the_budget_fails_unavailable(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "HOLDER_RETRY_BUDGET_S", 0.12)
    servicer = SheddingDeclaration(shed=100, delay_s=0.05)  # type: ignore[abstract]
    with pytest.raises(Unavailable, match="RESOURCE_EXHAUSTED"):
        _peer(start_server, servicer).holder_of(KEY)
    assert servicer.calls == 3  # waited 0.05 + 0.05; a third wait would pass 0.12


@pytest.mark.parametrize(
    ("code", "error"),
    [(grpc.StatusCode.UNAVAILABLE, Unavailable), (grpc.StatusCode.NOT_FOUND, NotFound)],
)
def test_other_failures_are_not_tried_again(
    start_server: StartServer, code: grpc.StatusCode, error: type[Exception]
) -> None:
    servicer = SheddingDeclaration(shed=0, code=code)  # type: ignore[abstract]
    with pytest.raises(error):
        _peer(start_server, servicer).holder_of(KEY)
    assert servicer.calls == 1
