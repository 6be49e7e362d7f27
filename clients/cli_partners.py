"""`healthcode bus-scan` and `healthcode triage`: the partner RPCs (R11, R13) from a terminal.

Both act as a verifier whose workplace is the partner's (a bus, a hospital): the CLI's own
token is minted for that workplace. A partner system calls PartnerService with its own
certificate (spiffe://healthcode/partner/bus_operator/NAME, .../hospital/NAME) instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from healthcode.v1 import common_pb2, display_pb2, partners_pb2, partners_pb2_grpc

from clients.cli_support import colour_badge, out, settings, staff, unary
from clients.credentials import for_target
from services._common.config import ConfigError

partners_app = typer.Typer(rich_markup_mode="rich")

_ALERT_STYLE = "bold white on red"
_PASS_STYLE = "bold white on green"


@contextmanager
def _working_at(workplace: str) -> Iterator[None]:
    """Mint this command's verifier token for `workplace` (the credential carries it)."""
    try:
        creds = for_target(settings.peers.display)
    except ConfigError:
        creds = None  # the call itself says where credentials are looked for
    if creds is None:
        yield
        return
    before = creds.verifier_context
    creds.verifier_context = workplace
    try:
        yield
    finally:
        creds.verifier_context = before


def _verifier(principal: str) -> common_pb2.Actor:
    return staff(common_pb2.ACTOR_ROLE_VERIFIER, principal)


@partners_app.command("bus-scan")
def bus_scan(
    token: Annotated[
        str | None,
        typer.Argument(help="The passenger's code token (HCN1:..., quoted).", show_default=False),
    ] = None,
    card: Annotated[
        str | None,
        typer.Option(
            help="A real-name transit card number instead of a code (elderly, disabled).",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="The temperature the scanner measured, °C.", show_default=False),
    ] = None,
    vehicle: Annotated[str, typer.Option(help="The bus: plate or fleet number.")] = "cli-bus",
    route: Annotated[str, typer.Option(help="The route, e.g. 8.")] = "8",
    device: Annotated[
        str, typer.Option(help="The scanner's id (default: the vehicle).", show_default=False)
    ] = "",
    verifier: Annotated[str, typer.Option(help="The driver's or scanner's staff id.")] = "cli-bus",
) -> None:
    """Bus scanner (公交, R11): a code or real-name transit card plus temperature -> PASS / ALERT.

    ALERT on a fever (>= 37.3 °C) or a code that is not green. Logged with the vehicle and
    route; a card number is never logged raw. A card linked to nobody is NOT_FOUND: the
    passenger shows a code."""
    if (token is None) == (card is None):
        raise typer.BadParameter("give a TOKEN or --card (not both)")
    request = partners_pb2.BusScanRequest(
        actor=_verifier(verifier), vehicle=vehicle, route=route, device_id=device
    )
    if token is not None:
        request.token = token
    else:
        request.transit_card = card or ""
    if temperature is not None:
        request.temperature_celsius = temperature
    with _working_at("bus"):
        response = unary(
            settings.peers.display,
            lambda ch: partners_pb2_grpc.PartnerServiceStub(ch).BusScan(request),
            "bus scan",
        )
    alert = response.decision == partners_pb2.BUS_DECISION_ALERT
    badge = f"[{_ALERT_STYLE}] ALERT [/]" if alert else f"[{_PASS_STYLE}] PASS [/]"
    causes = []
    if response.fever:
        causes.append("fever")
    if response.colour != common_pb2.COLOUR_GREEN:
        causes.append("code not green")
    card_text = f"  card {response.masked_card}" if response.masked_card else ""
    out.print(
        f"{badge}  {colour_badge(response.colour)}  [bold]{response.masked_name}[/]"
        f"{card_text}" + (f"  ({', '.join(causes)})" if causes else ""),
        highlight=False,
    )
    out.print(f"logged as scan {response.scan_id} on route {route}, vehicle {vehicle}")


_GROUP = {
    partners_pb2.TRIAGE_GROUP_GENERAL: ("GENERAL", _PASS_STYLE),
    partners_pb2.TRIAGE_GROUP_KEY: ("KEY GROUP", _ALERT_STYLE),
}


@partners_app.command("triage")
def triage(
    id_number: Annotated[str, typer.Argument(help="The patient's ID number (from their ID card).")],
    desk: Annotated[str, typer.Option(help="The triage desk's device id.")] = "cli-triage",
    place: Annotated[str, typer.Option(help="The hospital and desk.")] = "",
    nurse: Annotated[str, typer.Option(help="The triage nurse's staff id.")] = "cli-nurse",
) -> None:
    """Hospital pre-check triage (预检分诊, R13): a patient's group, general or key.

    With the live colour, the masked name and, for a key patient, the one-line category (close
    contact, fever or symptoms, ...); never the reasons. Logged as a look-up by the hospital."""
    request = partners_pb2.TriageRequest(
        actor=_verifier(nurse),
        patient=common_pb2.PersonRef(id_number=id_number),
        desk=display_pb2.Device(device_id=desk, place=place),
    )
    with _working_at("hospital"):
        response = unary(
            settings.peers.display,
            lambda ch: partners_pb2_grpc.PartnerServiceStub(ch).Triage(request),
            "triage",
        )
    name, style = _GROUP.get(response.group, ("UNKNOWN", "bold"))
    category = f"  ({response.reason_category})" if response.reason_category else ""
    out.print(
        f"[{style}] {name} [/]  {colour_badge(response.colour)}  "
        f"[bold]{response.masked_name}[/]{category}",
        highlight=False,
    )
    out.print(f"logged as look-up {response.lookup_id}")
