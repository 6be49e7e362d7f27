"""What every `healthcode` command module shares: the root options' settings, the consoles, one
way to call a service and print its failure, who acts (the person, a family proxy, or staff by
role), and how colours, times and recorded actors are shown.

`clients/cli.py` and every `clients/cli_*.py` import this module and never each other's
helpers, so `python -m clients.cli` (which runs cli.py as `__main__`) loads no second copy of
the CLI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import grpc
import typer
from healthcode.v1 import common_pb2, declaration_pb2
from rich.console import Console

from clients.channel import DEFAULT_TIMEOUT_S, Peers, describe_error, open_channel
from clients.credentials import ClientCredentials
from services._common.config import ConfigError

T = TypeVar("T")
S = TypeVar("S")

out = Console()
err = Console(stderr=True)


@dataclass
class Settings:
    """The root options (`healthcode --declaration ... --timeout ...`), set before a command
    runs."""

    peers: Peers
    timeout: float


settings = Settings(Peers.from_env(), DEFAULT_TIMEOUT_S)


# --- calls ------------------------------------------------------------------------------------


def fail(error: grpc.RpcError, what: str) -> NoReturn:
    """Print a failed call as a person should read it (status, message, which field to fix)
    and exit 1."""
    err.print(f"[bold red]{what} failed[/]")
    err.print(describe_error(error), markup=False, highlight=False)
    raise typer.Exit(1)


def service_channel(
    target: str, credentials: ClientCredentials | None | Literal["auto"] = "auto"
) -> grpc.Channel:
    """A channel to `target` with the --timeout deadline; no credentials found exits 2, saying
    where they are looked for."""
    try:
        return open_channel(target, timeout_s=settings.timeout, credentials=credentials)
    except ConfigError as e:
        err.print(f"[bold red]cannot connect:[/] {e}", highlight=False)
        raise typer.Exit(2) from None


def unary(
    target: str,
    call: Callable[[grpc.Channel], T],
    what: str,
    credentials: ClientCredentials | None | Literal["auto"] = "auto",
) -> T:
    """One call to the service at `target`; a failure is printed (`fail`) and exits 1."""
    with service_channel(target, credentials) as channel:
        try:
            return call(channel)
        except grpc.RpcError as e:
            fail(e, what)


def declaration_call(stub: Callable[[grpc.Channel], S], call: Callable[[S], T], what: str) -> T:
    """One call to a service of the declaration process (its DeclarationService,
    ConsentService, ...), as `unary`."""
    return unary(settings.peers.declaration, lambda channel: call(stub(channel)), what)


# --- who acts ---------------------------------------------------------------------------------

# The role of each --by word; a command's own choice of words (an enum) says which it takes.
ROLE_OF = {
    "citizen": common_pb2.ACTOR_ROLE_CITIZEN,
    "family-proxy": common_pb2.ACTOR_ROLE_FAMILY_PROXY,
    "grid-worker": common_pb2.ACTOR_ROLE_GRID_WORKER,
    "support": common_pb2.ACTOR_ROLE_SUPPORT,
    "admin": common_pb2.ACTOR_ROLE_ADMIN,
}

ProxyOption = Annotated[
    str | None,
    typer.Option(
        help="The family proxy's own ID number (with --by family-proxy).", show_default=False
    ),
]


def acting(by: str, id_number: str, proxy_id: str | None, principal: str) -> common_pb2.Actor:
    """Who acts for the person (R3), by the --by word: the person themself (`id_number`), a
    family proxy (their own `proxy_id`), else staff in that role (`principal`)."""
    role = ROLE_OF[by]
    if role == common_pb2.ACTOR_ROLE_CITIZEN:
        return common_pb2.Actor(role=role, person=common_pb2.PersonRef(id_number=id_number))
    if role == common_pb2.ACTOR_ROLE_FAMILY_PROXY:
        if not proxy_id:
            raise typer.BadParameter(
                "a family proxy gives their own ID number", param_hint="--proxy-id"
            )
        return common_pb2.Actor(role=role, person=common_pb2.PersonRef(id_number=proxy_id))
    return staff(role, principal)


def staff(role: common_pb2.ActorRole.ValueType, principal: str) -> common_pb2.Actor:
    return common_pb2.Actor(role=role, principal=principal)


# --- what is shown ----------------------------------------------------------------------------

COLOUR_NAME = {
    common_pb2.COLOUR_GREEN: "green",
    common_pb2.COLOUR_YELLOW: "yellow",
    common_pb2.COLOUR_RED: "red",
    common_pb2.COLOUR_UNSPECIFIED: "unknown",
}
_COLOUR_STYLE = {
    "green": "bold white on green",
    "yellow": "bold black on yellow",
    "red": "bold white on red",
    "unknown": "bold white on grey37",
}


def colour_name(colour: int) -> str:
    return COLOUR_NAME.get(colour, "unknown")  # type: ignore[call-overload]


def colour_badge(colour: int) -> str:
    name = colour_name(colour)
    return f"[{_COLOUR_STYLE[name]}] {name.upper()} [/]"


CST = dt.timezone(dt.timedelta(hours=8), "CST")  # Asia/Shanghai: no daylight saving


def cst(ts: Any) -> str:
    """A protobuf Timestamp in Asia/Shanghai, to the minute."""
    return f"{ts.ToDatetime(dt.UTC).astimezone(CST):%Y-%m-%d %H:%M}"


ROLE_NAME = {
    common_pb2.ACTOR_ROLE_CITIZEN: "citizen",
    common_pb2.ACTOR_ROLE_FAMILY_PROXY: "family proxy",
    common_pb2.ACTOR_ROLE_GRID_WORKER: "grid worker",
    common_pb2.ACTOR_ROLE_ADMIN: "admin",
    common_pb2.ACTOR_ROLE_SERVICE: "service",
    common_pb2.ACTOR_ROLE_SUPPORT: "support desk",
}
# Where the person acts on their own card or consent, they are its holder.
HOLDER_ROLE_NAME = {**ROLE_NAME, common_pb2.ACTOR_ROLE_CITIZEN: "holder"}


def recorded(
    by: declaration_pb2.RecordedActor,
    names: Mapping[common_pb2.ActorRole.ValueType, str] = ROLE_NAME,
) -> str:
    """Who did something, as the service recorded it (masked)."""
    who = by.masked_id_number or by.principal
    return f"{names.get(by.role, '?')} {who}".strip()
