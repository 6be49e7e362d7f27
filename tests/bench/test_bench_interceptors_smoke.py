"""The interceptor benchmark still runs (a toy size); its figures are read by a person, not
here: only that both chains answered and the table is whole."""

from __future__ import annotations

import subprocess
import sys


def test_bench_interceptors_runs_and_prints_both_chains() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_interceptors", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert sum("chain built per call" in row for row in rows) == 2
    assert sum("chain built per method" in row for row in rows) == 2
