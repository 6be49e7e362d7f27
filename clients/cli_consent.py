"""`healthcode consent`: who looked a person up, and withdrawing a partner's access (issue 11,
item 11; docs/partners.md, "Consent").

A hospital triaging a patient by ID number or a bus reading a real-name transit card looks the
person up without them showing a code; each such look-up is recorded for the holder. `list`
shows them (masked), `revoke` withdraws a partner's access (its next look-up of the person is
refused, CONSENT_REVOKED), `restore` gives it back. For the holder, a family member or grid
worker with a mandate, or the support desk.

Calls go to the declaration service the root options name; who may act is `healthcode card`'s
choice of --by, less the administrator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from healthcode.v1 import common_pb2, consent_pb2, consent_pb2_grpc
from rich.table import Table

from clients.cli_cards import By, PrincipalOption
from clients.cli_support import (
    HOLDER_ROLE_NAME,
    ProxyOption,
    T,
    acting,
    cst,
    declaration_call,
    out,
    recorded,
)

consent_app = typer.Typer(
    name="consent",
    help="Consent for partner look-ups (GB/T 38962): [bold]list[/] shows which partners "
    "(hospitals triaging, buses reading a transit card) looked a person up, when and what for; "
    "[bold]revoke[/] withdraws a partner's access (its next look-up is refused); "
    "[bold]restore[/] gives it back. For the holder, a family member or grid worker with a "
    "mandate, or the support desk. Everything shown is masked.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

IdNumberOption = Annotated[
    str, typer.Option("--id-number", help="The person's resident ID number.")
]
ByOption = Annotated[
    By,
    typer.Option(
        "--by",
        help="Who acts: citizen (the person), family-proxy (give --proxy-id), grid-worker or "
        "support (give --principal).",
    ),
]
PartnerArgument = Annotated[
    str, typer.Argument(help="The partner as `consent list` shows it, e.g. partner:ruijin.")
]
_PURPOSE = {
    consent_pb2.PARTNER_PURPOSE_TRIAGE: "triage",
    consent_pb2.PARTNER_PURPOSE_BUS: "bus (transit card)",
    consent_pb2.PARTNER_PURPOSE_EXAM: "exam",
}


def _actor(by: By, id_number: str, proxy_id: str | None, principal: str) -> common_pb2.Actor:
    if by == By.admin:
        raise typer.BadParameter(
            "the person, their proxy or the support desk decides who may look them up",
            param_hint="--by",
        )
    return acting(by, id_number, proxy_id, principal)


def _call(call: Callable[[consent_pb2_grpc.ConsentServiceStub], T], what: str) -> T:
    """One call to the ConsentService of the declaration service the root options name."""
    return declaration_call(consent_pb2_grpc.ConsentServiceStub, call, what)


@consent_app.command("list")
def consent_list(
    id_number: IdNumberOption,
    by: ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: PrincipalOption = "cli",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many look-ups.")] = 100,
) -> None:
    """Who looked the person up, newest first, and whose access is withdrawn.

    For each look-up: the partner, what for, where, and whether it was answered.

    [dim]healthcode consent list --id-number GRANNY_ID --by family-proxy --proxy-id MY_ID[/]"""
    request = consent_pb2.ListPartnerAccessRequest(
        actor=_actor(by, id_number, proxy_id, principal),
        person=common_pb2.PersonRef(id_number=id_number),
        page_size=limit,
    )
    listed = _call(lambda stub: stub.ListPartnerAccess(request), "consent list")
    who = f"{listed.masked_name} ({listed.masked_id_number})"
    if not listed.accesses:
        out.print(f"no partner has looked up {who}")
    else:
        table = Table(title=f"partner look-ups of {who}")
        for column in ("when (CST)", "partner", "kind", "purpose", "where", "outcome"):
            table.add_column(column)
        for a in listed.accesses:
            outcome = "[green]answered[/]" if a.allowed else f"[red]refused[/] {a.refusal}"
            partner = a.partner.principal + (" [red](withdrawn)[/]" if a.partner_revoked else "")
            table.add_row(
                cst(a.at),
                partner,
                a.partner.kind,
                _PURPOSE.get(a.purpose, "?"),
                a.place,
                outcome,
            )
        out.print(table)
    for r in listed.revoked:
        out.print(
            f"access withdrawn: [bold]{r.principal}[/] since {cst(r.revoked_at)} "
            f"by {recorded(r.revoked_by, HOLDER_ROLE_NAME)}"
            + (f" (mandate {r.mandate_id})" if r.mandate_id else "")
        )


@consent_app.command("revoke")
def consent_revoke(
    partner: PartnerArgument,
    id_number: IdNumberOption,
    by: ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: PrincipalOption = "cli",
) -> None:
    """Withdraw a partner's access: its next look-up of the person is refused.

    The partner's staff are told to ask for the person's code instead.

    [dim]healthcode consent revoke partner:ruijin --id-number MY_ID[/]"""
    _change_access(True, partner, id_number, by, proxy_id, principal)


@consent_app.command("restore")
def consent_restore(
    partner: PartnerArgument,
    id_number: IdNumberOption,
    by: ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: PrincipalOption = "cli",
) -> None:
    """Give a partner its access back.

    [dim]healthcode consent restore partner:ruijin --id-number MY_ID[/]"""
    _change_access(False, partner, id_number, by, proxy_id, principal)


def _change_access(
    withdraw: bool, partner: str, id_number: str, by: By, proxy_id: str | None, principal: str
) -> None:
    """`consent revoke` (withdraw) and `consent restore`: one request, to two RPCs."""
    fields: dict[str, Any] = {
        "actor": _actor(by, id_number, proxy_id, principal),
        "person": common_pb2.PersonRef(id_number=id_number),
        "partner": partner,
    }
    if withdraw:
        revoke = consent_pb2.RevokePartnerAccessRequest(**fields)
        revoked = _call(lambda stub: stub.RevokePartnerAccess(revoke), "consent revoke")
        changed = revoked.changed
        done = f"access withdrawn: {revoked.revoked.principal} may no longer look this person up"
        unchanged = "already withdrawn"
    else:
        restore = consent_pb2.RestorePartnerAccessRequest(**fields)
        changed = _call(lambda stub: stub.RestorePartnerAccess(restore), "consent restore").changed
        done = f"access restored: {partner} may look this person up again"
        unchanged = "not withdrawn"
    out.print(done if changed else f"{partner}'s access was {unchanged} (nothing changed)")
