"""The backlog benchmark still runs (a toy size, well under the server's capacity): every call
offered is answered, none dropped or refused, and the row is whole. Its overload figures are
read by a person in BENCHMARKS.md, not here."""

from __future__ import annotations

import subprocess
import sys

import pytest


# Plain, with a wait off the GIL and CPU slots (the gated handler), and on grpc.aio.
@pytest.mark.parametrize(
    "extra", [[], ["--wait-ms", "1", "--cpu-slots", "2"], ["--aio", "--wait-ms", "1"]]
)
def test_bench_backlog_runs_and_answers_a_light_load(extra: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_backlog", "--threads", "4", "--seconds", "2"]
        + ["--rate", "100", "--work-us", "100", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 4 / 32 |")]
    assert len(rows) == 1, done.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[3:] == ["0", "0"], rows  # no CANCELLED, no RESOURCE_EXHAUSTED
    assert cells[1].endswith("/s") and int(cells[1][:-2].replace(",", "")) > 0
