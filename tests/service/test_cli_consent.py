"""`healthcode consent revoke` and `restore` against a ConsentService on port 0 that records
what it is asked: each sends its own RPC with who acts, the person and the partner, and says
whether anything changed."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from healthcode.v1 import common_pb2, consent_pb2, consent_pb2_grpc
from typer.testing import CliRunner

from clients import cli
from clients.credentials import forget, register
from tests.support import Served, StartServer

PERSON = "120101199001011234"
PROXY = "120101196005051237"


class RecordingConsent(consent_pb2_grpc.ConsentServiceServicer):
    """Answers revoke as a first withdrawal and restore as nothing to give back; the look-up
    RPCs are not these commands'."""

    def __init__(self) -> None:
        self.revoked: list[consent_pb2.RevokePartnerAccessRequest] = []
        self.restored: list[consent_pb2.RestorePartnerAccessRequest] = []

    def RevokePartnerAccess(
        self, request: consent_pb2.RevokePartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.RevokePartnerAccessResponse:
        self.revoked.append(request)
        return consent_pb2.RevokePartnerAccessResponse(
            revoked=consent_pb2.RevokedPartner(principal=request.partner), changed=True
        )

    def RestorePartnerAccess(
        self, request: consent_pb2.RestorePartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.RestorePartnerAccessResponse:
        self.restored.append(request)
        return consent_pb2.RestorePartnerAccessResponse(changed=False)

    def CheckPartnerAccess(
        self, request: consent_pb2.CheckPartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.CheckPartnerAccessResponse:
        raise NotImplementedError("not the commands under test")

    def ListPartnerAccess(
        self, request: consent_pb2.ListPartnerAccessRequest, context: grpc.ServicerContext
    ) -> consent_pb2.ListPartnerAccessResponse:
        raise NotImplementedError("not the commands under test")


@pytest.fixture
def consent(start_server: StartServer) -> Iterator[tuple[RecordingConsent, Served]]:
    servicer = RecordingConsent()
    served = start_server(
        lambda server: consent_pb2_grpc.add_ConsentServiceServicer_to_server(servicer, server),
        ["healthcode.v1.ConsentService"],
    )
    register([served.address], None)  # plain text: a test server, no credentials
    yield servicer, served
    forget([served.address])


def _healthcode(served: Served, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["--declaration", served.address, "consent", *args])
    return result.exit_code, result.output


def test_revoke_withdraws_the_partner_for_the_person_by_their_proxy(
    consent: tuple[RecordingConsent, Served],
) -> None:
    servicer, served = consent
    code, out = _healthcode(
        served, "revoke", "partner:ruijin", "--id-number", PERSON,
        "--by", "family-proxy", "--proxy-id", PROXY,
    )  # fmt: skip
    assert code == 0, out
    assert "access withdrawn: partner:ruijin may no longer look this person up" in out
    (sent,) = servicer.revoked
    assert sent.partner == "partner:ruijin" and sent.person.id_number == PERSON
    assert sent.actor.role == common_pb2.ACTOR_ROLE_FAMILY_PROXY
    assert sent.actor.person.id_number == PROXY
    assert servicer.restored == []


def test_restore_says_when_nothing_was_withdrawn(
    consent: tuple[RecordingConsent, Served],
) -> None:
    servicer, served = consent
    code, out = _healthcode(served, "restore", "partner:ruijin", "--id-number", PERSON)
    assert code == 0, out
    assert "partner:ruijin's access was not withdrawn (nothing changed)" in out
    (sent,) = servicer.restored
    assert sent.partner == "partner:ruijin" and sent.person.id_number == PERSON
    assert sent.actor.role == common_pb2.ACTOR_ROLE_CITIZEN
    assert servicer.revoked == []


def test_an_administrator_is_refused_before_any_call(
    consent: tuple[RecordingConsent, Served],
) -> None:
    servicer, served = consent
    code, out = _healthcode(
        served, "revoke", "partner:ruijin", "--id-number", PERSON, "--by", "admin"
    )
    said = " ".join(out.replace("│", " ").split())  # the error box wraps the message
    assert code == 2 and "Invalid value for --by: the person, their proxy or the support" in said
    assert servicer.revoked == [] and servicer.restored == []
