"""Rotating the token signing key of a running display with two workers (issue 10, "Keys"):
`healthcode keys rotate` on its data directory, no restart. Codes shown before the rotation
still scan at either worker; within one periodic check every worker signs with the new key;
GetVerificationKey publishes both keys meanwhile. No timing assertions beyond that bound."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from healthcode.v1 import (
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.channel import open_channel
from clients.stack import Stack
from services.display.keyring import RELOAD_INTERVAL_S
from services.display.tokens import decode_token
from tests.e2e.waits import eventually
from tests.support import running_stack

PEOPLE = feedgen.synthetic_id_numbers(4, 5150)
VERIFIER = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-k")
DEVICE = display_pb2.Device(device_id="phone-k", place="Tianjin station")
CHANNELS = 8


def _citizen(id_number: str) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=id_number)
    )


@pytest.fixture
def two_displays(tmp_path: Path) -> Iterator[Stack]:
    yield from running_stack(tmp_path / "data", {"HEALTHCODE_DISPLAY_PROCESSES": "2"})


def test_a_rotation_reaches_every_worker_and_keeps_codes_on_screens_valid(
    two_displays: Stack,
) -> None:
    stack = two_displays
    with ExitStack() as closing:
        declaration = declaration_pb2_grpc.DeclarationServiceStub(
            closing.enter_context(open_channel(stack.peers.declaration))
        )
        risk_index = risk_index_pb2_grpc.RiskIndexServiceStub(
            closing.enter_context(open_channel(stack.peers.risk_index))
        )
        # Distinct connections: the kernel spreads them over both workers.
        displays = [
            display_pb2_grpc.DisplayServiceStub(
                closing.enter_context(
                    open_channel(
                        stack.peers.display, options=[("grpc.use_local_subchannel_pool", 1)]
                    )
                )
            )
            for _ in range(CHANNELS)
        ]
        for i, person in enumerate(PEOPLE):
            declaration.Register(
                declaration_pb2.RegisterRequest(
                    actor=_citizen(person), name=f"钱{i}", id_number=person
                )
            )
        version = risk_index.GetIndexVersion(
            risk_index_pb2.GetIndexVersionRequest()
        ).accepted_version

        def show(display: display_pb2_grpc.DisplayServiceStub, person: str) -> str:
            request = display_pb2.ShowRequest(
                actor=_citizen(person),
                person=common_pb2.PersonRef(id_number=person),
                device=DEVICE,
                min_index_version=version,
            )
            return str(display.Show(request, timeout=10).token)

        def key_id(token: str) -> bytes | None:
            return decode_token(token).claims.key_id

        def scan(display: display_pb2_grpc.DisplayServiceStub, token: str) -> None:
            display.Scan(display_pb2.ScanRequest(actor=VERIFIER, token=token, device=DEVICE))

        published = displays[0].GetVerificationKey(display_pb2.GetVerificationKeyRequest())
        first = published.key_id
        assert [k.key_id for k in published.keys] == [first]
        before = [show(d, PEOPLE[n % len(PEOPLE)]) for n, d in enumerate(displays)]
        assert {key_id(t) for t in before} == {first}
        keys_dir = stack.data_dir / "display" / "token-keys"
        assert [p.name for p in keys_dir.glob("*.json")] == [f"{first.hex()}.json"]

        result = CliRunner().invoke(cli.app, ["keys", "rotate", "--data-dir", str(stack.data_dir)])
        assert result.exit_code == 0, result.output
        assert f"{first.hex()} retired" in result.output

        # Every worker signs with the new key within one periodic check, without a restart.
        def signers() -> set[bytes | None]:
            return {key_id(show(d, PEOPLE[0])) for d in displays}

        second = eventually(
            "every worker signing with the new key",
            signers,
            lambda ids: len(ids) == 1 and first not in ids,
            timeout_s=RELOAD_INTERVAL_S + 20,
        ).pop()
        assert second is not None
        # Codes shown before the rotation scan at any worker (one scan each).
        for n, token in enumerate(before):
            scan(displays[(n + 1) % CHANNELS], token)
        # Both keys are published meanwhile, at every worker.
        for display in displays:
            keys = display.GetVerificationKey(display_pb2.GetVerificationKeyRequest())
            assert keys.key_id == second
            assert [k.key_id for k in keys.keys] == [second, first]
            assert keys.keys[1].HasField("not_after")
        # A token of the new key scans whichever worker signed it.
        fresh = show(displays[0], PEOPLE[1])
        scan(displays[1], fresh)
        with pytest.raises(grpc.RpcError) as again:
            scan(displays[2], fresh)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    log = stack.log_tail("display", 200_000)
    assert "token keys re-read" in log and second.hex() in log
    # The logs name keys by id only.
    files = [json.loads(p.read_text()) for p in keys_dir.glob("*.json")]
    assert len(files) == 2
    for document in files:
        assert document["private_key"] not in log and document["public_key"] not in log
