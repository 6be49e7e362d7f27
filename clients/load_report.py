"""What `healthcode load` prints and draws from a load summary: a rich table (and one by phase
for the midnight profile) and a PNG of latency percentiles and throughput per second."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from clients.load import Call, Profile, Summary


def summary_table(s: Summary) -> Table:
    """The figures of a run."""
    title = f"{s.rpc} on {s.target} ({s.address}): {s.mode}, profile {s.profile}"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    shape = f"{s.rate_per_s:,.0f}/s" if s.rate_per_s is not None else f"concurrency {s.concurrency}"
    table.add_row("load", f"{shape}, {s.channels} channels x {s.procs} processes")
    table.add_row("calls (answered / failed)", f"{s.ok:,} / {s.error_count:,}")
    table.add_row("elapsed", f"{s.elapsed_s:,.1f} s")
    table.add_row("throughput", f"{s.throughput_per_s:,.0f} calls/s")
    if s.call == Call.evaluate_stream:
        table.add_row("persons evaluated", f"{s.items:,} ({s.items_per_s:,.0f}/s)")
    lat = s.latency_ms
    table.add_row(f"latency from {s.latency_from}", "")
    for key in ("p50", "p90", "p99", "max"):
        table.add_row(f"  {key}", f"{lat[key]:,.2f} ms")
    if s.errors:
        for code, n in s.errors.items():
            note = " (shed)" if code == "RESOURCE_EXHAUSTED" else ""
            table.add_row(f"  error {code}{note}", f"{n:,}")
    else:
        table.add_row("errors", "0")
    if s.rate_per_s is not None:
        table.add_row("max send lag (generator)", f"{s.max_send_lag_ms:,.1f} ms")
    if s.call == Call.scan:
        table.add_row("tokens prepared by Show", f"{s.prepared_tokens:,}")
        if s.skipped_tokens:
            table.add_row("tokens too old to scan", f"{s.skipped_tokens:,}")
    return table


def phases_table(s: Summary) -> Table:
    """The figures of each phase (before, ramp up, peak, ramp down, after for midnight)."""
    table = Table(title="by phase", header_style="bold")
    for column in ("phase", "seconds", "calls/s", "p50 ms", "p99 ms", "max ms", "errors"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for p in s.phases:
        table.add_row(
            p["phase"],
            f"{p['start_s']:g}-{p['end_s']:g}",
            f"{p['throughput_per_s']:,.0f}",
            f"{p['p50_ms']:,.2f}",
            f"{p['p99_ms']:,.2f}",
            f"{p['max_ms']:,.2f}",
            ", ".join(f"{n} {c}" for c, n in p["errors_by_status"].items()) or "0",
        )
    return table


def write_plot(s: Summary, path: Path) -> None:
    """A PNG of latency percentiles (top, log scale) and throughput (bottom) per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [w["second"] + 0.5 for w in s.windows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), constrained_layout=True)
    for key, style in (("p50", "-"), ("p90", "--"), ("p99", "-"), ("max", ":")):
        values = [w[f"{key}_ms"] if w["ok"] else math.nan for w in s.windows]
        top.plot(seconds, values, style, label=key)
    top.set_yscale("log")
    top.set_ylabel(f"latency, ms (from {s.latency_from})")
    top.legend(loc="upper left")
    top.grid(True, which="both", alpha=0.3)
    label = "persons/s" if s.call == Call.evaluate_stream else "calls/s"
    key = "items_per_s" if s.call == Call.evaluate_stream else "ok_per_s"
    bottom.plot(seconds, [w[key] for w in s.windows], label=f"answered {label}")
    if s.rate_per_s is not None:
        bottom.plot(seconds, [w["offered_per_s"] for w in s.windows], "--", label="offered calls/s")
    errors = [w["errors"] / w["width_s"] for w in s.windows]
    if any(errors):
        bottom.plot(seconds, errors, color="red", label="errors/s")
    bottom.set_ylabel(label)
    bottom.set_xlabel("seconds since start (by completion)")
    bottom.legend(loc="upper left")
    bottom.grid(True, alpha=0.3)
    if s.profile == Profile.midnight:
        for p in s.phases:
            if p["phase"] in ("ramp up", "peak", "ramp down"):
                for ax in (top, bottom):
                    ax.axvspan(p["start_s"], p["end_s"], color="orange", alpha=0.08)
    fig.suptitle(
        f"{s.rpc} on {s.target}: {s.mode}, {s.profile}; "
        f"{s.throughput_per_s:,.0f}/s, p99 {s.latency_ms['p99']:,.1f} ms, "
        f"{s.error_count} errors"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
