"""Consent for partner look-ups through the real processes (issue 11, item 11): a hospital
triages a patient; the patient sees it (masked) and withdraws that hospital's access; its next
triage is CONSENT_REVOKED while another hospital still works; restoring gives it back. Purpose
limitation: a bus operator calling Triage is refused, and only an exam organiser checks lists
through EvaluateStream. A proxy without a mandate can neither list nor withdraw.

Partners call with their own certificates (the development CA issues them here); the holder and
proxies through the CLI's edge certificate, which mints the token their actor asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    consent_pb2,
    consent_pb2_grpc,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    partners_pb2,
    partners_pb2_grpc,
)
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.channel import open_channel
from clients.stack import Stack
from services._common.auth import Security
from services._common.pki import TRUST_DOMAIN, create_dev_credentials
from services._common.status import reason_of
from tests.e2e.waits import eventually

PATIENT, OTHER, STRANGER = feedgen.synthetic_id_numbers(3, 11_111)
HOSPITAL = "partner-hospital"  # partner/hospital/demo, a development identity
NANKAI = "partner-hospital-nankai"
BUS = "partner-bus-consent"
EXAMS = "partner-exam-organiser-consent"
DESK = display_pb2.Device(device_id="triage-1", place="Demo Hospital pre-check")


def _citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


def _family(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=common_pb2.PersonRef(id_number=id_number)
    )


@dataclass
class World:
    stack: Stack

    def channel_as(self, identity: str, target: str) -> grpc.Channel:
        security = Security.load(self.stack.credentials_dir, identity)
        return grpc.secure_channel(target, security.channel_credentials())

    def triage(self, identity: str, id_number: str) -> partners_pb2.TriageResponse:
        with self.channel_as(identity, self.stack.peers.display) as channel:
            return partners_pb2_grpc.PartnerServiceStub(channel).Triage(
                partners_pb2.TriageRequest(
                    patient=common_pb2.PersonRef(id_number=id_number), desk=DESK
                ),
                timeout=10,
            )

    def consent(self) -> consent_pb2_grpc.ConsentServiceStub:
        return consent_pb2_grpc.ConsentServiceStub(self._declaration)

    def __post_init__(self) -> None:
        self._declaration = open_channel(self.stack.peers.declaration)

    def close(self) -> None:
        self._declaration.close()


@pytest.fixture(scope="module")
def world(module_stack: Stack) -> Iterator[World]:
    stack = module_stack
    create_dev_credentials(
        stack.credentials_dir,
        {
            NANKAI: f"spiffe://{TRUST_DOMAIN}/partner/hospital/nankai",
            BUS: f"spiffe://{TRUST_DOMAIN}/partner/bus_operator/line9",
            EXAMS: f"spiffe://{TRUST_DOMAIN}/partner/exam_organiser/gaokao",
        },
    )
    world = World(stack)
    declaration = declaration_pb2_grpc.DeclarationServiceStub(world._declaration)
    for id_number, name in ((PATIENT, "赵病人"), (OTHER, "钱其他"), (STRANGER, "孙陌生")):
        declaration.Register(
            declaration_pb2.RegisterRequest(
                actor=_citizen(id_number), name=name, id_number=id_number
            ),
            timeout=10,
        )
    # The patient is known to the display's colour source before the first triage.
    eventually(
        "the patient's colour to reach the display",
        lambda: _try_triage(world, NANKAI, OTHER),
        lambda r: isinstance(r, partners_pb2.TriageResponse),
    )
    yield world
    world.close()


def _try_triage(world: World, identity: str, id_number: str) -> object:
    try:
        return world.triage(identity, id_number)
    except grpc.RpcError as error:
        return error


def _refused(call: object) -> tuple[str, str, str]:
    assert isinstance(call, grpc.RpcError) and isinstance(call, grpc.Call), call
    return call.code().name, reason_of(call), call.details() or ""


def _invoke(stack: Stack, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["--declaration", stack.peers.declaration, *args])
    return result.exit_code, result.output


def test_the_holder_sees_a_triage_withdraws_the_hospital_and_restores_it(world: World) -> None:
    triaged = world.triage(HOSPITAL, PATIENT)
    assert triaged.masked_name.startswith("赵")

    # The patient sees who looked them up, masked, with the purpose and the place.
    listed = world.consent().ListPartnerAccess(
        consent_pb2.ListPartnerAccessRequest(
            actor=_citizen(PATIENT), person=common_pb2.PersonRef(id_number=PATIENT)
        ),
        timeout=10,
    )
    assert PATIENT not in str(listed) and listed.masked_id_number.endswith(PATIENT[-2:])
    (seen,) = listed.accesses
    assert seen.partner.principal == "partner:demo" and seen.partner.kind == "hospital"
    assert seen.purpose == consent_pb2.PARTNER_PURPOSE_TRIAGE
    assert seen.allowed and seen.place == "Demo Hospital pre-check"
    assert not seen.partner_revoked
    code, out = _invoke(world.stack, "consent", "list", "--id-number", PATIENT)
    assert code == 0, out
    assert "partner:demo" in out and "triage" in out and PATIENT not in out

    # Withdrawn (through the CLI): that hospital's next triage is refused with what to do.
    code, out = _invoke(world.stack, "consent", "revoke", "partner:demo", "--id-number", PATIENT)
    assert code == 0 and "withdrawn" in out, out
    status, reason, message = _refused(_try_triage(world, HOSPITAL, PATIENT))
    assert (status, reason) == ("PERMISSION_DENIED", "CONSENT_REVOKED")
    assert "show their health code" in message and PATIENT not in message
    # Another hospital still triages the patient.
    assert world.triage(NANKAI, PATIENT).masked_name.startswith("赵")

    listed = world.consent().ListPartnerAccess(
        consent_pb2.ListPartnerAccessRequest(actor=_citizen(PATIENT)), timeout=10
    )
    assert [(a.partner.principal, a.allowed, a.refusal) for a in listed.accesses] == [
        ("partner:nankai", True, ""),
        ("partner:demo", False, "CONSENT_REVOKED"),
        ("partner:demo", True, ""),
    ]
    assert [a.partner_revoked for a in listed.accesses] == [False, True, True]
    assert [r.principal for r in listed.revoked] == ["partner:demo"]

    # Restored: the hospital triages the patient again.
    restored = world.consent().RestorePartnerAccess(
        consent_pb2.RestorePartnerAccessRequest(actor=_citizen(PATIENT), partner="partner:demo"),
        timeout=10,
    )
    assert restored.changed
    assert world.triage(HOSPITAL, PATIENT).masked_name.startswith("赵")


def test_a_proxy_without_a_mandate_can_neither_list_nor_withdraw(world: World) -> None:
    patient = common_pb2.PersonRef(id_number=PATIENT)
    with pytest.raises(grpc.RpcError) as listing:
        world.consent().ListPartnerAccess(
            consent_pb2.ListPartnerAccessRequest(actor=_family(STRANGER), person=patient),
            timeout=10,
        )
    with pytest.raises(grpc.RpcError) as revoking:
        world.consent().RevokePartnerAccess(
            consent_pb2.RevokePartnerAccessRequest(
                actor=_family(STRANGER), person=patient, partner="partner:nankai"
            ),
            timeout=10,
        )
    for refused in (listing, revoking):
        assert _refused(refused.value)[:2] == ("PERMISSION_DENIED", "NO_MANDATE")
    # Nothing changed: Nankai still triages the patient.
    assert world.triage(NANKAI, PATIENT).masked_name.startswith("赵")


def test_a_look_up_outside_the_partners_purpose_is_refused(world: World) -> None:
    # A bus operator triaging: refused at the display's door for its kind.
    status, reason, _ = _refused(_try_triage(world, BUS, OTHER))
    assert (status, reason) == ("PERMISSION_DENIED", "WRONG_PARTNER")

    def evaluate(identity: str) -> object:
        request = colour_pb2.EvaluateStreamRequest(id_numbers=[PATIENT, OTHER])
        with world.channel_as(identity, world.stack.peers.colour) as channel:
            stub = colour_pb2_grpc.ColourServiceStub(channel)
            try:
                return list(stub.EvaluateStream(iter([request]), timeout=10))
            except grpc.RpcError as error:
                return error

    status, reason, message = _refused(evaluate(HOSPITAL))
    assert (status, reason) == ("PERMISSION_DENIED", "PURPOSE_NOT_ALLOWED")
    assert "exam" in message
    answers = evaluate(EXAMS)
    assert isinstance(answers, list) and len(answers) == 1
    assert answers[0].colours == bytes([common_pb2.COLOUR_GREEN] * 2)
