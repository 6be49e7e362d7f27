"""`healthcode exam`: batch verification of an exam's candidate list (R12); the work is in
clients/exams.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from clients import exams
from clients.channel import open_channel
from clients.cli_support import err, fail, out, settings
from services._common.config import ConfigError

exam_app = typer.Typer(
    name="exam",
    help="Exams and large events (R12): [bold]verify[/] checks a candidate list against the "
    "live colours in one batched stream and writes pass / refer per candidate. Called as an "
    "exam-organiser partner (spiffe://healthcode/partner/exam_organiser/NAME).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

SHOWN_REJECTIONS = 20


@exam_app.command("verify")
def verify(
    candidates: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV with a header naming candidate_number, name, id_number (or 准考证号, "
            "姓名, 身份证号); at most 100,000 rows.",
        ),
    ],
    out_file: Annotated[
        Path,
        typer.Option(
            "--out", help="The result CSV: candidate_number, masked_name, decision, note."
        ),
    ],
    rejections_file: Annotated[
        Path | None,
        typer.Option(
            "--rejections",
            help="Where rejected rows go (line, field, reason); default OUT with '.rejected.csv'.",
            show_default=False,
        ),
    ] = None,
    organiser: Annotated[
        str, typer.Option(help="The organiser's partner name (its certificate's last part).")
    ] = "demo",
    identity: Annotated[
        str | None,
        typer.Option(
            help="Certificate file name in the credentials directory; default "
            "partner-exam-organiser-NAME.",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, max=100_000, help="ID numbers a stream message.")
    ] = exams.DEFAULT_BATCH,
) -> None:
    """Verify a candidate list: every row validated (a missing field, a wrong ID check
    character, a candidate number or ID number used twice: reported by line), then each valid
    candidate checked: [bold]pass[/] when green, [bold]refer[/] otherwise (yellow, red, or not
    registered) to the exam's health checkpoint. The result holds masked names only, never an
    ID number or a reason."""
    started = time.perf_counter()
    try:
        valid, rejected = exams.read_candidate_file(candidates)
    except exams.CandidateFileError as e:
        err.print(f"[bold red]{candidates}: refused[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    rejections_path = rejections_file or out_file.with_name(out_file.stem + ".rejected.csv")
    rejections_path.write_text(exams.rejections_csv(rejected), encoding="utf-8")
    if rejected:
        _print_rejections(rejected, rejections_path)

    target = settings.peers.colour
    try:
        creds = exams.partner_credentials(target, "exam_organiser", organiser, identity)
    except ConfigError as e:
        err.print(f"[bold red]cannot connect:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with progress, open_channel(target, credentials=creds) as channel:
        task = progress.add_task("checking candidates", total=len(valid))
        try:
            results = exams.verify(
                channel,
                valid,
                organiser,
                batch=batch,
                on_batch=lambda n: progress.advance(task, n),
            )
        except grpc.RpcError as e:
            progress.stop()
            fail(e, "verification")
    exams.write_results(out_file, results)
    elapsed = time.perf_counter() - started
    passed = sum(r.decision is exams.Decision.PASS for r in results)
    unregistered = sum(r.note == "not registered" for r in results)
    rate = len(results) / elapsed if elapsed > 0 else 0.0
    out.print(
        f"{len(results):,} candidates checked in {elapsed:.2f} s ({rate:,.0f}/s): "
        f"{passed:,} pass, {len(results) - passed:,} refer ({unregistered:,} not registered); "
        f"{len(rejected):,} rows rejected. Results: {out_file}",
        highlight=False,
    )


def _print_rejections(rejected: list[exams.Rejection], path: Path) -> None:
    table = Table(title=f"{len(rejected):,} rejected rows (all in {path})", title_justify="left")
    for column in ("line", "field", "why"):
        table.add_column(column)
    for r in rejected[:SHOWN_REJECTIONS]:
        table.add_row(str(r.line), r.field, r.reason)
    if len(rejected) > SHOWN_REJECTIONS:
        table.add_row("...", "", f"{len(rejected) - SHOWN_REJECTIONS:,} more in the file")
    err.print(table)
