"""`healthcode cold-chain` (R14) and `healthcode province` (R6): the partner exchanges served by
the risk index process (services/risk_index/cold_chain.py, provinces.py).

Partner commands call with the partner's own certificate (clients/exams.partner_credentials):
the cold-chain tracing platform as spiffe://healthcode/partner/cold_chain/NAME, a province as
spiffe://healthcode/partner/other_province/CODE. `--operator` calls as an operator instead.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf import timestamp_pb2
from healthcode.v1 import (
    cold_chain_pb2,
    cold_chain_pb2_grpc,
    common_pb2,
    province_pb2,
    province_pb2_grpc,
)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.cli_support import colour_name, err, out, settings, staff, unary
from clients.credentials import ClientCredentials, for_target
from clients.exams import partner_credentials
from services._common.config import ConfigError

ENROL_CHUNK = 50_000
IMPORT_CHUNK = 50_000


def _credentials(target: str, kind: str, name: str, operator: bool) -> ClientCredentials | None:
    """The partner's certificate, or (operator) the CLI's own credentials."""
    try:
        if operator:
            return for_target(target)
        return partner_credentials(target, kind, name)
    except ConfigError as e:
        err.print(f"[bold red]cannot connect:[/] {e}", highlight=False)
        raise typer.Exit(2) from None


def _actor(operator: bool, name: str, principal: str) -> common_pb2.Actor:
    if operator:
        return staff(common_pb2.ACTOR_ROLE_ADMIN, principal)
    return staff(common_pb2.ACTOR_ROLE_PARTNER, name)


_OperatorOption = Annotated[
    bool,
    typer.Option(
        "--operator", help="Call as an operator (the CLI's own credentials), not as the partner."
    ),
]
_PrincipalOption = Annotated[str, typer.Option(help="The operator's account id (--operator).")]


# --- cold chain -----------------------------------------------------------------------------------

cold_chain_app = typer.Typer(
    name="cold-chain",
    help="Cold-chain tracing (冷链, R14): the food-safety tracing platform [bold]post[/]s "
    "exposure events (a product batch, the stage, the people who handled it: they turn yellow "
    "under the cold-chain rule until a negative test); [bold]list[/] shows the people linked to "
    "a batch, masked. Called as the cold_chain partner.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


class Stage(enum.StrEnum):
    production = "production"
    processing = "processing"
    packaging = "packaging"
    transport = "transport"
    sale = "sale"


_STAGE = {
    Stage.production: cold_chain_pb2.COLD_CHAIN_STAGE_PRODUCTION,
    Stage.processing: cold_chain_pb2.COLD_CHAIN_STAGE_PROCESSING,
    Stage.packaging: cold_chain_pb2.COLD_CHAIN_STAGE_PACKAGING,
    Stage.transport: cold_chain_pb2.COLD_CHAIN_STAGE_TRANSPORT,
    Stage.sale: cold_chain_pb2.COLD_CHAIN_STAGE_SALE,
}
_STAGE_NAME = {v: k.value for k, v in _STAGE.items()}


def _handled_at(text: str | None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if not text:
        ts.GetCurrentTime()
        return ts
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            "an ISO time, e.g. 2020-11-20T14:30+08:00", param_hint="--at"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))  # Asia/Shanghai
    ts.FromDatetime(when.astimezone(dt.UTC))
    return ts


@cold_chain_app.command("post")
def cold_chain_post(
    product_batch: Annotated[str, typer.Argument(help="The product batch (追溯码).")],
    stage: Annotated[Stage, typer.Option(help="Where in the chain they handled it.")],
    event_id: Annotated[
        str, typer.Option(help="The platform's id for the event (a replay is a no-op).")
    ],
    id_number: Annotated[
        list[str] | None, typer.Option("--id-number", help="A handler's ID number (repeat).")
    ] = None,
    phone: Annotated[
        list[str] | None,
        typer.Option("--phone", help="A handler's phone; counts for its holder (repeat)."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="When, ISO 8601 (default now; no zone: Asia/Shanghai).", show_default=False
        ),
    ] = None,
    partner: Annotated[str, typer.Option(help="The tracing platform's partner name.")] = "demo",
    operator: _OperatorOption = False,
    principal: _PrincipalOption = "operator",
) -> None:
    """Post one exposure event: its handlers get a cold-chain exposure row (yellow under the
    default rules until a negative test) and are linked to the batch."""
    handlers = [cold_chain_pb2.Handler(id_number=v) for v in id_number or []]
    handlers += [cold_chain_pb2.Handler(phone=v) for v in phone or []]
    if not handlers:
        raise typer.BadParameter("name at least one handler", param_hint="--id-number / --phone")
    request = cold_chain_pb2.PostExposureRequest(
        actor=_actor(operator, partner, principal),
        event_id=event_id,
        product_batch=product_batch,
        stage=_STAGE[stage],
        handlers=handlers,
        handled_at=_handled_at(at),
    )
    target = settings.peers.risk_index
    creds = _credentials(target, "cold_chain", partner, operator)
    done = unary(
        target,
        lambda ch: cold_chain_pb2_grpc.ColdChainServiceStub(ch).PostExposure(request),
        "posting the exposure event",
        creds,
    )
    what = "already posted" if done.replayed else "posted"
    out.print(
        f"event {done.event_id} {what}: {done.linked} people linked to {product_batch} "
        f"(index version {done.index_version})",
        highlight=False,
    )
    for u in done.unmatched:
        out.print(f"  handler {u.index} ({u.masked}): {u.reason}", highlight=False)


@cold_chain_app.command("list")
def cold_chain_list(
    product_batch: Annotated[str, typer.Argument(help="The product batch.")],
    partner: Annotated[str, typer.Option(help="The tracing platform's partner name.")] = "demo",
    operator: _OperatorOption = False,
    principal: _PrincipalOption = "operator",
) -> None:
    """The people linked to a batch: masked ID number (and phone, when named by one), stage,
    day and event."""
    request = cold_chain_pb2.ListBatchPeopleRequest(
        actor=_actor(operator, partner, principal), product_batch=product_batch
    )
    target = settings.peers.risk_index
    creds = _credentials(target, "cold_chain", partner, operator)
    done = unary(
        target,
        lambda ch: cold_chain_pb2_grpc.ColdChainServiceStub(ch).ListBatchPeople(request),
        "listing the batch",
        creds,
    )
    if not done.people:
        out.print(f"no one is linked to {product_batch}", highlight=False)
        return
    table = Table(title=f"people linked to {product_batch}", title_justify="left")
    for column in ("ID number", "phone", "stage", "day", "event"):
        table.add_column(column)
    for p in done.people:
        table.add_row(
            p.masked_id_number, p.masked_phone, _STAGE_NAME.get(p.stage, "?"), p.day, p.event_id
        )
    out.print(table)


# --- other provinces --------------------------------------------------------------------------------

province_app = typer.Typer(
    name="province",
    help="Cross-province recognition (互认, R6) with Beijing and Hebei: [bold]export[/] this "
    "city's shared-scope status keyed by the hash agreed with a province (never a raw number; "
    "local rules never reach it); [bold]import[/] a province's list as a source "
    "(their red -> province_red, yellow -> province_yellow); [bold]enrol[/] computes the agreed "
    "hashes from a people file; [bold]list[/] shows the province table.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_ProvinceOption = Annotated[str, typer.Option(help="The province's code (beijing, hebei).")]


@province_app.command("export")
def province_export(
    province: _ProvinceOption,
    out_file: Annotated[Path, typer.Option("--out", help="CSV: exchange_hash (hex), status.")],
    operator: _OperatorOption = False,
    principal: _PrincipalOption = "operator",
) -> None:
    """This city's status of every enrolled person under the shared rules only, keyed by the
    province's agreed hash."""
    request = province_pb2.ExportStatusRequest(
        actor=_actor(operator, province, principal), province=province
    )
    target = settings.peers.risk_index
    creds = _credentials(target, "other_province", province, operator)

    def export(channel: grpc.Channel) -> tuple[int, dict[str, int]]:
        stub = province_pb2_grpc.ProvinceExchangeServiceStub(channel)
        counts: dict[str, int] = {}
        n = 0
        tmp = out_file.with_name(out_file.name + ".part")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["exchange_hash", "status"])
            for chunk in stub.ExportStatus(request, timeout=600):
                for i, colour in enumerate(chunk.colours):
                    name = colour_name(colour)
                    writer.writerow([chunk.exchange_hashes[i * 16 : (i + 1) * 16].hex(), name])
                    counts[name] = counts.get(name, 0) + 1
                    n += 1
        tmp.replace(out_file)
        return n, counts

    n, counts = unary(target, export, "the export", creds)
    shown = ", ".join(f"{v:,} {k}" for k, v in sorted(counts.items())) or "nobody enrolled"
    out.print(f"{n:,} people exported for {province} ({shown}): {out_file}", highlight=False)


def _statuses(path: Path) -> Iterator[tuple[int, province_pb2.ProvinceStatus]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"exchange_hash", "state"} <= set(reader.fieldnames):
            raise typer.BadParameter("the header names exchange_hash and state", param_hint="FILE")
        for rec in reader:
            try:
                digest = bytes.fromhex(rec["exchange_hash"].strip())
            except ValueError:
                raise typer.BadParameter(
                    f"line {reader.line_num}: exchange_hash is not hexadecimal", param_hint="FILE"
                ) from None
            yield (
                reader.line_num,
                province_pb2.ProvinceStatus(exchange_hash=digest, state=rec["state"].strip()),
            )


def _import_status(
    request: province_pb2.ImportStatusRequest, channel: grpc.Channel
) -> province_pb2.ImportStatusResponse:
    return province_pb2_grpc.ProvinceExchangeServiceStub(channel).ImportStatus(request)


def _enrol(
    request: province_pb2.EnrolExchangeHashesRequest, channel: grpc.Channel
) -> province_pb2.EnrolExchangeHashesResponse:
    return province_pb2_grpc.ProvinceExchangeServiceStub(channel).EnrolExchangeHashes(request)


@province_app.command("import")
def province_import(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV: exchange_hash (hex), state.")
    ],
    province: _ProvinceOption,
    batch_id: Annotated[str, typer.Option(help="The list's id (a replay is a no-op).")],
    day: Annotated[
        str,
        typer.Option(
            help="The day the list is for, YYYY-MM-DD (default today).", show_default=False
        ),
    ] = "",
    operator: _OperatorOption = False,
    principal: _PrincipalOption = "operator",
) -> None:
    """Take a province's status list as a source: red and yellow per its table, unknown states
    per its default, people not enrolled here ignored."""
    entries = [s for _line, s in _statuses(file)]
    target = settings.peers.risk_index
    creds = _credentials(target, "other_province", province, operator)
    totals: dict[str, int] = {}
    matched = unmatched = unknown = 0
    version = 0
    chunks = max(1, -(-len(entries) // IMPORT_CHUNK))
    for n in range(chunks):
        part = entries[n * IMPORT_CHUNK : (n + 1) * IMPORT_CHUNK]
        request = province_pb2.ImportStatusRequest(
            actor=_actor(operator, province, principal),
            province=province,
            batch_id=batch_id if chunks == 1 else f"{batch_id}.{n}",
            day=day,
            statuses=part,
        )
        done = unary(
            target,
            functools.partial(_import_status, request),
            "the import",
            creds,
        )
        matched, unmatched, unknown = (
            matched + done.matched,
            unmatched + done.unmatched,
            unknown + done.unknown_states,
        )
        version = max(version, done.index_version)
        for source, count in done.ingested.items():
            totals[source] = totals.get(source, 0) + count
    shown = ", ".join(f"{v:,} {k}" for k, v in sorted(totals.items())) or "no rows"
    out.print(
        f"{len(entries):,} statuses from {province}: {matched:,} of our people ({shown}), "
        f"{unmatched:,} not ours, {unknown:,} unknown states (default applied); "
        f"index version {version}",
        highlight=False,
    )


@province_app.command("enrol")
def province_enrol(
    people: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="A people file (CSV with an id_number column), e.g. the one `healthcode import` read.",
        ),
    ],
    principal: _PrincipalOption = "operator",
) -> None:
    """Compute every configured province's agreed hash for the people in a file (the service
    keeps the hashes, never the numbers): needed once for people registered before a province
    was configured."""
    target = settings.peers.risk_index
    creds = _credentials(target, "", "", True)
    with people.open(encoding="utf-8-sig", newline="") as f:
        ids = [rec.get("id_number", "") for rec in csv.DictReader(f)]
    enrolled = 0
    problems: list[tuple[int, str]] = []
    provinces: list[str] = []
    progress = Progress(
        TextColumn("[bold]enrolling"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )
    with progress:
        task = progress.add_task("enrol", total=len(ids))
        for start in range(0, len(ids), ENROL_CHUNK):
            request = province_pb2.EnrolExchangeHashesRequest(
                actor=staff(common_pb2.ACTOR_ROLE_ADMIN, principal),
                id_numbers=ids[start : start + ENROL_CHUNK],
            )
            done = unary(
                target,
                functools.partial(_enrol, request),
                "enrolling",
                creds,
            )
            enrolled += done.enrolled
            provinces = list(done.provinces)
            # line = header (1) + position + 1
            problems += [(start + p.index + 2, p.description) for p in done.problems]
            progress.advance(task, len(request.id_numbers))
    out.print(
        f"{enrolled:,} people enrolled for {', '.join(provinces) or 'no province'}", highlight=False
    )
    for line, why in problems[:20]:
        out.print(f"  line {line}: {why}", highlight=False)


@province_app.command("list")
def province_list(principal: _PrincipalOption = "operator") -> None:
    """The configured provinces, how they are recognised, and their state mapping."""
    target = settings.peers.risk_index
    creds = _credentials(target, "", "", True)
    request = province_pb2.ListProvincesRequest(actor=staff(common_pb2.ACTOR_ROLE_ADMIN, principal))
    done = unary(
        target,
        lambda ch: province_pb2_grpc.ProvinceExchangeServiceStub(ch).ListProvinces(request),
        "listing provinces",
        creds,
    )
    table = Table(title="provinces", title_justify="left")
    for column in ("code", "name", "recognition", "states", "unknown state", "key"):
        table.add_column(column)
    for p in done.provinces:
        states = ", ".join(f"{k} -> {v or 'nothing'}" for k, v in sorted(p.states.items()))
        table.add_row(
            p.code,
            f"{p.name_zh} {p.name_en}",
            p.recognition,
            states,
            p.default_source or "nothing",
            "yes" if p.has_key else "missing",
        )
    out.print(table)
