"""The display benchmark still runs end to end at a toy size, with no failed call.

Speed is measured by `make bench-display`, never here: this only checks that the script starts
the four services, loads a population, drives Show, Scan and the baseline from client
processes without a single error, prints its table and stops the stack.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_display_runs_without_errors() -> None:
    args = ["--persons", "50", "--seconds", "2", "--clients", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_display", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.startswith("Command: `python -m bench.bench_display --persons 50")
    assert "no errors (exit status 0)" in out
    rows = [line for line in out.splitlines() if line.startswith("| (")]
    labels = {line.split("|")[1].strip().split()[0] for line in rows}
    assert {"(a)", "(b)"} <= labels, out
    assert any("baseline" in line for line in rows)
    assert any("DisplayService.Show" in line for line in rows)
    for line in rows:
        errors = line.rstrip(" |").rsplit("|", 1)[1].strip()
        assert errors == "0", line
