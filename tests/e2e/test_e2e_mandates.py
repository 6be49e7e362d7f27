"""Proxy mandates across the real processes (R3, issue 10): a family member registers an
elderly relative without a smartphone, declares and shows her code; the relative (as citizen,
through the CLI) lists who may act for her and revokes the mandate; the family member's next
declaration and Show are PERMISSION_DENIED (NO_MANDATE), and the display log names the proxy
and the mandate of every Show they made."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
from healthcode.v1 import (
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
)

from clients import feedgen
from clients.channel import open_channel
from clients.stack import Stack
from tests import pg
from tests.e2e.cli_support import invoke
from tests.e2e.waits import eventually
from tests.support import refusal as _refusal

T = TypeVar("T")
GRANNY, DAUGHTER = feedgen.synthetic_id_numbers(2, 7272)
HER = common_pb2.PersonRef(id_number=GRANNY)
DAUGHTER_ACTS = common_pb2.Actor(
    role=common_pb2.ACTOR_ROLE_FAMILY_PROXY, person=common_pb2.PersonRef(id_number=DAUGHTER)
)
DEVICE = display_pb2.Device(device_id="daughter-phone", place="community clinic")


def _try(call: Callable[[], T]) -> T | str:
    try:
        return call()
    except grpc.RpcError as e:
        if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNAVAILABLE:
            return f"UNAVAILABLE: {e.details()}"
        raise


def test_a_family_member_acts_for_a_relative_until_she_revokes(stack: Stack) -> None:
    peers = stack.peers
    with (
        open_channel(peers.declaration) as dch,
        open_channel(peers.display) as pch,
        open_channel(peers.colour) as cch,
    ):
        declaration = declaration_pb2_grpc.DeclarationServiceStub(dch)
        display = display_pb2_grpc.DisplayServiceStub(pch)

        registered = declaration.Register(
            declaration_pb2.RegisterRequest(actor=DAUGHTER_ACTS, name="王秀英", id_number=GRANNY)
        )
        assert registered.created
        declared = declaration.Declare(
            declaration_pb2.DeclareRequest(
                actor=DAUGHTER_ACTS, person=HER, temperature_celsius=36.4
            )
        ).declaration
        assert declared.mandate_id > 0

        def show() -> display_pb2.ShowResponse:
            return display.Show(
                display_pb2.ShowRequest(actor=DAUGHTER_ACTS, person=HER, device=DEVICE)
            )

        # The registration reaches the display's replica through the risk index's next version.
        shown = eventually(
            "the relative's first code, shown by her daughter",
            lambda: _try(show),
            lambda r: isinstance(r, display_pb2.ShowResponse),
        )
        assert isinstance(shown, display_pb2.ShowResponse)
        assert shown.masked_name == registered.person.masked_name
        # Under the mandate she may also read her relative's reasons (Explain).
        colour = colour_pb2_grpc.ColourServiceStub(cch)

        def explain() -> colour_pb2.ExplainResponse:
            return colour.Explain(colour_pb2.ExplainRequest(actor=DAUGHTER_ACTS, person=HER))

        assert _refusal(explain) is None

        # The relative, as citizen, sees who may act for her (masked) ...
        code, out = invoke(stack, "mandate", "list", GRANNY)
        assert code == 0, out
        assert f"mandate {declared.mandate_id}" in out and "active" in out, out
        assert "family proxy" in out and "(registered them)" in out, out
        # The family member as recorded (masked, or by key where her credential is a token
        # without her masked number).
        masked_daughter = registered.person.registered_by.masked_id_number
        assert masked_daughter in out and registered.person.masked_id_number in out
        assert GRANNY not in out and DAUGHTER not in out
        # ... and the daughter whom she acts for.
        [held] = declaration.ListMandates(
            declaration_pb2.ListMandatesRequest(actor=DAUGHTER_ACTS)
        ).mandates
        assert held.mandate_id == declared.mandate_id
        assert held.basis == declaration_pb2.MANDATE_BASIS_REGISTRATION

        # She revokes it.
        code, out = invoke(
            stack,
            "mandate", "revoke", str(held.mandate_id),
            "--id-number", GRANNY,
            "--reason", "my son helps me now",
        )  # fmt: skip
        assert code == 0 and "revoked" in out, out
        assert GRANNY not in out

        refused = _refusal(
            lambda: declaration.Declare(
                declaration_pb2.DeclareRequest(actor=DAUGHTER_ACTS, person=HER)
            )
        )
        assert refused is not None, "the revoked proxy declared"
        assert refused[0] == grpc.StatusCode.PERMISSION_DENIED and refused[2] == "NO_MANDATE"
        assert "no active mandate" in refused[1]
        # The display service keeps a confirmed mandate at most a second.
        refused_show = eventually(
            "the revoked proxy's Show to be refused",
            lambda: _refusal(show),
            lambda r: r is not None,
        )
        assert refused_show is not None
        assert refused_show[0] == grpc.StatusCode.PERMISSION_DENIED
        assert refused_show[2] == "NO_MANDATE"
        # Nor may she read the reasons any more.
        refused_explain = eventually(
            "the revoked proxy's Explain to be refused",
            lambda: _refusal(explain),
            lambda r: r is not None,
        )
        assert refused_explain is not None and refused_explain[2] == "NO_MANDATE"

        code, out = invoke(stack, "mandate", "list", GRANNY, "--all")
        # (rich wraps long lines at the terminal's width)
        assert code == 0 and "revoked" in out and "my son helps me now" in " ".join(out.split())

    # Every Show the proxy made is in the display log with the proxy and the mandate.
    db = pg.stack_place(stack.extra_env, stack.data_dir / "display" / "display.db", "display")
    actors = {a for (a,) in pg.rows(db, "SELECT actor FROM display_events")}
    proxy_shows = [a for a in actors if a.startswith("family_proxy:")]
    assert proxy_shows and all(a.endswith(f" mandate:{held.mandate_id}") for a in proxy_shows)
    if masked_daughter:
        assert proxy_shows == [f"family_proxy:{masked_daughter} mandate:{held.mandate_id}"]
