"""The metrics benchmark still runs (a toy size); its figures are read by a person, not here."""

from __future__ import annotations

import subprocess
import sys


def test_bench_metrics_runs_and_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_metrics", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert any("CallMetrics' own cost" in row for row in rows)
    assert any("metrics on" in row for row in rows)
