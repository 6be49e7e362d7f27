"""`healthcode`: the command line for people and operators.

    healthcode register 张三 120101199001011234 --phone 13812345678
    healthcode declare 120101199001011234 --temperature 36.6
    healthcode show 120101199001011234
    healthcode scan 'HCN1:xxxx' --verifier gate-7
    healthcode ingest close_contacts.csv --source close_contact
    healthcode import people.csv
    healthcode seed --people 200000
    healthcode explain 120101199001011234
    healthcode override set 120101199001011234 --colour green --hours 24 --reason '...'
    healthcode what-if draft-rules.toml
    healthcode counters --follow
    healthcode status
    healthcode load --rate 200 --duration 30 --json load.json --plot load.png

Services are found through HEALTHCODE_<SERVICE>_ADDR (or the --declaration/--risk-index/
--colour/--display options). Everything printed is masked: the services never return a raw ID
or phone number, and this tool never echoes one back.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from healthcode.v1 import (
    account_pb2,
    account_pb2_grpc,
    colour_pb2,
    colour_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
    display_pb2_grpc,
    risk_index_pb2,
    risk_index_pb2_grpc,
)
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from clients import feedgen, load, load_report, population
from clients.channel import DEFAULT_TIMEOUT_S, Peers, describe_error
from clients.cli_cards import card_app
from clients.cli_consent import consent_app
from clients.cli_exams import exam_app
from clients.cli_exchange import cold_chain_app, province_app
from clients.cli_partners import partners_app
from clients.cli_support import (
    CST,
    ROLE_NAME,
    ProxyOption,
    acting,
    colour_badge,
    cst,
    err,
    fail,
    out,
    recorded,
    service_channel,
    settings,
    staff,
    unary,
)
from clients.credentials import ClientCredentials, for_target
from clients.feedgen import COUNTIES, TIANJIN_DISTRICTS
from services._common.auth import Security
from services._common.config import ConfigError
from services._common.days import hour_of_date, hour_start, now_shanghai

app = typer.Typer(
    name="healthcode",
    help="The health-code platform from the command line: register, declare, show and scan "
    "codes, ingest risk feeds, explain a colour, watch the counters.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
_ROW_FIELDS = {
    "source",
    "id_number",
    "phone",
    "day",
    "county",
    "person_key",
    "phone_key",
    "at",
    "hour",
}


@app.callback()
def _main(
    declaration: Annotated[
        str | None, typer.Option(help="Declaration service host:port.", show_default=False)
    ] = None,
    risk_index: Annotated[
        str | None, typer.Option(help="Risk index service host:port.", show_default=False)
    ] = None,
    colour: Annotated[
        str | None, typer.Option(help="Colour service host:port.", show_default=False)
    ] = None,
    display: Annotated[
        str | None, typer.Option(help="Display service host:port.", show_default=False)
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Deadline of each call, seconds.")
    ] = DEFAULT_TIMEOUT_S,
) -> None:
    """Addresses default to HEALTHCODE_<SERVICE>_ADDR, else 127.0.0.1 and the default ports
    (declaration 50051, risk index 50052, colour 50053, display 50054)."""
    base = Peers.from_env()
    settings.peers = Peers(
        declaration=declaration or base.declaration,
        risk_index=risk_index or base.risk_index,
        colour=colour or base.colour,
        display=display or base.display,
    )
    settings.timeout = timeout


# --- helpers ---------------------------------------------------------------------------------


def _load_auth(target: load.Target, where: str, people: list[str]) -> load.LoadAuth | None:
    """The load generator's certificate and tokens (minted before the run), unless the target
    speaks plain text (the echo server, an insecure development stack)."""
    # The echo server speaks plain text unless started with the platform's credentials
    # (HEALTHCODE_ECHO_CREDENTIALS, as bench/bench_throughput.py does).
    if target == load.Target.echo and not os.environ.get("HEALTHCODE_ECHO_CREDENTIALS"):
        return None
    try:
        creds = for_target(where)
    except ConfigError as e:
        raise load.LoadError(str(e)) from None
    if creds is None:
        return None
    directory = creds.security.directory
    if (directory / "load.pem").exists():  # the load generator's own edge certificate
        creds = ClientCredentials(
            Security.load(directory, "load"), creds.issuer, creds.secret, creds.token
        )
    return load.load_auth(creds, people, "load-gate")


class By(enum.StrEnum):
    """Who acts for the person (R3)."""

    citizen = "citizen"
    family_proxy = "family-proxy"
    grid_worker = "grid-worker"


_ByOption = Annotated[
    By,
    typer.Option(
        "--by",
        help="Who acts: the person themself (citizen), a family proxy (give --proxy-id) or a "
        "grid worker (give --principal).",
    ),
]
_PrincipalOption = Annotated[
    str, typer.Option(help="Staff or account id of the acting grid worker / verifier / operator.")
]


# The rule id of the reason a manual override adds (services/colour/explanation.py).
_MANUAL_OVERRIDE = "manual_override"


def _reasons_table(verdict: colour_pb2.Verdict) -> Table | None:
    if not verdict.reasons:
        return None
    table = Table(title="Why", show_lines=False, expand=False)
    table.add_column("rule", overflow="fold")
    table.add_column("reason", overflow="fold")
    table.add_column("source")
    table.add_column("day")
    table.add_column("via")
    table.add_column("state")
    for r in verdict.reasons:
        if r.rule_id == _MANUAL_OVERRIDE and verdict.HasField("manual_override"):
            # The support desk's override: it decides the colour; the rules below hold again
            # once it ends.
            until = cst(verdict.manual_override.valid_until)
            table.add_row(
                r.rule_id, f"{r.text_zh}\n{r.text_en}", "support desk", f"until {until}", "",
                "[bold]decides[/]",
            )  # fmt: skip
            continue
        via = r.masked_phone or (str(r.county) if r.county else "")
        state = f"cleared by {r.cleared_by}" if r.cleared else "[bold]counts[/]"
        table.add_row(
            r.rule_id, f"{r.text_zh}\n{r.text_en}", r.source, r.day or "on list", via, state
        )
    return table


def _print_verdict(verdict: colour_pb2.Verdict, *, remedies: bool = True) -> None:
    table = _reasons_table(verdict)
    if table is not None:
        out.print(table)
    if verdict.HasField("manual_override"):
        computed = verdict.manual_override.computed_colour
        out.print(
            f"  manual override until {cst(verdict.manual_override.valid_until)} CST; the rules "
            f"give {colour_badge(computed)} underneath"
        )
    if remedies:
        for m in verdict.remedies:
            how = m.text_en or "nothing clears it: it lapses when its window has passed"
            out.print(f"  to clear [bold]{m.rule_id}[/]: {m.text_zh} / {how}")
    out.print(
        f"[dim]rule set {verdict.rule_set_version} · index version {verdict.index_version} · "
        f"{_when(verdict)}[/]"
    )
    if verdict.stale:
        # Never silent: a verifier must know the colour may miss a stalled feed's rows.
        feeds = ", ".join(
            f"{f.source} ({_last_updated(f)})" for f in verdict.stale_feeds
        ) or ", ".join(verdict.stale_sources)
        out.print(f"[bold yellow]depends on stale feeds:[/] {feeds}")


def _when(verdict: colour_pb2.Verdict) -> str:
    """When a verdict was evaluated: its hour (hourly windows end with it), else its day."""
    return f"as of {verdict.hour} CST" if verdict.hour else f"day {verdict.day}"


def _last_updated(f: colour_pb2.SourceFreshness) -> str:
    if not f.HasField("last_updated"):
        return "never updated"
    when = f.last_updated.ToDatetime(dt.UTC).astimezone(CST)
    return f"last updated {when:%Y-%m-%d %H:%M} CST"


# --- register / declare ----------------------------------------------------------------------


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="The person's real name.")],
    id_number: Annotated[
        str, typer.Argument(help="The person's resident ID number (18 characters).")
    ],
    phone: Annotated[
        list[str] | None,
        typer.Option(
            "--phone",
            "-p",
            help="A mobile number in the person's name (repeatable).",
            show_default=False,
        ),
    ] = None,
    card: Annotated[
        str, typer.Option(help="A real-name transit card number (elderly, disabled).")
    ] = "",
    by: _ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: _PrincipalOption = "cli",
) -> None:
    """Register a person for a health code (申领), by themself or by a proxy (R3)."""
    request = declaration_pb2.RegisterRequest(
        actor=acting(by, id_number, proxy_id, principal),
        name=name,
        id_number=id_number,
        phones=phone or [],
        transit_card=card,
    )
    response = unary(
        settings.peers.declaration,
        lambda ch: declaration_pb2_grpc.DeclarationServiceStub(ch).Register(request),
        "register",
    )
    p = response.person
    verb = "registered" if response.created else "already registered"
    out.print(f"[bold]{p.masked_name}[/] ({p.masked_id_number}) {verb}")
    for ph in p.phones:
        out.print(f"  phone {ph.masked_phone}")
    if p.masked_transit_card:
        out.print(f"  transit card {p.masked_transit_card}")


class SymptomName(enum.StrEnum):
    fever = "fever"
    cough = "cough"
    fatigue = "fatigue"
    sore_throat = "sore-throat"
    shortness_of_breath = "shortness-of-breath"
    loss_of_smell_or_taste = "loss-of-smell-or-taste"
    diarrhoea = "diarrhoea"


def _symptom(s: SymptomName) -> int:
    return declaration_pb2.Symptom.Value("SYMPTOM_" + s.name.upper())


def _visit(text: str) -> declaration_pb2.Visit:
    county, _, day = text.partition("@")
    if not county.isdigit() or not day:
        raise typer.BadParameter(
            f"{text!r}: write COUNTY@YYYY-MM-DD, e.g. 110105@2020-12-10", param_hint="--visit"
        )
    return declaration_pb2.Visit(county=int(county), day=day)


@app.command()
def declare(
    id_number: Annotated[str, typer.Argument(help="The person's resident ID number.")],
    symptom: Annotated[
        list[SymptomName] | None,
        typer.Option("--symptom", "-s", help="A symptom today (repeatable).", show_default=False),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="Body temperature, °C (34.0-43.0).", show_default=False),
    ] = None,
    visit: Annotated[
        list[str] | None,
        typer.Option(help="A county visited: COUNTY@YYYY-MM-DD (repeatable).", show_default=False),
    ] = None,
    case_contact: Annotated[
        bool, typer.Option("--case-contact", help="Had contact with a confirmed or suspected case.")
    ] = False,
    contact_day: Annotated[
        str, typer.Option(help="Day of that contact, YYYY-MM-DD (default today).")
    ] = "",
    by: _ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: _PrincipalOption = "cli",
) -> None:
    """The daily declaration (填报): health, travel and contacts.

    One per calendar day (Asia/Shanghai); the next one opens at midnight."""
    request = declaration_pb2.DeclareRequest(
        actor=acting(by, id_number, proxy_id, principal),
        person=common_pb2.PersonRef(id_number=id_number),
        symptoms=[_symptom(s) for s in symptom or []],  # type: ignore[misc]
        visits=[_visit(v) for v in visit or []],
        case_contact=case_contact,
        case_contact_day=contact_day,
    )
    if temperature is not None:
        request.temperature_celsius = temperature
    response = unary(
        settings.peers.declaration,
        lambda ch: declaration_pb2_grpc.DeclarationServiceStub(ch).Declare(request),
        "declare",
    )
    d = response.declaration
    derived = ", ".join(d.derived_sources) or "no risk"
    nxt = response.next_opens_at.ToDatetime(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8)))
    out.print(
        f"declaration for {d.day} accepted ({derived}); the next opens {nxt:%Y-%m-%d %H:%M} CST"
    )


# --- show / scan -----------------------------------------------------------------------------


@app.command()
def show(
    id_number: Annotated[str, typer.Argument(help="The holder's resident ID number.")],
    device: Annotated[str, typer.Option(help="The showing device's id.")] = "cli",
    place: Annotated[str, typer.Option(help="Where the code is shown.")] = "",
    token_only: Annotated[
        bool, typer.Option("--token-only", help="Print only the token (for `healthcode scan`).")
    ] = False,
    by: _ByOption = By.citizen,
    proxy_id: ProxyOption = None,
    principal: _PrincipalOption = "cli",
) -> None:
    """Show a code (亮码): live colour, masked name and a signed token.

    The token is valid for up to a minute. Every display is logged."""
    request = display_pb2.ShowRequest(
        actor=acting(by, id_number, proxy_id, principal),
        person=common_pb2.PersonRef(id_number=id_number),
        device=display_pb2.Device(device_id=device, place=place),
    )
    response = unary(
        settings.peers.display,
        lambda ch: display_pb2_grpc.DisplayServiceStub(ch).Show(request),
        "show",
    )
    if token_only:
        print(response.token)
        return
    v = response.verdict
    expires = response.expires_at.ToDatetime(dt.UTC)
    left = max(0, int((expires - dt.datetime.now(dt.UTC)).total_seconds()))
    out.print(
        Panel.fit(
            f"{colour_badge(v.colour)}  [bold]{response.masked_name}[/]  "
            f"{response.masked_id_number}\n\ntoken (valid {left} s):\n{response.token}",
            title="health code",
        )
    )
    _print_verdict(v, remedies=False)


@app.command()
def scan(
    token: Annotated[
        str | None,
        typer.Argument(
            help="The scanned code token (HCN1:..., quoted: it may hold spaces).",
            show_default=False,
        ),
    ] = None,
    id_number: Annotated[
        str | None,
        typer.Option(
            help="Look a person up by ID card instead (代查, verifiers only).", show_default=False
        ),
    ] = None,
    verifier: Annotated[str, typer.Option(help="The verifier's staff id.")] = "cli-verifier",
    partner: Annotated[
        bool, typer.Option("--partner", help="Scan as a partner service (hospital, bus).")
    ] = False,
    device: Annotated[str, typer.Option(help="The scanner's id.")] = "cli-scanner",
    place: Annotated[str, typer.Option(help="Where the scan happens.")] = "",
    temperature: Annotated[
        float | None,
        typer.Option(help="Temperature measured with the scan, °C.", show_default=False),
    ] = None,
) -> None:
    """Scan a code (扫码) and get the LIVE colour.

    An expired, forged or already-scanned token is refused, and the error says why. With
    --id-number a verifier looks a person up from their ID card (代查) instead."""
    if (token is None) == (id_number is None):
        raise typer.BadParameter("give a TOKEN or --id-number (not both)")
    role = common_pb2.ACTOR_ROLE_PARTNER if partner else common_pb2.ACTOR_ROLE_VERIFIER
    request = display_pb2.ScanRequest(
        actor=staff(role, verifier), device=display_pb2.Device(device_id=device, place=place)
    )
    if token is not None:
        request.token = token
    else:
        request.person.id_number = id_number or ""
    if temperature is not None:
        request.temperature_celsius = temperature
    response = unary(
        settings.peers.display,
        lambda ch: display_pb2_grpc.DisplayServiceStub(ch).Scan(request),
        "scan",
    )
    v = response.verdict
    alert = "  [bold red]TEMPERATURE ALERT[/]" if response.temperature_alert else ""
    out.print(
        f"{colour_badge(v.colour)}  [bold]{response.masked_name}[/]  "
        f"{response.masked_id_number}{alert}"
    )
    if response.decision != display_pb2.SCAN_DECISION_UNSPECIFIED:
        # What this verifier's context does with the person (services/display/contexts.py).
        decision = display_pb2.ScanDecision.Name(response.decision).removeprefix("SCAN_DECISION_")
        where = f" at a {response.context}" if response.context else ""
        out.print(f"[bold]{decision}[/]{where}  {response.instruction}".rstrip(), highlight=False)
    _print_verdict(v, remedies=False)


# --- ingest ----------------------------------------------------------------------------------


class FileFormat(enum.StrEnum):
    auto = "auto"
    csv = "csv"
    jsonl = "jsonl"


def read_rows(
    path: Path, fmt: FileFormat, text: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) from a CSV (with a header) or JSONL file, streamed (or from `text`,
    stdin read once). A CSV row's line is the line it ends on."""
    kind = fmt
    if kind == FileFormat.auto:
        kind = FileFormat.csv if path.suffix.lower() == ".csv" else FileFormat.jsonl
    with (
        io.StringIO(text) if text is not None else path.open(encoding="utf-8-sig", newline="")
    ) as f:
        if kind == FileFormat.csv:
            reader = csv.DictReader(f)
            for rec in reader:
                yield reader.line_num, {k.strip(): (v or "").strip() for k, v in rec.items() if k}
            return
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise typer.BadParameter(
                    f"line {n}: not JSON ({e.msg})", param_hint="FILE"
                ) from None
            if not isinstance(rec, dict):
                raise typer.BadParameter(f"line {n}: not a JSON object", param_hint="FILE")
            yield n, rec


class RowError(ValueError):
    """A file row that cannot become a FeedRow (the message names the column)."""


def event_time(rec: dict[str, Any]) -> dt.datetime | None:
    """The time of a row of an hourly source: `at` (ISO 8601 with its offset, e.g.
    2026-11-28T14:37:00+08:00) or `hour` (hours since 1970-01-01 00:00 Asia/Shanghai, as
    `clients.feedgen` writes it); None when the row has neither."""
    at, hour = rec.get("at"), rec.get("hour")
    if at not in (None, ""):
        try:
            when = dt.datetime.fromisoformat(str(at).strip())
        except ValueError:
            raise RowError(f"at: {at!r} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise RowError(f"at: {at!r} needs its offset (+08:00 or Z)")
        return when
    if hour not in (None, ""):
        try:
            return hour_start(int(str(hour).strip()))
        except (TypeError, ValueError, OverflowError):
            raise RowError(f"hour: {hour!r} is not an hour number") from None
    return None


def feed_row(rec: dict[str, Any]) -> risk_index_pb2.FeedRow:
    """A file row -> FeedRow. Unknown columns become attributes (test result, lab, flight).
    Raises RowError for an `at` or `hour` it cannot read."""
    row = risk_index_pb2.FeedRow()
    if rec.get("id_number"):
        row.id_number = str(rec["id_number"])
    elif rec.get("phone"):
        row.phone = str(rec["phone"])
    if rec.get("day"):
        row.day = str(rec["day"])
    when = event_time(rec)
    if when is not None:
        row.at.FromDatetime(when.astimezone(dt.UTC))
    if rec.get("county") not in (None, ""):
        try:
            row.county = int(rec["county"])
        except (TypeError, ValueError):
            row.county = 0  # the service names the row and says what a county is
    for k, v in rec.items():
        if k not in _ROW_FIELDS and v not in (None, ""):
            row.attributes[str(k)] = str(v)
    return row


_ROW_FIELD = re.compile(r"^rows\[(\d+)\]")


def _print_row_lines(error: grpc.RpcError, line_of: Callable[[int], int | None]) -> None:
    """Point each refused row (`rows[17].id_number`) at its line in the file."""
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    for packed in status.details if status is not None else []:
        if not packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            continue
        bad = error_details_pb2.BadRequest()
        packed.Unpack(bad)
        for v in bad.field_violations:
            m = _ROW_FIELD.match(v.field)
            line = line_of(int(m.group(1))) if m else None
            if line is not None:
                err.print(f"  line {line}: {v.field}: {v.description}", markup=False)


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="CSV (with header) or JSONL rows; '-' for stdin.")],
    source: Annotated[
        str | None,
        typer.Option(
            help="The source of every row (else each row's `source` field).", show_default=False
        ),
    ] = None,
    fmt: Annotated[FileFormat, typer.Option("--format", help="File format.")] = FileFormat.auto,
    batch_size: Annotated[
        int, typer.Option(min=1, max=50_000, help="Rows per IngestBatch call.")
    ] = 5000,
    batch_prefix: Annotated[
        str | None,
        typer.Option(
            help="Batch id prefix (default: derived from the file's content, so ingesting the "
            "same file again is a no-op).",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="The file is each source's complete current list "
            "(undated control lists): earlier rows are dropped.",
        ),
    ] = False,
    feed: Annotated[str, typer.Option(help="The feed's account name (recorded).")] = "cli-feed",
) -> None:
    """Ingest risk feed rows (R4) from a CSV or JSONL file, with a progress bar.

    Columns: source, id_number or phone, day (YYYY-MM-DD, for dated sources), county (for
    county sources); for hourly sources (nat_negative) the time of the event: at (ISO 8601
    with its offset, 2026-11-28T14:37:00+08:00) or hour (an hour number, as feedgen writes
    it), else the day counts from 00:00. Other columns are kept as attributes (lab, result,
    tracer). The file is checked whole first, then streamed in batches of one source each; a
    bad row refuses its batch and the error names its line in the file. Ingesting the same
    file again changes nothing (batch ids come from the content)."""
    if str(file) != "-" and not file.is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="FILE")
    accepted, replayed, version = ingest_file(
        file,
        source=source,
        fmt=fmt,
        batch_size=batch_size,
        batch_prefix=batch_prefix,
        replace=replace,
        feed=feed,
    )
    if accepted + replayed == 0:
        out.print("no rows")
        return
    out.print(
        f"{accepted} rows accepted, {replayed} already ingested (replayed batches); "
        f"index version {version}"
    )


def ingest_file(
    file: Path,
    *,
    source: str | None = None,
    fmt: FileFormat = FileFormat.auto,
    batch_size: int = 5000,
    batch_prefix: str | None = None,
    replace: bool = False,
    feed: str = "cli-feed",
    description: str = "ingesting",
) -> tuple[int, int, int]:
    """Check every row (a bad one stops before anything is sent), then stream the rows in
    batches of one source each; memory holds one batch per source. Returns (rows accepted,
    rows of replayed batches, the last index version)."""
    text = sys.stdin.read() if str(file) == "-" else None
    digest = hashlib.sha256()
    total = 0
    for line, rec in read_rows(file, fmt, text):
        name = _row_source(rec, source, line)
        try:
            digest.update(name.encode() + feed_row(rec).SerializeToString(deterministic=True))
        except RowError as e:
            raise typer.BadParameter(f"line {line}: {e}", param_hint="FILE") from None
        total += 1
    if total == 0:
        return 0, 0, 0
    prefix = batch_prefix or f"{file.name}:{digest.hexdigest()[:16]}"
    actor = staff(common_pb2.ACTOR_ROLE_FEED, feed)
    accepted = replayed = last_version = 0
    # Per source: the rows waiting, their lines, and the number of batches sent.
    waiting: dict[str, tuple[list[risk_index_pb2.FeedRow], list[int]]] = {}
    sent: dict[str, int] = {}
    with (
        service_channel(settings.peers.risk_index) as channel,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        ) as progress,
    ):
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        task = progress.add_task(description, total=total)

        def flush(name: str) -> None:
            nonlocal accepted, replayed, last_version
            batch, lines = waiting.pop(name)
            number = sent.get(name, 0)
            sent[name] = number + 1
            request = risk_index_pb2.IngestBatchRequest(
                actor=actor,
                source=name,
                batch_id=f"{prefix}:{name}:{number}",
                rows=batch,
                # Only the source's first batch replaces; the rest add to it.
                replace=replace and number == 0,
            )
            try:
                response = stub.IngestBatch(request)
            except grpc.RpcError as e:
                progress.stop()
                _print_row_lines(e, lambda i: lines[i] if 0 <= i < len(lines) else None)
                fail(e, f"ingest of batch {number} of {name}")
            if response.replayed:
                replayed += len(batch)
            else:
                accepted += response.row_count
            last_version = max(last_version, response.index_version)
            progress.advance(task, len(batch))

        for line, rec in read_rows(file, fmt, text):
            name = _row_source(rec, source, line)
            batch, lines = waiting.setdefault(name, ([], []))
            batch.append(feed_row(rec))
            lines.append(line)
            if len(batch) >= batch_size:
                flush(name)
        for name in list(waiting):
            flush(name)
    return accepted, replayed, last_version


def _row_source(rec: dict[str, Any], source: str | None, line: int) -> str:
    name = source or str(rec.get("source") or "").strip()
    if not name:
        raise typer.BadParameter(f"line {line}: no source (add a column or --source)")
    return name


# --- bulk import and the synthetic city -----------------------------------------------------


class _RowsColumn(ProgressColumn):
    """Rows sent and rows a second (the bar itself moves by bytes, so its ETA is honest)."""

    def render(self, task: Task) -> Text:
        rows = int(task.fields.get("rows", 0))
        elapsed = task.elapsed or 0.0
        rate = rows / elapsed if elapsed > 0 else 0.0
        return Text(f"{rows:,} rows · {rate:,.0f} rows/s", style="progress.data.speed")


def _import_progress(*, disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        _RowsColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=disable,
    )


def _run_import(
    file: Path,
    *,
    fmt: population.FileFormat,
    checkpoint: Path | None,
    report: Path | None,
    batch: int,
    per_call: int,
    restart: bool,
    principal: str,
    description: str = "importing",
) -> population.ImportResult:
    actor = staff(common_pb2.ACTOR_ROLE_ADMIN, principal)
    checkpoint_path = checkpoint or population.default_checkpoint(file)
    # A finished import needs neither the service nor a progress bar.
    quiet = not restart and population.is_complete(file, checkpoint_path)
    with (
        service_channel(settings.peers.declaration) as channel,
        _import_progress(disable=quiet) as progress,
    ):
        task = progress.add_task(description, total=file.stat().st_size or None, rows=0)

        def on_progress(read: int, rows: int) -> None:
            progress.update(task, completed=read, rows=rows)

        try:
            return population.import_file(
                declaration_pb2_grpc.DeclarationServiceStub(channel),
                file,
                actor=actor,
                fmt=fmt,
                batch=batch,
                per_call=per_call,
                checkpoint_path=checkpoint_path,
                report_path=report,
                restart=restart,
                timeout_s=settings.timeout,
                on_progress=on_progress,
            )
        except population.PeopleFileError as e:
            progress.stop()
            err.print(f"[bold red]import failed[/]: {e}", highlight=False)
            raise typer.Exit(2) from None
        except grpc.RpcError as e:
            progress.stop()
            saved = population.Checkpoint.load(checkpoint_path)
            line = saved.last_line if saved is not None else 0
            err.print(
                f"every line up to {line:,} is acknowledged ({checkpoint_path}); run the same "
                "command again to resume after it",
                highlight=False,
            )
            fail(e, "import")


def _print_import(file: Path, result: population.ImportResult) -> None:
    c = result.checkpoint
    if result.checkpoint_was_stale:
        out.print(
            "the checkpoint was for a service that does not hold these people (a new data "
            "directory?): imported from the first line"
        )
    if result.already_complete:
        out.print(
            f"{file.name} was imported already (checkpoint {result.checkpoint_path}); "
            "--restart sends it again, which changes nothing the service has"
        )
    elif result.resumed_after:
        out.print(f"resumed after line {result.resumed_after:,} (the checkpoint)")
    out.print(
        f"[bold]{c.imported:,}[/] imported, {c.already_present:,} already present "
        f"({c.updated:,} updated), [bold]{c.rejected:,}[/] rejected — {file.name} through "
        f"line {c.last_line:,}"
    )
    if not c.rejected:
        return
    rejections = population.read_report(result.report)
    by_field: dict[str, int] = {}
    for _, f, _ in rejections:
        by_field[f or "(more)"] = by_field.get(f or "(more)", 0) + 1
    table = Table(title="Rejected rows by field", expand=False)
    table.add_column("field")
    table.add_column("reasons", justify="right")
    for f, n in sorted(by_field.items(), key=lambda kv: -kv[1])[:10]:
        table.add_row(f, f"{n:,}")
    out.print(table)
    for line, f, why in rejections[:5]:
        out.print(f"  line {line}: {f}: {why}", markup=False, highlight=False)
    out.print(f"every rejected row, with line, field and why: {result.report}")


@app.command("import")
def import_people(
    file: Annotated[
        Path,
        typer.Argument(
            help="People file: CSV with a header, or JSONL.", exists=True, dir_okay=False
        ),
    ],
    fmt: Annotated[
        population.FileFormat,
        typer.Option("--format", help="File format; auto: .csv is CSV, anything else JSONL."),
    ] = population.FileFormat.auto,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint file (default: FILE.checkpoint.json beside the file).",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Rejected-rows report, CSV of line,field,reason (default: FILE.rejected.csv).",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            min=1,
            max=50_000,
            help="Rows per message: one transaction and one risk-index change each (the most "
            "is the fastest: a person's rows share pages with more of their neighbours).",
        ),
    ] = 50_000,
    per_call: Annotated[
        int,
        typer.Option(min=1, help="Rows per call; the checkpoint moves after each call."),
    ] = 100_000,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Ignore the checkpoint and send from the first line (the service skips the "
            "people it has).",
        ),
    ] = False,
    principal: Annotated[
        str, typer.Option(help="The operator's account id (role ADMIN), recorded per person.")
    ] = "cli-import",
) -> None:
    """Import people in bulk (R1, R3) from a CSV or JSONL file, with a progress bar.

    Columns: id_number, name, phones (separated by ;), transit_card, district (6-digit code
    or a Tianjin district name), registered_by (self, family_proxy or grid_worker) and
    registrar (the family member's ID number, or the grid worker's account id):

        id_number,name,phones,transit_card,district,registered_by,registrar
        120101199001011234,张三,13812345678;13987654321,,120101,self,

    Every row is checked; a bad one is reported (line, field, why) in FILE.rejected.csv and
    the import goes on. A checkpoint beside the file records the last line the service has
    acknowledged (stored durably): after a crash or Ctrl-C, run the same command again and
    it resumes there. Importing a file again changes nothing: people already registered
    count as "already present". Only masked data is printed."""
    result = _run_import(
        file,
        fmt=fmt,
        checkpoint=checkpoint,
        report=report,
        batch=batch,
        per_call=per_call,
        restart=restart,
        principal=principal,
    )
    _print_import(file, result)


def _advance_rows(progress: Progress, task: TaskID, n: int) -> None:
    progress.advance(task, n)
    progress.update(task, rows=int(progress.tasks[task].completed))


@app.command("seed")
def seed_city(
    people: Annotated[int, typer.Option("--people", min=1, help="How many people.")],
    seed: Annotated[int, typer.Option(help="Same --people and --seed, same city.")] = 1,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where the people and feed files are written.")
    ] = Path("healthcode-seed"),
    rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of people listed per source, scaled by how common each source is "
            "(cases rare, tests common).",
        ),
    ] = 0.01,
    batch: Annotated[
        int, typer.Option(min=1, max=50_000, help="People per import message.")
    ] = 50_000,
    feeds: Annotated[
        bool, typer.Option("--feeds/--no-feeds", help="Also grade counties and ingest feeds.")
    ] = True,
    principal: Annotated[str, typer.Option(help="The operator's account id.")] = "cli-seed",
) -> None:
    """Write a reproducible synthetic city and load it through the import and ingest paths.

    People: valid ID numbers (GB 11643, distinct), about 1.4 phones a person (fewer for the
    elderly), real-name transit cards for many of the elderly, a home district in Tianjin,
    registered by themself, a family proxy or a grid worker. They go into
    OUT/people-N-sS.csv and through `healthcode import` (resumable: run it again after a
    crash). Then the counties are graded and rows for every source of the default rule set
    are written to OUT/feeds-N-sS-DAY.jsonl and go through `healthcode ingest`. Everything
    is generated in blocks, so memory stays bounded at any size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    city = population.SyntheticCity(people, seed)
    people_file = out_dir / f"people-{people}-s{seed}.csv"
    if people_file.exists():
        out.print(f"{people_file} exists (same size and seed, same people): reusing it")
    else:
        with _import_progress() as progress:
            task = progress.add_task("writing people", total=people, rows=0)

            population.write_people(
                people_file, city, on_block=lambda n: _advance_rows(progress, task, n)
            )
    result = _run_import(
        people_file,
        fmt=population.FileFormat.csv,
        checkpoint=None,
        report=None,
        batch=batch,
        per_call=max(batch, 100_000),
        restart=False,
        principal=principal,
    )
    _print_import(people_file, result)
    if not feeds:
        return
    now = now_shanghai()
    today = now.date()
    with service_channel(settings.peers.risk_index) as channel:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        graded = 0
        for county, level in feedgen.COUNTY_LEVELS.items():
            if level:
                request = risk_index_pb2.SetCountyLevelRequest(
                    actor=staff(common_pb2.ACTOR_ROLE_ADMIN, principal), county=county
                )
                request.level = common_pb2.CountyRiskLevel.ValueType(level)
                try:
                    stub.SetCountyLevel(request)
                except grpc.RpcError as e:
                    fail(e, "grading counties")
                graded += 1
    out.print(f"graded {graded} counties")
    feed_file = out_dir / f"feeds-{people}-s{seed}-{today}.jsonl"
    if feed_file.exists():
        out.print(f"{feed_file} exists: reusing it (its rows are timed earlier today)")
    else:
        with _import_progress() as progress:
            task = progress.add_task("writing feeds", total=people, rows=0)
            population.write_feeds(
                feed_file,
                city,
                today,
                hour_of_date(today, now.hour),
                rate=rate,
                on_block=lambda n: _advance_rows(progress, task, n),
            )
    accepted, replayed, version = ingest_file(
        feed_file, batch_size=10_000, feed=principal, description="ingesting feeds"
    )
    out.print(
        f"feeds: {accepted:,} rows accepted, {replayed:,} already ingested; index version {version}"
    )


# --- explain / counters / status -------------------------------------------------------------


@app.command()
def explain(
    id_number: Annotated[str, typer.Argument(help="The person's resident ID number.")],
    shared_only: Annotated[
        bool,
        typer.Option("--shared-only", help="Only the rules other provinces see (R6)."),
    ] = False,
    principal: Annotated[str, typer.Option(help="The support agent's id.")] = "support-desk",
    all_sources: Annotated[
        bool,
        typer.Option("--all-sources", help="List the freshness of every source, not only stale."),
    ] = False,
) -> None:
    """Explain a person's colour for the support desk (R16).

    Every rule that fired or was cleared, with the rows behind it (source, day, the masked
    phone it came through, the county and its grading), what cleared it or would clear it,
    and how fresh each source is. Names and numbers are masked."""
    request = colour_pb2.ExplainRequest(
        actor=staff(common_pb2.ACTOR_ROLE_SUPPORT, principal),
        person=common_pb2.PersonRef(id_number=id_number),
        shared_only=shared_only,
    )
    x = unary(
        settings.peers.colour,
        lambda ch: colour_pb2_grpc.ColourServiceStub(ch).Explain(request),
        "explain",
    )
    v = x.verdict
    if not v.registered:
        out.print("this person is not in the index: no data, so no colour (register first)")
        raise typer.Exit(1)
    scope = " (shared rules only: what other provinces see)" if shared_only else ""
    who = " ".join(p for p in (x.masked_name, x.masked_id_number) if p)
    out.print(f"{colour_badge(v.colour)}  [bold]{who}[/]{scope}")
    if x.masked_phones:
        out.print(f"  phones in the name: {', '.join(x.masked_phones)}")
    if v.HasField("manual_override"):
        m = v.manual_override
        out.print(
            Panel(
                f"{colour_badge(m.colour)} by {m.actor} until {cst(m.valid_until)} CST "
                f"(set {cst(m.set_at)} CST, override log #{m.seq})\n"
                f"reason: {m.reason}\n"
                f"the rules compute {colour_badge(m.computed_colour)} underneath (below); it "
                "shows again when the override ends",
                title="manual override",
                title_align="left",
                expand=False,
            )
        )
    if not x.rules:
        out.print("no rule fired")
    for rule in x.rules:
        out.print(_rule_panel(rule))
    out.print(_freshness_table(x.sources, only_stale=not all_sources))
    out.print(
        f"[dim]rule set {v.rule_set_version} · index version {v.index_version} · {_when(v)}[/]"
    )
    if v.stale:
        out.print(
            f"[bold yellow]this colour depends on stale feeds:[/] {', '.join(v.stale_sources)}"
        )


_LEVEL = {1: "low", 2: "medium", 3: "high"}


def _evidence_line(e: colour_pb2.Evidence) -> str:
    # An hourly row (a negative test) shows its hour: "within 48 hours" counts hours.
    when = f"{e.hour} CST" if e.hour else e.day or "on the list"
    parts = [f"{e.source} ({e.source_title_en} / {e.source_title_zh})", when]
    if e.masked_phone:
        parts.append(f"via phone {e.masked_phone}")
    if e.county:
        level = _LEVEL.get(e.county_level, "not graded")
        parts.append(f"county {e.county} ({level} risk)")
    if e.phone_cleared_by:
        parts.append(f"[green]this phone cleared by {e.phone_cleared_by}[/]")
    return " · ".join(parts)


def _rule_panel(rule: colour_pb2.RuleExplanation) -> Panel:
    counts = rule.outcome == colour_pb2.RULE_OUTCOME_FIRED
    state = "[bold]counts[/]" if counts else "[green]cleared[/]"
    window = f", window {rule.window}" if rule.window else ""
    lines = [
        f"{colour_badge(rule.colour)} {state} · scope {rule.scope}{window}",
        f"{rule.text_zh}",
        f"{rule.text_en}",
        "",
        "rows:",
        *[f"  - {_evidence_line(e)}" for e in rule.evidence],
    ]
    if rule.cleared_by:
        lines.append("cleared by:")
        lines += [f"  - {_evidence_line(e)}" for e in rule.cleared_by]
    clears = ", ".join(rule.clearing_sources) or "nothing: it lapses when its window has passed"
    lines += [
        "",
        f"what clears it ({clears}):",
        f"  {rule.what_clears_zh}",
        f"  {rule.what_clears_en}",
    ]
    return Panel("\n".join(lines), title=rule.rule_id, title_align="left", expand=False)


def _freshness_table(sources: Sequence[colour_pb2.SourceFreshness], *, only_stale: bool) -> Table:
    shown = [f for f in sources if f.stale or not only_stale]
    title = "stale feeds" if only_stale else "feed freshness"
    table = Table(title=f"{title} ({len(shown)} of {len(sources)} sources)")
    table.add_column("source")
    table.add_column("last updated (CST)")
    table.add_column("max staleness", justify="right")
    table.add_column("state")
    for f in shown:
        last = _last_updated(f).removeprefix("last updated ").removesuffix(" CST")
        state = "[bold yellow]STALE[/]" if f.stale else "fresh"
        table.add_row(f.source, last, f"{f.max_staleness_hours} h", state)
    return table


# --- what-if ---------------------------------------------------------------------------------


_SHORT = {
    common_pb2.COLOUR_GREEN: "green",
    common_pb2.COLOUR_YELLOW: "yellow",
    common_pb2.COLOUR_RED: "red",
}


def _district_name(county: int) -> str:
    # Names for the synthetic data's districts; other codes are shown as they are.
    if county in TIANJIN_DISTRICTS:
        return f"{county} {TIANJIN_DISTRICTS[county][0]}"
    if county in COUNTIES:
        return f"{county} {COUNTIES[county][0]}"
    return str(county)


@app.command("what-if")
def what_if(
    file: Annotated[Path, typer.Argument(help="The draft rule set (TOML).")],
    shared_only: Annotated[
        bool,
        typer.Option(
            "--shared-only", help="Compare what other provinces see (shared rules only, R6)."
        ),
    ] = False,
    district_source: Annotated[
        str, typer.Option(help="The attribute source that places people in districts.")
    ] = "residence",
    top: Annotated[int, typer.Option(min=1, help="Districts to list, most changed first.")] = 16,
    principal: Annotated[str, typer.Option(help="The operator's id.")] = "cli-admin",
) -> None:
    """Try a draft rule set over the whole population, beside the active one (admin).

    Counts who would change colour (per colour pair, per rule, per district) and activates
    nothing. Use `healthcode set-rules` to activate it afterwards."""
    if not file.is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="FILE")
    request = colour_pb2.WhatIfRequest(
        actor=staff(common_pb2.ACTOR_ROLE_ADMIN, principal),
        text=file.read_text(encoding="utf-8"),
        filename=file.name,
        shared_only=shared_only,
        district_source=district_source,
    )
    with service_channel(settings.peers.colour) as channel:
        try:
            # The draft is evaluated over everyone: give it longer than a display.
            w = colour_pb2_grpc.ColourServiceStub(channel).WhatIf(
                request, timeout=max(settings.timeout, 120.0)
            )
        except grpc.RpcError as e:
            fail(e, "what-if")
    scope = " (shared rules: what other provinces see)" if shared_only else ""
    out.print(
        f"what-if [bold]{w.active_version}[/] -> [bold]{w.draft_version}[/]{scope}: "
        f"{w.person_count:,} persons, index version {w.index_version}, day {w.day}, "
        f"{w.draft_check_count} checks; evaluated in {w.seconds:.2f} s. Nothing was activated."
    )
    matrix = Table(title=f"colour transitions ({w.changed:,} persons change)")
    matrix.add_column("active \\ draft")
    for name in ("green", "yellow", "red"):
        matrix.add_column(name, justify="right")
    matrix.add_column("total now", justify="right")
    cells = {(t.from_colour, t.to_colour): t.persons for t in w.transitions}
    for a in (common_pb2.COLOUR_GREEN, common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_RED):
        row = [cells.get((a, b), 0) for b in _SHORT]
        matrix.add_row(_SHORT[a], *(f"{n:,}" for n in row), f"{sum(row):,}")
    d = w.draft_counts
    matrix.add_row("total draft", f"{d.green:,}", f"{d.yellow:,}", f"{d.red:,}", "")
    out.print(matrix)
    moved = [r for r in w.rules if r.starts or r.stops or r.differences]
    if moved:
        rules = Table(title="rules the draft changes (firing counted among persons who change)")
        rules.add_column("rule")
        rules.add_column("change", overflow="fold")
        rules.add_column("starts firing", justify="right")
        rules.add_column("stops firing", justify="right")
        for r in moved:
            rules.add_row(r.rule_id, "; ".join(r.differences), f"{r.starts:,}", f"{r.stops:,}")
        out.print(rules)
    if not w.district_source:
        out.print(
            f"[yellow]no districts: the index has no {district_source!r} rows "
            "(ingest the public-security residence feed)[/]"
        )
        return
    districts = Table(title=f"districts by {w.district_source} (most changed first)")
    districts.add_column("district")
    districts.add_column("changed", justify="right")
    districts.add_column("transitions")
    for dist in w.districts[:top]:
        moves = ", ".join(
            f"{_SHORT[t.from_colour]}->{_SHORT[t.to_colour]} {t.persons:,}"
            for t in dist.transitions
        )
        districts.add_row(_district_name(dist.county), f"{dist.changed:,}", moves)
    if w.changed_without_district:
        districts.add_row("(no residence row)", f"{w.changed_without_district:,}", "")
    out.print(districts)
    f = w.district_freshness
    if f.stale:
        out.print(f"[yellow]the district source is stale ({_last_updated(f)})[/]")


def _counters_table(c: display_pb2.WatchCountersResponse) -> Table:
    table = Table(title=f"counters for {c.day}", show_header=True)
    table.add_column("")
    table.add_column("day", justify="right")
    table.add_column("green", justify="right")
    table.add_column("yellow", justify="right")
    table.add_column("red", justify="right")
    table.add_column("all days", justify="right")
    d, s = c.displays_by_colour, c.scans_by_colour
    table.add_row(
        "displays", str(c.displays), str(d.green), str(d.yellow), str(d.red), str(c.total_displays)
    )
    table.add_row(
        "scans", str(c.scans), str(s.green), str(s.yellow), str(s.red), str(c.total_scans)
    )
    table.add_row("refused scans", str(c.refused_scans), "", "", "", "")
    table.add_row("applicants", str(c.applicants), "", "", "", str(c.total_applicants))
    return table


@app.command()
def counters(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep watching.")] = False,
    day: Annotated[str, typer.Option(help="The day, YYYY-MM-DD (default today).")] = "",
) -> None:
    """Live counters of displays, scans and applicants (R9): per colour, per day."""
    request = display_pb2.WatchCountersRequest(day=day, min_interval_ms=500)
    with service_channel(settings.peers.display) as channel:
        stub = display_pb2_grpc.DisplayServiceStub(channel)
        stream = stub.WatchCounters(request)
        try:
            if not follow:
                out.print(_counters_table(next(stream)))
                stream.cancel()
                return
            with Live(console=out, auto_refresh=False) as live:
                for c in stream:
                    live.update(_counters_table(c), refresh=True)
        except grpc.RpcError as e:
            fail(e, "counters")
        except KeyboardInterrupt:
            stream.cancel()


@app.command("sign-in")
def sign_in(
    id_number: Annotated[str, typer.Argument(help="Your 18-digit resident ID number.")],
    phone: Annotated[str, typer.Option(help="A mobile number registered to you.")],
    code: Annotated[
        str | None,
        typer.Option(help="The six digits from the SMS (asked for when not given)."),
    ] = None,
    token_only: Annotated[
        bool, typer.Option("--token-only", help="Print only the token (for HEALTHCODE_TOKEN).")
    ] = False,
) -> None:
    """Sign in as a person: a one-time code goes by SMS to a phone registered to you, and the
    code gets a bearer token for fifteen minutes. `export HEALTHCODE_TOKEN=...` then makes
    every command act as you. A development stack (`make run`) has no SMS gateway: the code
    comes back in the reply and is used at once."""
    with service_channel(settings.peers.declaration) as channel:
        stub = account_pb2_grpc.AccountServiceStub(channel)
        try:
            sent = stub.RequestSignInCode(
                account_pb2.RequestSignInCodeRequest(id_number=id_number, phone=phone)
            )
        except grpc.RpcError as e:
            fail(e, "asking for a sign-in code")
        if code is None:
            if sent.development_code:
                code = sent.development_code
                err.print(f"development stack: the code sent to {sent.masked_phone} is used")
            else:
                code = typer.prompt(f"the code sent to {sent.masked_phone}")
        try:
            signed = stub.SignIn(account_pb2.SignInRequest(id_number=id_number, code=code))
        except grpc.RpcError as e:
            fail(e, "signing in")
    if token_only:
        out.print(signed.token, markup=False, highlight=False, soft_wrap=True)
        return
    until = signed.expires_at.ToDatetime(dt.UTC).astimezone().strftime("%H:%M")
    out.print(f"signed in as {signed.masked_id_number} until {until}; to act as yourself:")
    out.print(f"export HEALTHCODE_TOKEN={signed.token}", markup=False, soft_wrap=True)


@app.command()
def status() -> None:
    """Health of the four services, the colour replica's index and rule set, feed freshness."""
    table = Table(title="services")
    table.add_column("service")
    table.add_column("address")
    table.add_column("health")
    healthy = True
    for name, addr in settings.peers.items():
        with service_channel(addr) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=min(settings.timeout, 3)
                )
                state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                state = e.code().name if isinstance(e, grpc.Call) else "ERROR"
        healthy &= state == "SERVING"
        style = "green" if state == "SERVING" else "red"
        table.add_row(name, addr, f"[{style}]{state}[/]")
    out.print(table)
    with service_channel(settings.peers.colour) as channel:
        try:
            s = colour_pb2_grpc.ColourServiceStub(channel).GetStatus(colour_pb2.GetStatusRequest())
            out.print(
                f"colour: rule set {s.rule_set_version} ({len(s.rule_ids)} rules), index version "
                f"{s.index_version}, {s.person_count} persons: {s.counts.green} green, "
                f"{s.counts.yellow} yellow, {s.counts.red} red "
                f"({f'as of {s.hour} CST' if s.hour else f'day {s.day}'})"
            )
        except grpc.RpcError as e:
            out.print(f"colour: {describe_error(e)}", markup=False)
    with service_channel(settings.peers.risk_index) as channel:
        try:
            stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
            v = stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
            out.print(
                f"risk index: version {v.version}, {v.person_count} persons, "
                f"{v.phone_count} phones, {v.card_count} cards"
            )
            sources = stub.ListSources(risk_index_pb2.ListSourcesRequest()).sources
            fed = [s for s in sources if s.batch_count]
            stale = [s.name for s in sources if s.stale]
            out.print(
                f"  {len(fed)}/{len(sources)} sources have feeds; stale: "
                f"{', '.join(stale) or 'none'}"
            )
        except grpc.RpcError as e:
            out.print(f"risk index: {describe_error(e)}", markup=False)
    if not healthy:
        raise typer.Exit(1)


@app.command("set-rules")
def set_rules(
    file: Annotated[Path, typer.Argument(help="The rule-set file (TOML).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show the impact; do not activate.")
    ] = False,
    principal: Annotated[str, typer.Option(help="The operator's id.")] = "cli-admin",
) -> None:
    """Load a rule set (TOML) into the colour service (R5).

    An invalid one is refused with every problem, and the active one stays. --dry-run shows
    how many people each colour would get, without activating."""
    request = colour_pb2.SetRuleSetRequest(
        actor=staff(common_pb2.ACTOR_ROLE_ADMIN, principal),
        text=file.read_text(encoding="utf-8"),
        filename=file.name,
        dry_run=dry_run,
    )
    r = unary(
        settings.peers.colour,
        lambda ch: colour_pb2_grpc.ColourServiceStub(ch).SetRuleSet(request),
        "set-rules",
    )
    state = (
        "activated" if r.activated else ("dry run" if dry_run else "accepted, waits for valid_from")
    )
    out.print(f"rule set {r.version}: {r.rule_count} rules, {r.check_count} checks — {state}")
    p, n = r.previous_counts, r.counts
    out.print(
        f"  green {p.green} -> {n.green}, yellow {p.yellow} -> {n.yellow}, red {p.red} -> {n.red}"
    )


# --- load ------------------------------------------------------------------------------------


def _load_progress(total: int | None) -> Progress:
    columns: list[str | ProgressColumn] = [TextColumn("[bold]{task.description}")]
    if total:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [
        TextColumn("{task.completed:,.0f} calls, {task.fields[errors]:,} errors"),
        TimeElapsedColumn(),
    ]
    return Progress(*columns, console=err, transient=True)


@app.command("load")
def load_test(
    target: Annotated[
        load.Target,
        typer.Option(
            help="What to drive: the display service, the colour service, or the bare echo "
            "server (bench/echo_server.py, HEALTHCODE_ECHO_ADDR, else 127.0.0.1:50059)."
        ),
    ] = load.Target.display,
    call: Annotated[
        load.Call | None,
        typer.Option(
            help="The RPC: show or scan (display, echo), evaluate-stream (colour). Default: "
            "show, or evaluate-stream for colour.",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="host:port instead of the target's usual one.", show_default=False),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Calls a second, all processes together: an open loop, latency measured from "
            "each call's scheduled send time. Without it: flat out (closed loop, --concurrency).",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Flat out: calls in flight, all processes together.")
    ] = 64,
    duration: Annotated[
        float, typer.Option(min=0.1, help="Seconds to send (flat profile).")
    ] = 10.0,
    calls: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many calls.", show_default=False),
    ] = None,
    channels: Annotated[
        int, typer.Option(min=1, help="gRPC channels (TCP connections) per process.")
    ] = 8,
    procs: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="Generator processes, so that the generator is not the ceiling."
        ),
    ] = 1,
    profile: Annotated[
        load.Profile,
        typer.Option(
            help="flat: --rate throughout. midnight: --rate for --base-s, a ramp to "
            "--peak-factor times it over --ramp-s, held --hold-s, a ramp back, --base-s again."
        ),
    ] = load.Profile.flat,
    base_s: Annotated[float, typer.Option(min=0.0, help="Midnight: seconds at the base.")] = 60.0,
    ramp_s: Annotated[float, typer.Option(min=0.1, help="Midnight: seconds of each ramp.")] = 60.0,
    hold_s: Annotated[float, typer.Option(min=0.0, help="Midnight: seconds at the peak.")] = 60.0,
    peak_factor: Annotated[
        float, typer.Option(min=1.0, help="Midnight: the peak as a multiple of the base.")
    ] = 10.0,
    people_file: Annotated[
        Path | None,
        typer.Option(
            help="A people file (as `healthcode seed` writes) to choose people from.",
            show_default=False,
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="How many people to show (default 10,000, at most the city's size).",
            show_default=False,
        ),
    ] = None,
    city: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Without --people-file: choose from the first CITY people of the synthetic "
            "city `healthcode seed --people CITY --seed SEED` loaded (default: --sample).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="The synthetic city's seed; also the draw's.")] = 1,
    batch: Annotated[
        int,
        typer.Option(
            min=1,
            max=load.MAX_STREAM_BATCH,
            help="EvaluateStream: persons per message, packed (answered with one colour byte "
            "each); 1 sends the per-person form (a Verdict each).",
        ),
    ] = 10_000,
    messages: Annotated[
        int,
        typer.Option(min=1, help="EvaluateStream: messages per stream (of --batch persons)."),
    ] = 1,
    tokens: Annotated[
        int,
        typer.Option(
            min=1,
            help="Scan: at most this many tokens, issued by Show before the measured part "
            "(each scanned once, within its life of a minute).",
        ),
    ] = 10_000,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write the JSON summary here.", show_default=False),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write a PNG of latency percentiles and throughput per second here.",
            show_default=False,
        ),
    ] = None,
    write_h2load_body: Annotated[
        Path | None,
        typer.Option(
            help="Only write an h2load request body (gRPC length-prefixed) for --call here, "
            "print the h2load command, and exit.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Drive Show, Scan or EvaluateStream and report throughput, latency and errors.

    At a fixed --rate (open loop: a stall cannot hide, latency counts from the scheduled send)
    or flat out (closed loop), for --duration seconds or --calls calls, over --channels
    channels in each of --procs processes. Prints p50/p90/p99/max latency and errors by
    status; --json writes the summary, --plot a PNG over time. RESOURCE_EXHAUSTED is counted
    as shed load; any other error makes the exit status 1."""
    chosen_call = call or load.CALLS[target][0]
    peers = settings.peers
    where = address or load.default_address(target, peers.display, peers.colour)
    draw = sample or (min(10_000, city) if city else 10_000)
    try:
        if people_file is not None:
            people = load.people_from_file(people_file, draw, seed)
        else:
            people = load.people_from_city(draw, city or draw, seed)
        if write_h2load_body is not None:
            write_h2load_body.write_bytes(load.h2load_body(chosen_call, people, batch, messages))
            out.print(f"wrote {write_h2load_body} ({write_h2load_body.stat().st_size} bytes); run")
            out.print(
                load.h2load_command(where, chosen_call, write_h2load_body),
                markup=False,
                soft_wrap=True,
            )
            return
        plan = load.LoadPlan(
            target=target,
            address=where,
            call=chosen_call,
            people=tuple(people),
            rate=rate,
            concurrency=concurrency,
            duration_s=duration,
            calls=calls,
            channels=channels,
            procs=procs,
            profile=profile,
            midnight=load.Midnight(base_s, ramp_s, hold_s, peak_factor),
            timeout_s=settings.timeout,
            batch=batch,
            messages=messages,
            tokens=tokens,
            seed=seed,
            auth=_load_auth(target, where, people),
        )
        plan.check()
        total = load.expected_calls(plan)
        done: dict[int, tuple[int, int]] = {}
        with _load_progress(total) as progress:
            task = progress.add_task(
                f"{load.RPC_NAME[chosen_call]} on {target} ({where})", total=total, errors=0
            )

            def report(process: int, calls_done: int, errors: int, _items: int) -> None:
                done[process] = (calls_done, errors)
                progress.update(
                    task,
                    completed=sum(c for c, _ in done.values()),
                    errors=sum(e for _, e in done.values()),
                )

            summary = load.run_load(plan, report)
    except load.LoadError as e:
        err.print(f"[bold red]load failed:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    out.print(load_report.summary_table(summary))
    if len(summary.phases) > 1:
        out.print(load_report.phases_table(summary))
    if summary.first_error:
        out.print(f"first error: {summary.first_error}", markup=False, highlight=False)
    for code, example in summary.error_examples.items():
        if not summary.first_error.startswith(f"{code}: "):
            out.print(f"first {code}: {example}", markup=False, highlight=False)
    if summary.ran_out_of_tokens:
        out.print("Scan ran out of tokens before the end (raise --tokens, or shorten the run)")
    if json_path is not None:
        json_path.write_text(
            json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        out.print(f"summary: {json_path}")
    if plot is not None:
        load_report.write_plot(summary, plot)
        out.print(f"plot: {plot}")
    if summary.failed:
        raise typer.Exit(1)


# --- staff accounts (issue 10) -------------------------------------------------------------------

staff_app = typer.Typer(
    name="staff",
    help="Staff accounts: grid workers, verifiers (with their workplace), the support desk and "
    "administrators sign in with a password for a shift's token. [bold]add[/] creates an "
    "account (or sets a new password), [bold]disable[/] ends one, [bold]sign-in[/] gets a "
    "token. Adding and disabling need an administrator.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(staff_app)

_STAFF_ROLE_NAMES = {
    "grid-worker": account_pb2.STAFF_ROLE_GRID_WORKER,
    "verifier": account_pb2.STAFF_ROLE_VERIFIER,
    "support": account_pb2.STAFF_ROLE_SUPPORT,
    "admin": account_pb2.STAFF_ROLE_ADMIN,
}


def _password(prompt: str, password_stdin: bool, confirm: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


@staff_app.command("add")
def staff_add(
    principal: Annotated[str, typer.Argument(help="The account id, e.g. bus-17, desk-2.")],
    role: Annotated[str, typer.Option(help="grid-worker, verifier, support or admin.")],
    context: Annotated[
        str, typer.Option(help="A verifier's workplace: bus, exam, hospital, venue, staff_desk.")
    ] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    admin: Annotated[str, typer.Option(help="The administrator's account id.")] = "operator",
) -> None:
    """Create a staff account, or give an existing one a new password and role. The password
    (at least 12 characters) is asked for twice and stored only as a salted scrypt hash."""
    if role not in _STAFF_ROLE_NAMES:
        raise typer.BadParameter(", ".join(_STAFF_ROLE_NAMES), param_hint="--role")
    password = _password("password", password_stdin, confirm=True)
    request = account_pb2.CreateStaffAccountRequest(
        actor=staff(common_pb2.ACTOR_ROLE_ADMIN, admin),
        principal=principal,
        role=_STAFF_ROLE_NAMES[role],
        context=context,
        password=password,
    )
    done = unary(
        settings.peers.declaration,
        lambda ch: account_pb2_grpc.AccountServiceStub(ch).CreateStaffAccount(request),
        "staff add",
    )
    out.print(f"staff account {principal} {'created' if done.created else 'updated'} ({role})")


@staff_app.command("disable")
def staff_disable(
    principal: Annotated[str, typer.Argument(help="The account id.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the account).")] = "",
    admin: Annotated[str, typer.Option(help="The administrator's account id.")] = "operator",
) -> None:
    """Disable a staff account: it signs in no more (its tokens run out within a shift)."""
    request = account_pb2.DisableStaffAccountRequest(
        actor=staff(common_pb2.ACTOR_ROLE_ADMIN, admin), principal=principal, reason=reason
    )
    done = unary(
        settings.peers.declaration,
        lambda ch: account_pb2_grpc.AccountServiceStub(ch).DisableStaffAccount(request),
        "staff disable",
    )
    out.print(f"staff account {principal} {'disabled' if done.disabled else 'was disabled'}")


@staff_app.command("sign-in")
def staff_sign_in(
    principal: Annotated[str, typer.Argument(help="Your account id.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    token_only: Annotated[
        bool, typer.Option("--token-only", help="Print only the token (for HEALTHCODE_TOKEN).")
    ] = False,
) -> None:
    """Sign in as staff: a token for your account's role for a shift (eight hours)."""
    password = _password("password", password_stdin, confirm=False)
    with service_channel(settings.peers.declaration) as channel:
        try:
            signed = account_pb2_grpc.AccountServiceStub(channel).SignInStaff(
                account_pb2.SignInStaffRequest(principal=principal, password=password)
            )
        except grpc.RpcError as e:
            fail(e, "signing in")
    if token_only:
        out.print(signed.token, markup=False, highlight=False, soft_wrap=True)
        return
    role = account_pb2.StaffRole.Name(signed.role).removeprefix("STAFF_ROLE_").lower()
    where = f" at {signed.context}" if signed.context else ""
    until = signed.expires_at.ToDatetime(dt.UTC).astimezone().strftime("%H:%M")
    out.print(f"signed in as {principal} ({role}{where}) until {until}; to act as this account:")
    out.print(f"export HEALTHCODE_TOKEN={signed.token}", markup=False, soft_wrap=True)


# --- mandate: who may act for whom (R3) --------------------------------------------------------

mandate_app = typer.Typer(
    name="mandate",
    help="Mandates (代办授权): a family proxy or grid worker acts only for the people a mandate "
    "links them to. Registering someone records one for the proxy who did it; [bold]grant[/] "
    "adds one (optionally until a date), [bold]revoke[/] ends one at once, [bold]list[/] shows "
    "who may act for a person, or whom a proxy acts for. Everything printed is masked.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(mandate_app)


class GrantBy(enum.StrEnum):
    """Who grants a mandate."""

    citizen = "citizen"
    admin = "admin"


class MandateBy(enum.StrEnum):
    """Who calls a mandate command."""

    citizen = "citizen"
    family_proxy = "family-proxy"
    grid_worker = "grid-worker"
    admin = "admin"


_MANDATE_BASIS = {
    declaration_pb2.MANDATE_BASIS_REGISTRATION: "registered them",
    declaration_pb2.MANDATE_BASIS_IMPORT: "bulk import",
    declaration_pb2.MANDATE_BASIS_GRANT: "granted",
}
_MANDATE_STATE = {
    declaration_pb2.MANDATE_STATE_ACTIVE: "[bold green]active[/]",
    declaration_pb2.MANDATE_STATE_EXPIRED: "[yellow]expired[/]",
    declaration_pb2.MANDATE_STATE_REVOKED: "[red]revoked[/]",
}


def _mandate_caller(
    by: MandateBy, id_number: str | None, proxy_id: str | None, principal: str
) -> common_pb2.Actor:
    """The actor of a mandate command: a citizen (themself, by `id_number`), a family proxy
    (by `proxy_id`), a grid worker or an administrator (by `principal`)."""
    if by == MandateBy.citizen and not id_number:
        raise typer.BadParameter("a citizen names themself", param_hint="--id-number")
    return acting(by, id_number or "", proxy_id, principal)


def _mandate_proxy(
    family_member: str | None, grid_worker: str | None
) -> declaration_pb2.MandateProxy:
    if (family_member is None) == (grid_worker is None):
        raise typer.BadParameter("give --family-member ID_NUMBER or --grid-worker ACCOUNT")
    if family_member is not None:
        return declaration_pb2.MandateProxy(
            role=common_pb2.ACTOR_ROLE_FAMILY_PROXY,
            person=common_pb2.PersonRef(id_number=family_member),
        )
    return declaration_pb2.MandateProxy(
        role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal=grid_worker or ""
    )


def _until(text: str | None, days: int | None) -> dt.datetime | None:
    """--until (a day: through its end; or a time; Asia/Shanghai unless given) or --days."""
    if text is not None and days is not None:
        raise typer.BadParameter("give --until or --days, not both")
    if days is not None:
        return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    if text is None:
        return None
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), CST)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: write YYYY-MM-DD (through that day) or YYYY-MM-DDTHH:MM",
            param_hint="--until",
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=CST)


def _print_mandate(m: declaration_pb2.Mandate) -> None:
    """One mandate, a few short lines (masked only)."""
    state = _MANDATE_STATE.get(m.state, "?")
    out.print(f"[bold]mandate {m.mandate_id}[/]  {state}")
    out.print(f"  for       {m.masked_name} {m.masked_id_number}", markup=False, highlight=False)
    proxy = recorded(m.proxy)
    if m.proxy_person_key and not m.proxy.masked_id_number:
        proxy += f" key:{m.proxy_person_key.hex()[:8]}"
    out.print(f"  proxy     {proxy}", markup=False, highlight=False)
    until = f"until {cst(m.valid_until)} CST" if m.HasField("valid_until") else "open-ended"
    out.print(f"  since     {cst(m.granted_at)} CST, {until}", markup=False, highlight=False)
    approved = f"{recorded(m.approved_by)} ({_MANDATE_BASIS.get(m.basis, '?')})"
    if m.reason:
        approved += f": {m.reason}"
    out.print(f"  approved  {approved}", markup=False, highlight=False)
    if m.HasField("revoked_at"):
        revoked = f"{cst(m.revoked_at)} CST by {recorded(m.revoked_by)}"
        if m.revoke_reason:
            revoked += f": {m.revoke_reason}"
        out.print(f"  revoked   {revoked}", markup=False, highlight=False)


_MandateByOption = Annotated[
    MandateBy,
    typer.Option(
        "--by",
        help="Who calls: citizen (the person themself), family-proxy (give --proxy-id), "
        "grid-worker or admin (give --principal).",
    ),
]


@mandate_app.command("grant")
def mandate_grant(
    id_number: Annotated[
        str, typer.Argument(help="The resident ID number of the person who is acted for.")
    ],
    family_member: Annotated[
        str | None,
        typer.Option(
            help="The family member who may act for them: their own ID number.",
            show_default=False,
        ),
    ] = None,
    grid_worker: Annotated[
        str | None,
        typer.Option(
            help="The grid worker who may act for them: their account id.", show_default=False
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="When it ends: YYYY-MM-DD (through that day) or YYYY-MM-DDTHH:MM, Asia/Shanghai. "
            "Default: until revoked.",
            show_default=False,
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            min=1, help="Ends this many days from now (instead of --until).", show_default=False
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Why (stored and shown; no ID or phone numbers).")
    ] = "",
    by: Annotated[
        GrantBy,
        typer.Option(
            "--by",
            help="Who grants: the person themself (citizen) or an administrator (admin, with "
            "--principal).",
        ),
    ] = GrantBy.citizen,
    principal: _PrincipalOption = "cli",
) -> None:
    """Let a family member or grid worker act for a person (declare, link phones, show the code).

    Granted by the person themself or by an administrator (--by admin --principal ID).
    Granting the same again changes nothing; with another end it replaces the earlier one.

    [dim]healthcode mandate grant PERSON_ID --family-member RELATIVE_ID[/]
    [dim]healthcode mandate grant PERSON_ID --grid-worker grid-hp-007 --days 30[/]"""
    request = declaration_pb2.GrantMandateRequest(
        actor=_mandate_caller(MandateBy(by.value), id_number, None, principal),
        person=common_pb2.PersonRef(id_number=id_number),
        proxy=_mandate_proxy(family_member, grid_worker),
        reason=reason,
    )
    ends = _until(until, days)
    if ends is not None:
        request.valid_until.FromDatetime(ends.astimezone(dt.UTC))
    response = unary(
        settings.peers.declaration,
        lambda ch: declaration_pb2_grpc.DeclarationServiceStub(ch).GrantMandate(request),
        "mandate grant",
    )
    m = response.mandate
    verb = "granted" if response.created else "already in force"
    out.print(
        f"mandate {m.mandate_id} {verb}: {recorded(m.proxy)} may act for "
        f"{m.masked_name} ({m.masked_id_number})"
    )


@mandate_app.command("revoke")
def mandate_revoke(
    mandate_id: Annotated[int, typer.Argument(min=1, help="The mandate's id (`mandate list`).")],
    reason: Annotated[
        str, typer.Option(help="Why (stored and shown; no ID or phone numbers).")
    ] = "",
    by: _MandateByOption = MandateBy.citizen,
    id_number: Annotated[
        str | None,
        typer.Option(help="With --by citizen: your own ID number.", show_default=False),
    ] = None,
    proxy_id: ProxyOption = None,
    principal: _PrincipalOption = "cli",
) -> None:
    """End a mandate now: by the person it is for, the proxy themself, or an administrator.

    The proxy's next act for the person is refused (PERMISSION_DENIED).

    [dim]healthcode mandate revoke 7 --id-number PERSON_ID --reason 'moved in with me'[/]
    [dim]healthcode mandate revoke 7 --by grid-worker --principal grid-hp-007[/]"""
    request = declaration_pb2.RevokeMandateRequest(
        actor=_mandate_caller(by, id_number, proxy_id, principal),
        mandate_id=mandate_id,
        reason=reason,
    )
    response = unary(
        settings.peers.declaration,
        lambda ch: declaration_pb2_grpc.DeclarationServiceStub(ch).RevokeMandate(request),
        "mandate revoke",
    )
    m = response.mandate
    verb = "revoked" if response.revoked else "was already revoked"
    out.print(
        f"mandate {m.mandate_id} {verb}: {recorded(m.proxy)} may no longer act for "
        f"{m.masked_name} ({m.masked_id_number})"
    )


@mandate_app.command("list")
def mandate_list(
    id_number: Annotated[
        str | None,
        typer.Argument(
            help="The person acted for (with --by citizen: yourself; for a proxy or an "
            "administrator: only mandates for this person).",
            show_default=False,
        ),
    ] = None,
    include_inactive: Annotated[
        bool, typer.Option("--all", help="Also revoked and expired mandates (the history).")
    ] = False,
    by: _MandateByOption = MandateBy.citizen,
    proxy_id: ProxyOption = None,
    principal: _PrincipalOption = "cli",
) -> None:
    """Who may act for a person (as the person), or whom a proxy acts for (as the proxy).

    Active mandates by default; --all adds revoked and expired ones, with who ended them.

    [dim]healthcode mandate list PERSON_ID[/]
    [dim]healthcode mandate list --by family-proxy --proxy-id RELATIVE_ID[/]
    [dim]healthcode mandate list --by grid-worker --principal grid-hp-007 --all[/]"""
    request = declaration_pb2.ListMandatesRequest(
        actor=_mandate_caller(by, id_number, proxy_id, principal),
        include_inactive=include_inactive,
    )
    if id_number is not None:
        request.person.id_number = id_number
    found: list[declaration_pb2.Mandate] = []
    with service_channel(settings.peers.declaration) as channel:
        stub = declaration_pb2_grpc.DeclarationServiceStub(channel)
        while True:
            try:
                page = stub.ListMandates(request)
            except grpc.RpcError as e:
                fail(e, "mandate list")
            found.extend(page.mandates)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
    kind = "mandate" if include_inactive else "active mandate"
    if not found:
        out.print(f"no {kind}s")
        return
    out.print(f"{len(found)} {kind}{'s' if len(found) > 1 else ''}")
    for m in found:
        _print_mandate(m)


# --- override: the support desk's manual colours ---------------------------------------------

override_app = typer.Typer(
    name="override",
    help="Manual colour overrides (the support desk's correction after an appeal): "
    "[bold]set[/] gives a person a colour until a time (at most 14 days ahead) whatever the "
    "rules compute, on every display and colour replica from the next index version; "
    "[bold]clear[/] ends one early; [bold]list[/] reads the append-only, hash-chained override "
    "log and says whether the chain verifies. Each needs a reason, which the person sees with "
    "their colour. Acts as the support desk (--principal: your account). Everything printed "
    "is masked.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(override_app)


class OverrideColour(enum.StrEnum):
    """The colour an override gives."""

    green = "green"
    yellow = "yellow"
    red = "red"


_OVERRIDE_COLOUR = {
    OverrideColour.green: common_pb2.COLOUR_GREEN,
    OverrideColour.yellow: common_pb2.COLOUR_YELLOW,
    OverrideColour.red: common_pb2.COLOUR_RED,
}
_SupportPrincipalOption = Annotated[
    str, typer.Option(help="Your support desk account (recorded in the override log).")
]
_ReasonOption = Annotated[
    str,
    typer.Option(
        help="Why (5-500 characters, one line; shown to the person with their colour; never an "
        "ID or phone number).",
        show_default=False,
    ),
]


def _support(principal: str) -> common_pb2.Actor:
    return staff(common_pb2.ACTOR_ROLE_SUPPORT, principal)


def _override_until(until: str | None, hours: int | None, days: int | None) -> dt.datetime:
    given = sum(x is not None for x in (until, hours, days))
    if given != 1:
        raise typer.BadParameter("give exactly one of --until, --hours and --days")
    if hours is not None:
        return dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    ends = _until(until, days)
    assert ends is not None
    return ends


def _print_override_entry(e: risk_index_pb2.OverrideEntry) -> None:
    person = " ".join(p for p in (e.masked_id_number, f"key:{e.person_key.hex()[:8]}") if p)
    if e.action == risk_index_pb2.OVERRIDE_ACTION_SET:
        what = f"{colour_badge(e.colour)} until {cst(e.valid_until)} CST"
    else:
        what = "[bold]cleared[/]"
    by = f"{ROLE_NAME.get(e.actor_role, '?')} {e.actor_principal}"
    out.print(f"[bold]#{e.seq}[/] {cst(e.at)} CST  {person}  {what}", highlight=False)
    out.print(f"    by {by} · index version {e.index_version}", markup=False, highlight=False)
    out.print(f"    reason: {e.reason}", markup=False, highlight=False)


@override_app.command("set")
def override_set(
    id_number: Annotated[str, typer.Argument(help="The person's resident ID number.")],
    colour: Annotated[
        OverrideColour, typer.Option("--colour", "--color", help="The colour to show.")
    ],
    reason: _ReasonOption,
    until: Annotated[
        str | None,
        typer.Option(
            help="When it ends: YYYY-MM-DD (through that day) or YYYY-MM-DDTHH:MM, Asia/Shanghai "
            "unless an offset is given.",
            show_default=False,
        ),
    ] = None,
    hours: Annotated[
        int | None,
        typer.Option(
            min=1, help="Ends this many hours from now (instead of --until).", show_default=False
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=14,
            help="Ends this many days from now (instead of --until).",
            show_default=False,
        ),
    ] = None,
    principal: _SupportPrincipalOption = "support-desk",
) -> None:
    """Give a person a colour until a time, whatever the rules compute (at most 14 days).

    Every display and colour replica shows it from the index version printed; Explain shows it
    first and the rules' colour underneath. A new override replaces the person's previous one.

    [dim]healthcode override set PERSON_ID --colour green --hours 24 --reason 'appeal 2024-117: negative test at the hospital'[/]"""
    ends = _override_until(until, hours, days)
    request = risk_index_pb2.OverrideColourRequest(
        actor=_support(principal),
        person=common_pb2.PersonRef(id_number=id_number),
        colour=_OVERRIDE_COLOUR[colour],
        reason=reason,
    )
    request.valid_until.FromDatetime(ends.astimezone(dt.UTC))
    response = unary(
        settings.peers.risk_index,
        lambda ch: risk_index_pb2_grpc.RiskIndexServiceStub(ch).OverrideColour(request),
        "override set",
    )
    entry = response.entry
    out.print(
        f"override #{entry.seq}: {entry.masked_id_number} is {colour_badge(entry.colour)} "
        f"until {cst(entry.valid_until)} CST, from index version {response.index_version}",
        highlight=False,
    )


@override_app.command("clear")
def override_clear(
    id_number: Annotated[str, typer.Argument(help="The person's resident ID number.")],
    reason: _ReasonOption,
    principal: _SupportPrincipalOption = "support-desk",
) -> None:
    """End a person's override now: the rules' colour shows again from the version printed.

    [dim]healthcode override clear PERSON_ID --reason 'appeal 2024-117 withdrawn'[/]"""
    request = risk_index_pb2.ClearOverrideRequest(
        actor=_support(principal),
        person=common_pb2.PersonRef(id_number=id_number),
        reason=reason,
    )
    response = unary(
        settings.peers.risk_index,
        lambda ch: risk_index_pb2_grpc.RiskIndexServiceStub(ch).ClearOverride(request),
        "override clear",
    )
    entry = response.entry
    out.print(
        f"override cleared (#{entry.seq}): {entry.masked_id_number} has the rules' colour again "
        f"from index version {response.index_version}",
        highlight=False,
    )


@override_app.command("list")
def override_list(
    id_number: Annotated[
        str | None,
        typer.Argument(
            help="Only this person's entries (default: everyone's).", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="At most this many entries, newest first.")
    ] = 20,
    principal: _SupportPrincipalOption = "support-desk",
) -> None:
    """The override log, newest first (who set or cleared what, until when, why), and whether
    its hash chain verifies.

    The chain links every entry to the one before by SHA-256: a changed, removed or reordered
    entry is named. Note the head hash printed: kept elsewhere, it also shows a log cut short.

    [dim]healthcode override list[/]
    [dim]healthcode override list PERSON_ID --limit 5[/]"""
    request = risk_index_pb2.ListOverridesRequest(
        actor=_support(principal), page_size=min(limit, 500)
    )
    if id_number is not None:
        request.person.id_number = id_number
    entries: list[risk_index_pb2.OverrideEntry] = []
    with service_channel(settings.peers.risk_index) as channel:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        while True:
            try:
                page = stub.ListOverrides(request)
            except grpc.RpcError as e:
                fail(e, "override list")
            entries.extend(page.entries)
            if not page.next_page_token or len(entries) >= limit:
                break
            request.page_token = page.next_page_token
    if not entries:
        out.print("no overrides" + (" for this person" if id_number else ""))
    for entry in entries[:limit]:
        _print_override_entry(entry)
    if page.verified:
        out.print(
            f"[green]chain verified[/]: {page.entry_count} entries, head {page.head_hash}",
            highlight=False,
        )
    else:
        out.print(
            f"[bold red]CHAIN BROKEN at entry {page.broken_seq}[/]: {page.problem} "
            f"({page.entry_count} entries)",
            highlight=False,
        )
        raise typer.Exit(3)


# --- keys: the display's token signing keys --------------------------------------------------

keys_app = typer.Typer(
    name="keys",
    help="The display's code-token signing keys (a key ring in a directory, shared by every "
    "display worker): [bold]list[/] shows each key's id, public key and status; [bold]rotate[/] "
    "makes a new key the signer and retires the old one, which still verifies the codes it "
    "signed until they expire. Works on the directory itself (no service call); running "
    "displays pick a rotation up without a restart. Never prints private keys.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(keys_app)
app.add_typer(card_app)  # printed cards (R3): clients/cli_cards.py

_DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The display's data directory (default HEALTHCODE_DATA_DIR, else ./data); the "
        "ring is its display/token-keys.",
        show_default=False,
    ),
]
_KeysDirOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-dir",
        help="The key ring directory itself (default HEALTHCODE_TOKEN_KEYS_DIR, else "
        "<data dir>/display/token-keys).",
        show_default=False,
    ),
]


def _key_ring_paths(data_dir: Path | None, keys_dir: Path | None) -> tuple[Path, Path]:
    """(the ring, the signing.key of earlier versions an empty ring imports)."""
    import os

    from services.display.config import legacy_signing_key, token_keys_dir

    data = (
        data_dir if data_dir is not None else Path(os.environ.get("HEALTHCODE_DATA_DIR", "./data"))
    )
    if keys_dir is not None:
        ring = keys_dir
    elif data_dir is not None:
        ring = token_keys_dir({}, data)  # an explicit --data-dir wins over the environment
    else:
        ring = token_keys_dir(os.environ, data)
    return ring, legacy_signing_key(data)


def _ms_text(ms: int | None) -> str | None:
    from services.display.keyring import format_ms

    return None if ms is None else format_ms(ms)


@keys_app.command("list")
def keys_list(
    data_dir: _DataDirOption = None,
    keys_dir: _KeysDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every key in the ring: id, status (signing, retired and still verifying, expired), when
    it was created and retired, until when it verifies, its public key in hex."""
    from services.display.keyring import KeyRingError, now_ms, read_keys, signer_of

    ring, legacy = _key_ring_paths(data_dir, keys_dir)
    try:
        keys = read_keys(ring)
    except KeyRingError as e:
        err.print(f"[bold red]cannot read the key ring:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    at = now_ms()
    signer = signer_of(keys)
    rows = [
        {
            "key_id": k.key_id_hex,
            "status": k.status(signer, at),
            "created_at": _ms_text(k.created_at_ms),
            "retired_at": _ms_text(k.retired_at_ms),
            "verifies_until": _ms_text(k.not_after_ms),
            "public_key": k.public_key.hex(),
            "legacy": k.legacy,
        }
        for k in keys
    ]
    if as_json:
        out.print_json(json.dumps({"directory": str(ring), "keys": rows}))
        return
    if not keys:
        note = (
            f"; {legacy} (an earlier version's key) is imported at the next start"
            if legacy.exists()
            else ""
        )
        out.print(
            f"no token keys in {ring} (a display creates the first at start{note})", highlight=False
        )
        return
    table = Table(title=f"token keys in {ring}", title_justify="left")
    for column in ("key id", "status", "created", "retired", "verifies until", "public key"):
        table.add_column(column, no_wrap=column != "public key")
    for row in rows:
        status = str(row["status"]) + (" (legacy)" if row["legacy"] else "")
        table.add_row(
            str(row["key_id"]),
            status,
            str(row["created_at"]),
            str(row["retired_at"] or "-"),
            str(row["verifies_until"] or "-"),
            str(row["public_key"]),
        )
    out.print(table)


@keys_app.command("rotate")
def keys_rotate(data_dir: _DataDirOption = None, keys_dir: _KeysDirOption = None) -> None:
    """A new key signs from now on; the current one is retired: it signs no more but verifies
    the codes it signed until they expire (75 s: a minute of token life, the 10 s a running
    display may take to notice, 5 s of clock skew), then it is dropped; keys past that are
    deleted. Displays reading the ring pick the new key up without a restart."""
    from services.display.keyring import KeyRingError, rotate

    ring, legacy = _key_ring_paths(data_dir, keys_dir)
    try:
        done = rotate(ring, legacy_key=legacy)
    except KeyRingError as e:
        err.print(f"[bold red]rotation failed:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    out.print(
        f"{done.signer.key_id_hex} signs from now (public key {done.signer.public_key.hex()})",
        highlight=False,
        soft_wrap=True,
    )
    for key in done.retired:
        out.print(
            f"{key.key_id_hex} retired: verifies until {_ms_text(key.not_after_ms)}",
            highlight=False,
        )
    for key in done.removed:
        out.print(
            f"{key.key_id_hex} removed (it verified until {_ms_text(key.not_after_ms)})",
            highlight=False,
        )


# Exams, cold chain and other provinces (issue 11, items 7, 9, 10).
app.add_typer(exam_app)
app.add_typer(cold_chain_app)
app.add_typer(province_app)
# Bus scanners and hospital triage (issue 11, items 6 and 8): top-level bus-scan and triage.
app.add_typer(partners_app)
# Consent for partner look-ups (issue 11, item 11): healthcode consent list|revoke|restore.
app.add_typer(consent_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
