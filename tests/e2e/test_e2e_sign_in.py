"""Signing in through the real declaration service (AccountService): a person proves a phone
registered to them with a one-time code and gets a bearer token; with that token alone (no
issuer key on the client) they show their own code and nobody else's (issue 10, item 1)."""

from __future__ import annotations

import grpc
import pytest
from healthcode.v1 import (
    account_pb2,
    account_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
)
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.channel import open_channel
from clients.credentials import ClientCredentials
from clients.stack import Stack
from services._common.auth import Security
from services._common.status import reason_of
from tests.e2e.waits import eventually

ME, SOMEONE = feedgen.synthetic_id_numbers(2, 4242)
MY_PHONE, OTHER_PHONE = "13800138011", "13900139022"
DEVICE = display_pb2.Device(device_id="my-phone", place="metro")


def _register(stack: Stack, id_number: str, phone: str) -> None:
    with open_channel(stack.peers.declaration) as channel:
        declaration_pb2_grpc.DeclarationServiceStub(channel).Register(
            declaration_pb2.RegisterRequest(
                actor=common_pb2.Actor(
                    role=common_pb2.ACTOR_ROLE_CITIZEN,
                    person=common_pb2.PersonRef(id_number=id_number),
                ),
                name="王小明",
                id_number=id_number,
                phones=[phone],
            )
        )


def _as_holder_of(stack: Stack, token: str) -> grpc.Channel:
    """A client that holds only the token (no issuer key), as a phone does."""
    creds = ClientCredentials(Security.load(stack.credentials_dir, "cli"), issuer=None, token=token)
    return open_channel(stack.peers.display, credentials=creds)


def _show(channel: grpc.Channel, id_number: str) -> display_pb2.ShowResponse | grpc.Call:
    try:
        return display_pb2_grpc.DisplayServiceStub(channel).Show(
            display_pb2.ShowRequest(person=common_pb2.PersonRef(id_number=id_number), device=DEVICE)
        )
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return e


def test_a_person_signs_in_with_a_code_and_shows_only_their_own_code(stack: Stack) -> None:
    _register(stack, ME, MY_PHONE)
    _register(stack, SOMEONE, OTHER_PHONE)
    with open_channel(stack.peers.declaration) as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        # Someone else's phone: the same answer, and no code goes out.
        theirs = accounts.RequestSignInCode(
            account_pb2.RequestSignInCodeRequest(id_number=ME, phone=OTHER_PHONE)
        )
        assert theirs.development_code == "" and theirs.masked_phone == "139****9022"
        sent = accounts.RequestSignInCode(
            account_pb2.RequestSignInCodeRequest(id_number=ME, phone=MY_PHONE)
        )
        assert len(sent.development_code) == 6 and sent.masked_phone == "138****8011"
        wrong = "000000" if sent.development_code != "000000" else "111111"
        with pytest.raises(grpc.RpcError) as refused:
            accounts.SignIn(account_pb2.SignInRequest(id_number=ME, code=wrong))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(refused.value) == "SIGN_IN_REFUSED"
        signed = accounts.SignIn(
            account_pb2.SignInRequest(id_number=ME, code=sent.development_code)
        )
        assert signed.masked_id_number.startswith(ME[:2]) and ME not in signed.masked_id_number
        # A code is used once.
        with pytest.raises(grpc.RpcError) as again:
            accounts.SignIn(account_pb2.SignInRequest(id_number=ME, code=sent.development_code))
        assert reason_of(again.value) == "SIGN_IN_REFUSED"

    with _as_holder_of(stack, signed.token) as mine:
        shown = eventually(
            "my code to show",
            lambda: _show(mine, ME),
            lambda r: isinstance(r, display_pb2.ShowResponse),
        )
        assert isinstance(shown, display_pb2.ShowResponse) and shown.token
        theirs_shown = _show(mine, SOMEONE)
        assert isinstance(theirs_shown, grpc.Call)
        assert theirs_shown.code() == grpc.StatusCode.PERMISSION_DENIED
        # Nor may the holder of a person's token claim a staff role in the body.
        scan = display_pb2_grpc.DisplayServiceStub(mine)
        with pytest.raises(grpc.RpcError) as as_verifier:
            scan.Scan(
                display_pb2.ScanRequest(
                    actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-1"),
                    token=shown.token,
                    device=DEVICE,
                )
            )
        assert as_verifier.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_five_wrong_codes_end_the_code(stack: Stack) -> None:
    _register(stack, ME, MY_PHONE)
    with open_channel(stack.peers.declaration) as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        sent = accounts.RequestSignInCode(
            account_pb2.RequestSignInCodeRequest(id_number=ME, phone=MY_PHONE)
        )
        right = sent.development_code
        wrong = "000000" if right != "000000" else "111111"
        for _ in range(5):
            with pytest.raises(grpc.RpcError):
                accounts.SignIn(account_pb2.SignInRequest(id_number=ME, code=wrong))
        with pytest.raises(grpc.RpcError) as ended:
            accounts.SignIn(account_pb2.SignInRequest(id_number=ME, code=right))
        assert reason_of(ended.value) == "SIGN_IN_REFUSED"
        # A new code cannot be asked for at once either.
        with pytest.raises(grpc.RpcError) as soon:
            accounts.RequestSignInCode(
                account_pb2.RequestSignInCodeRequest(id_number=ME, phone=MY_PHONE)
            )
        assert soon.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_cli_signs_in_and_prints_a_token(stack: Stack) -> None:
    _register(stack, ME, MY_PHONE)
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        ["--declaration", p.declaration, "--display", p.display,
         "sign-in", ME, "--phone", MY_PHONE, "--token-only"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert token.count(".") == 2  # a JWT
    assert ME not in result.output
    with _as_holder_of(stack, token) as mine:
        shown = eventually(
            "my code to show",
            lambda: _show(mine, ME),
            lambda r: isinstance(r, display_pb2.ShowResponse),
        )
        assert isinstance(shown, display_pb2.ShowResponse)


def _staff_channel(stack: Stack, token: str, target: str) -> grpc.Channel:
    creds = ClientCredentials(Security.load(stack.credentials_dir, "cli"), issuer=None, token=token)
    return open_channel(target, credentials=creds)


def test_staff_sign_in_with_an_account_an_administrator_made(stack: Stack) -> None:
    admin = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="root")
    with open_channel(stack.peers.declaration) as channel:  # the operator's own admin token
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        made = accounts.CreateStaffAccount(
            account_pb2.CreateStaffAccountRequest(
                actor=admin,
                principal="bus-17",
                role=account_pb2.STAFF_ROLE_VERIFIER,
                context="bus",
                password="correct horse battery",
            )
        )
        assert made.created
        with pytest.raises(grpc.RpcError) as short:
            accounts.CreateStaffAccount(
                account_pb2.CreateStaffAccountRequest(
                    actor=admin, principal="desk-1", role=account_pb2.STAFF_ROLE_SUPPORT,
                    password="short",
                )
            )  # fmt: skip
        assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as wrong:
            accounts.SignInStaff(
                account_pb2.SignInStaffRequest(principal="bus-17", password="wrong password!")
            )
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(wrong.value) == "SIGN_IN_REFUSED"
        signed = accounts.SignInStaff(
            account_pb2.SignInStaffRequest(principal="bus-17", password="correct horse battery")
        )
        assert signed.role == account_pb2.STAFF_ROLE_VERIFIER and signed.context == "bus"

    # The verifier's token: it may ask for the verification keys, not show anyone's code, and
    # not make accounts.
    with _staff_channel(stack, signed.token, stack.peers.display) as display:
        stub = display_pb2_grpc.DisplayServiceStub(display)
        assert stub.GetVerificationKey(display_pb2.GetVerificationKeyRequest()).keys
        refused = _show(display, ME)
        assert isinstance(refused, grpc.Call)
        assert reason_of(refused) == "ROLE_NOT_ALLOWED"  # type: ignore[arg-type]
    with _staff_channel(stack, signed.token, stack.peers.declaration) as declaration:
        with pytest.raises(grpc.RpcError) as not_admin:
            account_pb2_grpc.AccountServiceStub(declaration).CreateStaffAccount(
                account_pb2.CreateStaffAccountRequest(
                    principal="bus-18", role=account_pb2.STAFF_ROLE_ADMIN, password="x" * 12
                )
            )
        assert reason_of(not_admin.value) == "ROLE_NOT_ALLOWED"

    # Disabled: it signs in no more.
    with open_channel(stack.peers.declaration) as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        assert accounts.DisableStaffAccount(
            account_pb2.DisableStaffAccountRequest(actor=admin, principal="bus-17", reason="left")
        ).disabled
        with pytest.raises(grpc.RpcError) as gone:
            accounts.SignInStaff(
                account_pb2.SignInStaffRequest(principal="bus-17", password="correct horse battery")
            )
        assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED
